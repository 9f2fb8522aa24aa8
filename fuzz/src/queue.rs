//! `crate::queue` of the gateway, reduced to the delivery status notification builder.

#[path = "../../gateway/src/queue/dsn.rs"]
pub mod dsn;
