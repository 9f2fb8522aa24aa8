//! Builders for replies, verdicts, outcomes, header and recipient edits, and routes.

use std::fmt;

use crate::{
    Address, AddressRewrite, DataOutcome, DataVerdict, DeliverOutcome, EnhancedStatus, Header,
    HeaderEdit, HeaderRef, HeaderReplace, Marks, Outcome, RcptOutcome, RecipientEdit,
    RecipientRoute, RelayHost, Reply, Route, ScoreEntry, TlsPolicy, Verdict,
};

impl EnhancedStatus {
    /// Parses an RFC 3463 enhanced status code `class.subject.detail` (e.g. `5.7.1`).
    /// Returns the subject and detail with the class, or `None` if malformed (each part
    /// must be decimal digits; the class 2, 4 or 5; subject and detail at most 999).
    pub fn parse(code: &str) -> Option<(u16, EnhancedStatus)> {
        let mut parts = code.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let num = |s: &str, max_len: usize| -> Option<u16> {
            if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let class = num(class, 1)?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some((
            class,
            EnhancedStatus {
                subject: num(subject, 3)?,
                detail: num(detail, 3)?,
            },
        ))
    }
}

impl fmt::Display for EnhancedStatus {
    /// Formats as `subject.detail` (the class comes from the reply code).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.subject, self.detail)
    }
}

impl Reply {
    /// A reply with `code` (e.g. 550), an enhanced status code (e.g. `"5.7.1"`, or `""` for
    /// none: the host then uses `X.0.0`) and `text`. A `text` with line breaks (`\n` or
    /// `\r\n`) becomes a multi-line reply.
    ///
    /// # Panics
    ///
    /// If `enhanced` is neither empty nor a well-formed `class.subject.detail` whose class
    /// is the first digit of `code`: that is a bug in the plugin, and panicking makes the
    /// gateway run the plugin's `on-error` policy and log the message.
    pub fn new(code: u16, enhanced: &str, text: impl AsRef<str>) -> Reply {
        let lines = text
            .as_ref()
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l));
        Reply::with_lines(code, enhanced, lines)
    }

    /// Like [`Reply::new`], with the text lines given one by one (used as they are: the
    /// host refuses control characters in them).
    ///
    /// # Panics
    ///
    /// As [`Reply::new`].
    pub fn with_lines<I, S>(code: u16, enhanced: &str, lines: I) -> Reply
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let enhanced = if enhanced.is_empty() {
            None
        } else {
            match EnhancedStatus::parse(enhanced) {
                Some((class, status)) if class == code / 100 => Some(status),
                _ => panic!(
                    "mailgate plugin: enhanced status code {enhanced:?} is malformed or does not \
                     match reply code {code}"
                ),
            }
        };
        Reply {
            code,
            enhanced,
            lines: lines.into_iter().map(Into::into).collect(),
        }
    }

    /// The reply's text lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl fmt::Display for Reply {
    /// Formats like the SMTP reply's first line, e.g. `550 5.7.1 text` (later lines are
    /// joined with ` / `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {}.{}", self.code / 100, e)?;
        }
        if !self.lines.is_empty() {
            write!(f, " {}", self.lines.join(" / "))?;
        }
        Ok(())
    }
}

impl Verdict {
    /// No opinion: ask the next plugin.
    pub fn continue_() -> Verdict {
        Verdict::Continue
    }
    /// Accept at this stage, skipping the remaining plugins for this stage only.
    pub fn accept() -> Verdict {
        Verdict::Accept
    }
    /// Refuse with a 5xx reply, e.g. `Verdict::reject(550, "5.7.1", "Not here")`.
    /// See [`Reply::new`] for the arguments (and when it panics).
    pub fn reject(code: u16, enhanced: &str, text: impl AsRef<str>) -> Verdict {
        Verdict::Reject(Reply::new(code, enhanced, text))
    }
    /// Refuse with a 4xx reply, e.g. `Verdict::tempfail(451, "4.7.1", "Try later")`.
    /// See [`Reply::new`].
    pub fn tempfail(code: u16, enhanced: &str, text: impl AsRef<str>) -> Verdict {
        Verdict::Tempfail(Reply::new(code, enhanced, text))
    }
    /// Send the reply (421 or 5xx), then close the connection. See [`Reply::new`].
    pub fn disconnect(code: u16, enhanced: &str, text: impl AsRef<str>) -> Verdict {
        Verdict::Disconnect(Reply::new(code, enhanced, text))
    }
    /// The reply this verdict sends, if it has one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Verdict::Continue | Verdict::Accept => None,
            Verdict::Reject(r) | Verdict::Tempfail(r) | Verdict::Disconnect(r) => Some(r),
        }
    }
}

impl Default for Verdict {
    /// [`Verdict::Continue`].
    fn default() -> Self {
        Verdict::Continue
    }
}

impl DataVerdict {
    /// No opinion: ask the next plugin.
    pub fn continue_() -> DataVerdict {
        DataVerdict::Continue
    }
    /// Accept at this stage, skipping the remaining plugins for DATA.
    pub fn accept() -> DataVerdict {
        DataVerdict::Accept
    }
    /// Refuse the message with a 5xx reply. See [`Reply::new`].
    pub fn reject(code: u16, enhanced: &str, text: impl AsRef<str>) -> DataVerdict {
        DataVerdict::Reject(Reply::new(code, enhanced, text))
    }
    /// Refuse the message with a 4xx reply. See [`Reply::new`].
    pub fn tempfail(code: u16, enhanced: &str, text: impl AsRef<str>) -> DataVerdict {
        DataVerdict::Tempfail(Reply::new(code, enhanced, text))
    }
    /// Send the reply (421 or 5xx), then close the connection. See [`Reply::new`].
    pub fn disconnect(code: u16, enhanced: &str, text: impl AsRef<str>) -> DataVerdict {
        DataVerdict::Disconnect(Reply::new(code, enhanced, text))
    }
    /// Answer 250 and drop the message silently.
    pub fn discard() -> DataVerdict {
        DataVerdict::Discard
    }
    /// Answer 250 and put the message into quarantine; `reason` is for the admin only.
    pub fn quarantine(reason: impl Into<String>) -> DataVerdict {
        DataVerdict::Quarantine(reason.into())
    }
    /// The reply this verdict sends, if it has one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            DataVerdict::Reject(r) | DataVerdict::Tempfail(r) | DataVerdict::Disconnect(r) => {
                Some(r)
            }
            _ => None,
        }
    }
}

impl Default for DataVerdict {
    /// [`DataVerdict::Continue`].
    fn default() -> Self {
        DataVerdict::Continue
    }
}

impl From<Verdict> for DataVerdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Continue => DataVerdict::Continue,
            Verdict::Accept => DataVerdict::Accept,
            Verdict::Reject(r) => DataVerdict::Reject(r),
            Verdict::Tempfail(r) => DataVerdict::Tempfail(r),
            Verdict::Disconnect(r) => DataVerdict::Disconnect(r),
        }
    }
}

impl Default for Marks {
    /// No score, no tags, no reason.
    fn default() -> Self {
        Marks {
            score: Vec::new(),
            tags: Vec::new(),
            reason: None,
        }
    }
}

impl Marks {
    /// Adds a named score contribution (`rule`: 1..=64 of `A-Z a-z 0-9 _ - .`).
    pub fn add_score(&mut self, rule: impl Into<String>, points: f64) {
        self.score.push(ScoreEntry {
            rule: rule.into(),
            points,
        });
    }
    /// Adds a tag (1..=64 of `a-z 0-9 _ - . :`), once.
    pub fn add_tag(&mut self, tag: impl Into<String>) {
        let tag = tag.into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
    }
    /// The sum of this plugin's score contributions.
    pub fn total_score(&self) -> f64 {
        self.score.iter().map(|s| s.points).sum()
    }
}

impl HeaderEdit {
    /// Add `name: value` below the existing header fields.
    pub fn append(name: impl Into<String>, value: impl Into<String>) -> HeaderEdit {
        HeaderEdit::Append(Header {
            name: name.into(),
            value: value.into(),
        })
    }
    /// Add `name: value` at the top of the header (above `Received:`).
    pub fn prepend(name: impl Into<String>, value: impl Into<String>) -> HeaderEdit {
        HeaderEdit::Prepend(Header {
            name: name.into(),
            value: value.into(),
        })
    }
    /// Remove every field named `name` (case-insensitive).
    pub fn remove(name: impl Into<String>) -> HeaderEdit {
        HeaderEdit::Remove(HeaderRef {
            name: name.into(),
            occurrence: None,
        })
    }
    /// Remove the `occurrence`-th (0-based, top to bottom) field named `name`.
    pub fn remove_nth(name: impl Into<String>, occurrence: u32) -> HeaderEdit {
        HeaderEdit::Remove(HeaderRef {
            name: name.into(),
            occurrence: Some(occurrence),
        })
    }
    /// Replace the value of every field named `name`, keeping their position.
    pub fn replace(name: impl Into<String>, value: impl Into<String>) -> HeaderEdit {
        HeaderEdit::Replace(HeaderReplace {
            target: HeaderRef {
                name: name.into(),
                occurrence: None,
            },
            value: value.into(),
        })
    }
    /// Replace the value of the `occurrence`-th field named `name`.
    pub fn replace_nth(
        name: impl Into<String>,
        occurrence: u32,
        value: impl Into<String>,
    ) -> HeaderEdit {
        HeaderEdit::Replace(HeaderReplace {
            target: HeaderRef {
                name: name.into(),
                occurrence: Some(occurrence),
            },
            value: value.into(),
        })
    }
}

impl RecipientEdit {
    /// Add a recipient (not subject to the relay check).
    pub fn add(address: Address) -> RecipientEdit {
        RecipientEdit::Add(address)
    }
    /// Remove a recipient.
    pub fn remove(address: Address) -> RecipientEdit {
        RecipientEdit::Remove(address)
    }
    /// Deliver to `replacement` instead of `original`.
    pub fn rewrite(original: Address, replacement: Address) -> RecipientEdit {
        RecipientEdit::Rewrite(AddressRewrite {
            original,
            replacement,
        })
    }
}

impl Address {
    /// An address from its local part and domain (the domain is lowercased).
    pub fn new(local_part: impl Into<String>, domain: impl AsRef<str>) -> Address {
        Address {
            local_part: local_part.into(),
            domain: domain.as_ref().to_lowercase(),
        }
    }
    /// Splits `local@domain` at the last `@` (the domain is lowercased). `None` without an
    /// `@`, or with an empty local part. Quoting is not interpreted.
    pub fn parse(address: &str) -> Option<Address> {
        let (local, domain) = address.rsplit_once('@')?;
        if local.is_empty() {
            return None;
        }
        Some(Address::new(local, domain))
    }
    /// `true` if the domain equals `domain`, ignoring ASCII case.
    pub fn is_in_domain(&self, domain: &str) -> bool {
        self.domain
            .eq_ignore_ascii_case(domain.trim_end_matches('.'))
    }
}

impl fmt::Display for Address {
    /// `local@domain`, or just the local part when the domain is empty (`Postmaster`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local_part)
        } else {
            write!(f, "{}@{}", self.local_part, self.domain)
        }
    }
}

impl Route {
    /// Deliver to `host:port` (a smart host or internal server), ignoring MX.
    pub fn relay(host: impl Into<String>, port: u16, tls: TlsPolicy) -> Route {
        Route::Relay(RelayHost {
            host: host.into(),
            port,
            tls,
        })
    }
    /// Fail the recipient permanently (a DSN goes to the sender). See [`Reply::new`].
    pub fn bounce(code: u16, enhanced: &str, text: impl AsRef<str>) -> Route {
        Route::Bounce(Reply::new(code, enhanced, text))
    }
    /// Try the recipient again later. See [`Reply::new`].
    pub fn defer(code: u16, enhanced: &str, text: impl AsRef<str>) -> Route {
        Route::Defer(Reply::new(code, enhanced, text))
    }
}

/// Constructors named after the verdicts and `with_*` builders for the marks, shared by
/// the outcome records.
macro_rules! outcome_common {
    ($ty:ident, $verdict:ident { $($extra:ident: $init:expr),* }) => {
        impl $ty {
            /// No opinion: ask the next plugin.
            pub fn continue_() -> Self {
                Self::from($verdict::Continue)
            }
            /// Accept at this stage (skip the remaining plugins for this stage only).
            pub fn accept() -> Self {
                Self::from($verdict::Accept)
            }
            /// Refuse with a 5xx reply, e.g. `reject(550, "5.7.1", "text")`.
            /// See [`Reply::new`] for the arguments (and when it panics).
            pub fn reject(code: u16, enhanced: &str, text: impl AsRef<str>) -> Self {
                Self::from($verdict::reject(code, enhanced, text))
            }
            /// Refuse with a 4xx reply, e.g. `tempfail(451, "4.7.1", "text")`.
            /// See [`Reply::new`].
            pub fn tempfail(code: u16, enhanced: &str, text: impl AsRef<str>) -> Self {
                Self::from($verdict::tempfail(code, enhanced, text))
            }
            /// Send the reply (421 or 5xx), then close the connection. See [`Reply::new`].
            pub fn disconnect(code: u16, enhanced: &str, text: impl AsRef<str>) -> Self {
                Self::from($verdict::disconnect(code, enhanced, text))
            }
            /// Adds a named contribution to the message's spam score.
            pub fn with_score(mut self, rule: impl Into<String>, points: f64) -> Self {
                self.marks.add_score(rule, points);
                self
            }
            /// Adds a tag for later plugins and the decision trace.
            pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
                self.marks.add_tag(tag);
                self
            }
            /// Sets why the plugin decided this (for the log and trace, never sent to the
            /// client).
            pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
                self.marks.reason = Some(reason.into());
                self
            }
        }

        impl From<$verdict> for $ty {
            fn from(verdict: $verdict) -> Self {
                $ty { verdict, marks: Marks::default(), $($extra: $init),* }
            }
        }

        impl Default for $ty {
            /// Continue, with no marks or edits.
            fn default() -> Self {
                Self::continue_()
            }
        }
    };
}

outcome_common!(Outcome, Verdict {});
outcome_common!(
    RcptOutcome,
    Verdict {
        recipient_edits: Vec::new()
    }
);
outcome_common!(
    DataOutcome,
    DataVerdict {
        header_edits: Vec::new(),
        recipient_edits: Vec::new()
    }
);

/// Recipient-edit builders, shared by the outcomes that carry them.
macro_rules! recipient_edits {
    ($ty:ident) => {
        impl $ty {
            /// Adds a recipient-edit.
            pub fn with_recipient_edit(mut self, edit: RecipientEdit) -> Self {
                self.recipient_edits.push(edit);
                self
            }
            /// Adds a recipient (e.g. an archive copy).
            pub fn add_recipient(self, address: Address) -> Self {
                self.with_recipient_edit(RecipientEdit::Add(address))
            }
            /// Removes a recipient (at RCPT TO, removing the one being decided accepts it
            /// silently).
            pub fn remove_recipient(self, address: Address) -> Self {
                self.with_recipient_edit(RecipientEdit::Remove(address))
            }
            /// Delivers to `replacement` instead of `original`.
            pub fn rewrite_recipient(self, original: Address, replacement: Address) -> Self {
                self.with_recipient_edit(RecipientEdit::rewrite(original, replacement))
            }
        }
    };
}

recipient_edits!(RcptOutcome);
recipient_edits!(DataOutcome);

impl From<Verdict> for DataOutcome {
    fn from(verdict: Verdict) -> Self {
        DataOutcome::from(DataVerdict::from(verdict))
    }
}

impl DataOutcome {
    /// Answer 250 and drop the message silently.
    pub fn discard() -> Self {
        Self::from(DataVerdict::Discard)
    }
    /// Answer 250 and put the message into quarantine; `reason` is for the admin only.
    pub fn quarantine(reason: impl Into<String>) -> Self {
        Self::from(DataVerdict::quarantine(reason))
    }
    /// Adds a header edit.
    pub fn with_header_edit(mut self, edit: HeaderEdit) -> Self {
        self.header_edits.push(edit);
        self
    }
    /// Adds `name: value` below the existing header fields.
    pub fn add_header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_header_edit(HeaderEdit::append(name, value))
    }
    /// Adds `name: value` at the top of the header.
    pub fn prepend_header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_header_edit(HeaderEdit::prepend(name, value))
    }
    /// Removes every field named `name`.
    pub fn remove_header(self, name: impl Into<String>) -> Self {
        self.with_header_edit(HeaderEdit::remove(name))
    }
    /// Replaces the value of every field named `name`.
    pub fn replace_header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_header_edit(HeaderEdit::replace(name, value))
    }
}

impl DeliverOutcome {
    /// No routes: every recipient keeps an earlier plugin's route or the default.
    pub fn none() -> Self {
        DeliverOutcome {
            routes: Vec::new(),
            reason: None,
        }
    }
    /// Routes `recipient` (an envelope recipient, routed at most once).
    pub fn route(mut self, recipient: Address, route: Route) -> Self {
        self.routes.push(RecipientRoute { recipient, route });
        self
    }
    /// Sets why (for the log and trace).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

impl Default for DeliverOutcome {
    /// No routes.
    fn default() -> Self {
        Self::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_builds_reply() {
        let v = Verdict::reject(550, "5.7.1", "blocked");
        assert_eq!(
            v,
            Verdict::Reject(Reply {
                code: 550,
                enhanced: Some(EnhancedStatus {
                    subject: 7,
                    detail: 1
                }),
                lines: vec!["blocked".into()],
            })
        );
        assert_eq!(v.reply().unwrap().to_string(), "550 5.7.1 blocked");
    }

    #[test]
    fn tempfail_and_disconnect() {
        let t = Verdict::tempfail(451, "4.7.1", "later");
        assert!(matches!(t, Verdict::Tempfail(ref r) if r.code == 451));
        let d = Verdict::disconnect(421, "", "bye");
        assert_eq!(d.reply().unwrap().enhanced, None);
        assert_eq!(Verdict::continue_(), Verdict::Continue);
        assert_eq!(Verdict::accept(), Verdict::Accept);
        assert_eq!(Verdict::accept().reply(), None);
    }

    #[test]
    fn multi_line_text() {
        let r = Reply::new(550, "5.7.1", "one\r\ntwo\nthree");
        assert_eq!(r.lines, vec!["one", "two", "three"]);
        assert_eq!(r.text(), "one\ntwo\nthree");
        let r = Reply::with_lines(554, "5.7.0", ["a", "b"]);
        assert_eq!(r.lines.len(), 2);
    }

    #[test]
    fn enhanced_parse() {
        assert_eq!(
            EnhancedStatus::parse("5.1.1"),
            Some((
                5,
                EnhancedStatus {
                    subject: 1,
                    detail: 1
                }
            ))
        );
        assert_eq!(
            EnhancedStatus::parse("4.999.999"),
            Some((
                4,
                EnhancedStatus {
                    subject: 999,
                    detail: 999
                }
            ))
        );
        for bad in [
            "", "5", "5.1", "5.1.1.1", "3.1.1", "5.1000.1", "5.a.1", "5..1", " 5.1.1",
        ] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    #[should_panic(expected = "does not match")]
    fn class_mismatch_panics() {
        let _ = Verdict::reject(550, "4.7.1", "x");
    }

    #[test]
    #[should_panic(expected = "malformed")]
    fn malformed_enhanced_panics() {
        let _ = Reply::new(550, "5.7", "x");
    }

    #[test]
    fn data_verdicts() {
        assert_eq!(DataVerdict::discard(), DataVerdict::Discard);
        assert_eq!(
            DataVerdict::quarantine("spam"),
            DataVerdict::Quarantine("spam".into())
        );
        assert_eq!(
            DataVerdict::from(Verdict::reject(550, "", "x")),
            DataVerdict::reject(550, "", "x")
        );
        assert!(DataOutcome::discard().verdict == DataVerdict::Discard);
        assert!(matches!(
            DataOutcome::quarantine("q").verdict,
            DataVerdict::Quarantine(_)
        ));
    }

    #[test]
    fn outcomes_and_marks() {
        let o = Outcome::continue_()
            .with_score("RULE_A", 1.5)
            .with_score("RULE_B", -0.5)
            .with_tag("x")
            .with_tag("x")
            .with_reason("why");
        assert_eq!(o.verdict, Verdict::Continue);
        assert_eq!(o.marks.score.len(), 2);
        assert_eq!(o.marks.total_score(), 1.0);
        assert_eq!(o.marks.tags, vec!["x"]);
        assert_eq!(o.marks.reason.as_deref(), Some("why"));
        assert_eq!(Outcome::default(), Outcome::continue_());

        let r: RcptOutcome = Verdict::reject(550, "5.1.1", "no").into();
        assert_eq!(r, RcptOutcome::reject(550, "5.1.1", "no"));
        assert!(r.recipient_edits.is_empty());
        let r = RcptOutcome::accept()
            .rewrite_recipient(Address::new("a", "x.test"), Address::new("b", "y.test"));
        assert_eq!(r.recipient_edits.len(), 1);
    }

    #[test]
    fn header_edits() {
        let d = DataOutcome::continue_()
            .add_header("X-A", "1")
            .prepend_header("X-B", "2")
            .remove_header("X-C")
            .replace_header("Subject", "s")
            .with_header_edit(HeaderEdit::remove_nth("Received", 0))
            .add_recipient(Address::new("archive", "x.test"))
            .remove_recipient(Address::new("a", "x.test"));
        assert_eq!(
            d.header_edits,
            vec![
                HeaderEdit::Append(Header {
                    name: "X-A".into(),
                    value: "1".into()
                }),
                HeaderEdit::Prepend(Header {
                    name: "X-B".into(),
                    value: "2".into()
                }),
                HeaderEdit::Remove(HeaderRef {
                    name: "X-C".into(),
                    occurrence: None
                }),
                HeaderEdit::Replace(HeaderReplace {
                    target: HeaderRef {
                        name: "Subject".into(),
                        occurrence: None
                    },
                    value: "s".into()
                }),
                HeaderEdit::Remove(HeaderRef {
                    name: "Received".into(),
                    occurrence: Some(0)
                }),
            ]
        );
        assert_eq!(d.recipient_edits.len(), 2);
        assert_eq!(
            HeaderEdit::replace_nth("X", 2, "v"),
            HeaderEdit::Replace(HeaderReplace {
                target: HeaderRef {
                    name: "X".into(),
                    occurrence: Some(2)
                },
                value: "v".into()
            })
        );
    }

    #[test]
    fn addresses() {
        let a = Address::parse("Some.One@Example.COM").unwrap();
        assert_eq!(a.local_part, "Some.One");
        assert_eq!(a.domain, "example.com");
        assert_eq!(a.to_string(), "Some.One@example.com");
        assert!(a.is_in_domain("EXAMPLE.com."));
        assert_eq!(
            Address::parse("\"a@b\"@c.test").unwrap().local_part,
            "\"a@b\""
        );
        assert_eq!(Address::parse("nodomain"), None);
        assert_eq!(Address::parse("@x.test"), None);
        assert_eq!(Address::new("Postmaster", "").to_string(), "Postmaster");
    }

    #[test]
    fn deliver_routes() {
        let d = DeliverOutcome::none()
            .route(
                Address::new("a", "x.test"),
                Route::relay("10.0.0.1", 25, TlsPolicy::Required),
            )
            .route(
                Address::new("b", "x.test"),
                Route::bounce(550, "5.1.1", "gone"),
            )
            .route(
                Address::new("c", "x.test"),
                Route::defer(451, "4.4.1", "later"),
            )
            .with_reason("rules");
        assert_eq!(d.routes.len(), 3);
        assert_eq!(d.reason.as_deref(), Some("rules"));
        assert_eq!(DeliverOutcome::default().routes.len(), 0);
    }
}
