//! The example policy in Rust (the same as ../js and ../python):
//!
//! - RCPT TO a recipient on the `deny` list (`local@domain`, or `@domain` for a whole
//!   domain; any case) is refused with `550 5.1.1 No such user here`;
//! - at DATA, a Subject matching the `subject_pattern` regular expression (case-insensitive)
//!   gets the tag `tag` (default `subject-match`) and the score entry `SUBJECT_MATCH` of
//!   `score` points (default 5);
//! - every message gets the header `header` (default `X-Policy`): `rust; subject=match` or
//!   `rust; subject=clean`.
use std::collections::HashSet;

use mailgate_plugin_sdk::prelude::*;
use regex::{Regex, RegexBuilder};

struct Policy {
    deny: HashSet<String>,
    subject: Option<Regex>,
    tag: String,
    score: f64,
    header: String,
}

#[plugin]
impl Plugin for Policy {
    fn init(config: &Config) -> Result<Self, String> {
        config.deny_unknown(&["deny", "subject_pattern", "tag", "score", "header"])?;
        let subject = match config.get("subject_pattern") {
            Some(p) => Some(
                RegexBuilder::new(p)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| ConfigError::new("subject_pattern", e.to_string()))?,
            ),
            None => None,
        };
        Ok(Policy {
            deny: config
                .list("deny")?
                .unwrap_or_default()
                .iter()
                .map(|a| a.to_lowercase())
                .collect(),
            subject,
            tag: config.string_or("tag", "subject-match"),
            score: config.parse_or("score", 5.0)?,
            header: config.string_or("header", "X-Policy"),
        })
    }

    fn on_rcpt_to(&mut self, _: &SessionInfo, _: &Transaction, rcpt: &Recipient) -> RcptOutcome {
        let address = rcpt.address.to_string().to_lowercase();
        if self.deny.contains(&address) || self.deny.contains(&format!("@{}", rcpt.address.domain))
        {
            return RcptOutcome::reject(550, "5.1.1", "No such user here")
                .with_reason(format!("{address} is on the deny list"));
        }
        RcptOutcome::continue_()
    }

    fn on_data(&mut self, _: &SessionInfo, _: &Transaction, msg: &Message) -> DataOutcome {
        let subject = msg
            .header_decoded("Subject")
            .into_iter()
            .next()
            .unwrap_or_default();
        match &self.subject {
            Some(re) if re.is_match(&subject) => DataOutcome::continue_()
                .with_tag(self.tag.as_str())
                .with_score("SUBJECT_MATCH", self.score)
                .with_reason(format!("subject matches {}", re.as_str()))
                .add_header(self.header.as_str(), "rust; subject=match"),
            _ => DataOutcome::continue_().add_header(self.header.as_str(), "rust; subject=clean"),
        }
    }
}

export_plugin!(Policy);
