//! Triplet greylisting for mailgate (postgrey-style), state in kv. (Being written.)

use mailgate_plugin_sdk::prelude::*;

struct Stub;

#[plugin]
impl Plugin for Stub {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Stub)
    }
}

export_plugin!(Stub);
