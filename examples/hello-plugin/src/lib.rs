//! hello-plugin: rejects RCPT TO a configured local part (config `reject`, default
//! `nobody`) with `550 5.1.1`, and adds `X-Hello: mailgate` to every message.
use mailgate_plugin_sdk::prelude::*;

struct Hello {
    reject: String,
}

#[plugin]
impl Plugin for Hello {
    fn init(config: &Config) -> Result<Self, String> {
        config.deny_unknown(&["reject"])?;
        Ok(Hello {
            reject: config.string_or("reject", "nobody"),
        })
    }

    fn on_rcpt_to(&mut self, _: &SessionInfo, _: &Transaction, rcpt: &Recipient) -> RcptOutcome {
        if rcpt.address.local_part.eq_ignore_ascii_case(&self.reject) {
            return RcptOutcome::reject(550, "5.1.1", "No such user here");
        }
        RcptOutcome::continue_()
    }

    fn on_data(&mut self, _: &SessionInfo, _: &Transaction, _: &Message) -> DataOutcome {
        DataOutcome::continue_().add_header("X-Hello", "mailgate")
    }
}

export_plugin!(Hello);
