//! Connection, message and recipient rate limits for mailgate over kv counters. (Being written.)

use mailgate_plugin_sdk::prelude::*;

struct Stub;

#[plugin]
impl Plugin for Stub {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Stub)
    }
}

export_plugin!(Stub);
