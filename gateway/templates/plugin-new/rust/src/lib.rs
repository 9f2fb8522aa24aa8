//! {{name}}: refuses the recipients listed in the config's `deny` (`550 5.1.1`) and adds
//! `X-Checked-By: {{name}}` to every message. A starting point: see docs/languages.md and
//! docs/plugin-sdk.md of mailgate for what else a plugin can do.
use mailgate_plugin_sdk::prelude::*;

struct {{Type}} {
    deny: Vec<String>,
}

#[plugin]
impl Plugin for {{Type}} {
    fn init(config: &Config) -> Result<Self, String> {
        config.deny_unknown(&["deny"])?;
        let deny = config.list("deny")?.unwrap_or_default();
        Ok({{Type}} {
            deny: deny.iter().map(|a| a.to_lowercase()).collect(),
        })
    }

    fn on_rcpt_to(&mut self, _: &SessionInfo, _: &Transaction, rcpt: &Recipient) -> RcptOutcome {
        if self.deny.contains(&rcpt.address.to_string().to_lowercase()) {
            return RcptOutcome::reject(550, "5.1.1", "No such user here");
        }
        RcptOutcome::continue_()
    }

    fn on_data(&mut self, _: &SessionInfo, _: &Transaction, _: &Message) -> DataOutcome {
        DataOutcome::continue_().add_header("X-Checked-By", "{{name}}")
    }
}

export_plugin!({{Type}});
