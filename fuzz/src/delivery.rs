//! `crate::delivery` of the gateway, reduced to the `Received:` header builder.

#[path = "../../gateway/src/delivery/received.rs"]
pub mod received;

/// `received::rfc5322_date` (crate-private in the gateway) for the fuzz targets.
pub fn rfc5322_date(now: std::time::SystemTime) -> String {
    received::rfc5322_date(now)
}
