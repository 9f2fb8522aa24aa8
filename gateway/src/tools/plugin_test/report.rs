//! What `mailgate plugin test` prints: one [`Report`], as text or as JSON (the same
//! content), and the exit status it comes to.

use std::fmt::Write as _;

use serde::Serialize;

use super::client::{Answer, Dialogue, Step};
use super::logs::LogLine;
use crate::plugin::Route;
use crate::plugin::chain::Decided;
use crate::plugin::convert::Decision;
use crate::plugin::edits::{HeaderEdit, HeaderRef, RecipientEdit};
use crate::smtp::Reply;

/// Exit status: accepted (delivered, quarantined or discarded).
pub const EXIT_ACCEPTED: i32 = 0;
/// Exit status: refused with a 5xx.
pub const EXIT_REJECTED: i32 = 1;
/// Exit status: refused with a 4xx (or the session closed).
pub const EXIT_TEMPFAILED: i32 = 2;
/// Exit status: a plugin failed (at load, or in a stage: its `on_error` policy applied).
pub const EXIT_PLUGIN_FAILED: i32 = 3;
/// Exit status: a bad command line (sysexits' `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;
/// Exit status: a malformed input file (`EX_DATAERR`): zone file, message.
pub const EXIT_DATA: i32 = 65;
/// Exit status: an input file missing or unreadable (`EX_NOINPUT`).
pub const EXIT_NO_INPUT: i32 = 66;
/// Exit status: something broke in the tool itself (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: i32 = 70;
/// Exit status: the gateway config is invalid (`EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

/// What became of the message, as its sender sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered 250 at the end of DATA.
    Accepted,
    /// Refused with a 5xx (at whichever stage ended the transaction).
    Rejected,
    /// Refused with a 4xx, or the session closed before the end.
    Tempfailed,
}

/// What the gateway did with an accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// Delivered (handed to the delivery mode).
    Delivered,
    /// Kept in quarantine.
    Quarantined,
    /// Dropped by a plugin's `discard`.
    Discarded,
    /// No recipient left after the plugins' recipient edits: nothing delivered.
    NoRecipients,
}

/// An SMTP reply.
#[derive(Clone, Debug, Serialize)]
pub struct ReplyJson {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    /// Text lines.
    pub text: Vec<String>,
}

impl From<&Reply> for ReplyJson {
    fn from(r: &Reply) -> Self {
        ReplyJson {
            code: r.code(),
            enhanced: r.enhanced().map(|e| e.to_string()),
            text: r.lines().to_vec(),
        }
    }
}

/// One score entry.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreJson {
    /// Rule name.
    pub rule: String,
    /// Points.
    pub points: f64,
}

/// One edit a plugin asked for.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "edit", rename_all = "kebab-case")]
pub enum EditJson {
    /// A header field added at the end.
    AppendHeader {
        /// Field name.
        name: String,
        /// Value.
        value: String,
    },
    /// A header field added at the top.
    PrependHeader {
        /// Field name.
        name: String,
        /// Value.
        value: String,
    },
    /// Header fields removed.
    RemoveHeader {
        /// Field name.
        name: String,
        /// Which one (0 = first); all of them when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        occurrence: Option<u32>,
    },
    /// Header fields given a new value.
    ReplaceHeader {
        /// Field name.
        name: String,
        /// Which one (0 = first); all of them when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        occurrence: Option<u32>,
        /// New value.
        value: String,
    },
    /// A recipient added.
    AddRecipient {
        /// Address.
        address: String,
    },
    /// A recipient removed.
    RemoveRecipient {
        /// Address.
        address: String,
    },
    /// A recipient replaced.
    RewriteRecipient {
        /// Address replaced.
        from: String,
        /// Its replacement.
        to: String,
    },
}

impl EditJson {
    fn header(e: &HeaderEdit) -> EditJson {
        let r = |h: &HeaderRef| (h.name.clone(), h.occurrence);
        match e {
            HeaderEdit::Append(n, v) => EditJson::AppendHeader {
                name: n.clone(),
                value: v.clone(),
            },
            HeaderEdit::Prepend(n, v) => EditJson::PrependHeader {
                name: n.clone(),
                value: v.clone(),
            },
            HeaderEdit::Remove(h) => {
                let (name, occurrence) = r(h);
                EditJson::RemoveHeader { name, occurrence }
            }
            HeaderEdit::Replace(h, v) => {
                let (name, occurrence) = r(h);
                EditJson::ReplaceHeader {
                    name,
                    occurrence,
                    value: v.clone(),
                }
            }
        }
    }

    fn recipient(e: &RecipientEdit) -> EditJson {
        match e {
            RecipientEdit::Add(a) => EditJson::AddRecipient { address: a.clone() },
            RecipientEdit::Remove(a) => EditJson::RemoveRecipient { address: a.clone() },
            RecipientEdit::Rewrite(a, b) => EditJson::RewriteRecipient {
                from: a.clone(),
                to: b.clone(),
            },
        }
    }

    /// One line for the text report.
    fn text(&self) -> String {
        let which = |o: &Option<u32>| match o {
            Some(n) => format!(" (occurrence {n})"),
            None => String::new(),
        };
        match self {
            EditJson::AppendHeader { name, value } => format!("append header {name}: {value}"),
            EditJson::PrependHeader { name, value } => {
                format!("prepend header {name}: {value}")
            }
            EditJson::RemoveHeader { name, occurrence } => {
                format!("remove header {name}{}", which(occurrence))
            }
            EditJson::ReplaceHeader {
                name,
                occurrence,
                value,
            } => format!("replace header {name}{}: {value}", which(occurrence)),
            EditJson::AddRecipient { address } => format!("add recipient {address}"),
            EditJson::RemoveRecipient { address } => format!("remove recipient {address}"),
            EditJson::RewriteRecipient { from, to } => {
                format!("rewrite recipient {from} -> {to}")
            }
        }
    }
}

/// A route as words: `relay HOST:PORT (tls …)`, `mx DOMAIN`, `local`, `discard`, …
pub fn route_text(r: &Route) -> String {
    use crate::delivery::Destination;
    match r {
        Route::To(Destination::Relay(addr, tls)) => format!("relay {addr} (tls {tls:?})"),
        Route::To(Destination::Mx(d)) => format!("mx {d}"),
        Route::To(Destination::Local) => "local".into(),
        Route::Discard => "discard".into(),
        Route::Bounce(reply) => format!("bounce {reply}"),
        Route::Defer(reply) => format!("defer {reply}"),
    }
}

/// A route a plugin gave one recipient.
#[derive(Clone, Debug, Serialize)]
pub struct PluginRouteJson {
    /// The recipient.
    pub recipient: String,
    /// The route, as words.
    pub route: String,
}

/// One plugin call.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionJson {
    /// The stage (`connect`, `helo`, `mail`, `rcpt`, `data`, `deliver`).
    pub stage: &'static str,
    /// The plugin.
    pub plugin: String,
    /// The verdict as the trace writes it (`continue`, `reject 550`,
    /// `failed (trap: …) -> tempfail 451`, …).
    pub verdict: String,
    /// The reply it gave (or its failure policy gave).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyJson>,
    /// The quarantine or discard reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposition_reason: Option<String>,
    /// Why the call failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// What the plugin wrote to stdout/stderr before failing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// Score entries.
    pub score: Vec<ScoreJson>,
    /// Their sum.
    pub points: f64,
    /// Tags added.
    pub tags: Vec<String>,
    /// The plugin's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Header and recipient edits (applied unless the stage refused).
    pub edits: Vec<EditJson>,
    /// Routes (`on-deliver`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<PluginRouteJson>,
    /// Time taken, microseconds.
    pub micros: u64,
    /// Linear memory of the plugin's instance after the call, octets.
    pub memory_bytes: usize,
}

impl From<&Decided> for DecisionJson {
    fn from(d: &Decided) -> Self {
        let (reply, disposition_reason) = match &d.decision {
            Decision::Reply(r) | Decision::Disconnect(r) => (Some(ReplyJson::from(r)), None),
            Decision::Quarantine(why) => (None, Some(why.clone())),
            Decision::Discard(why) => (None, why.clone()),
            Decision::Continue | Decision::Accept => (None, None),
        };
        DecisionJson {
            stage: d.stage.name(),
            plugin: d.plugin.clone(),
            verdict: d.outcome.clone(),
            reply,
            disposition_reason,
            failure: d.failure.as_ref().map(ToString::to_string),
            output: d.output.clone(),
            score: d
                .score
                .iter()
                .map(|(rule, points)| ScoreJson {
                    rule: rule.clone(),
                    points: *points,
                })
                .collect(),
            points: d.score.iter().map(|(_, p)| p).sum(),
            tags: d.tags.clone(),
            reason: d.reason.clone(),
            edits: d
                .header_edits
                .iter()
                .map(EditJson::header)
                .chain(d.recipient_edits.iter().map(EditJson::recipient))
                .collect(),
            routes: d
                .routes
                .iter()
                .map(|(rcpt, r)| PluginRouteJson {
                    recipient: rcpt.clone(),
                    route: route_text(r),
                })
                .collect(),
            micros: d.micros,
            memory_bytes: d.memory,
        }
    }
}

/// One step of the SMTP dialogue.
#[derive(Clone, Debug, Serialize)]
pub struct StepJson {
    /// `connect`, `helo`, `mail`, `rcpt`, `data`, `message` (the end of data) or `quit`.
    pub stage: &'static str,
    /// What the client sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The reply; absent when the session closed instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Answer>,
    /// Plugin calls that ran before the reply.
    pub decisions: Vec<DecisionJson>,
    /// Plugin log lines written before the reply.
    pub logs: Vec<LogLine>,
}

impl From<&Step> for StepJson {
    fn from(s: &Step) -> Self {
        StepJson {
            stage: s.stage,
            command: s.command.clone(),
            reply: s.reply.clone(),
            decisions: s.decisions.iter().map(DecisionJson::from).collect(),
            logs: s.logs.clone(),
        }
    }
}

/// Where one recipient goes next.
#[derive(Clone, Debug, Serialize)]
pub struct RouteJson {
    /// The recipient.
    pub recipient: String,
    /// The route, as words.
    pub route: String,
    /// Who decided: a plugin's name, or `config`.
    pub by: String,
    /// The next hops it comes to (MX hosts and their addresses), when looked up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub next_hops: Vec<String>,
}

/// The deliver stage: `on-deliver`, run as the queue runs it before its first attempt.
#[derive(Clone, Debug, Serialize)]
pub struct DeliverJson {
    /// The queue id the message got.
    pub queue_id: String,
    /// Whether the config's delivery mode runs `on-deliver` (queue mode only).
    pub runs_in_server: bool,
    /// Plugin calls.
    pub decisions: Vec<DecisionJson>,
    /// Plugin log lines.
    pub logs: Vec<LogLine>,
    /// When the chain failed or refused: the reply of the whole attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_reply: Option<ReplyJson>,
    /// Each recipient's route.
    pub routes: Vec<RouteJson>,
}

/// One loaded plugin.
#[derive(Clone, Debug, Serialize)]
pub struct PluginJson {
    /// Name in the chain.
    pub name: String,
    /// The component file.
    pub path: String,
    /// Name and version it reports.
    pub version: String,
    /// WIT world version it was built for.
    pub world: String,
    /// Hooks it implements.
    pub hooks: Vec<&'static str>,
    /// Capabilities granted.
    pub capabilities: Vec<&'static str>,
    /// Its failure policy.
    pub on_error: String,
}

/// The run's settings.
#[derive(Clone, Debug, Serialize)]
pub struct RunJson {
    /// The gateway config, when the chain comes from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Our host name.
    pub hostname: String,
    /// Local domains.
    pub local_domains: Vec<String>,
    /// The config's delivery mode (`maildir`, `queue`, `proxy`).
    pub delivery_mode: &'static str,
    /// The chain.
    pub plugins: Vec<PluginJson>,
    /// The client's address.
    pub client: String,
    /// The session counts as TLS.
    pub tls: bool,
    /// The fixed clock (RFC 3339), or absent for the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Zones served (their apex names), or absent when the live resolver answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_zones: Option<Vec<String>>,
    /// The message file, or absent for the built-in message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_file: Option<String>,
}

/// The session as the gateway saw it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionJson {
    /// Session id.
    pub id: String,
    /// The client's confirmed reverse name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse_name: Option<String>,
    /// The client may relay (`relay.trusted_networks`).
    pub trusted: bool,
}

/// The message as it leaves the gateway.
#[derive(Clone, Debug, Serialize)]
pub struct EnvelopeJson {
    /// The envelope sender (empty for `<>`).
    pub mail_from: String,
    /// The recipients after the plugins' edits.
    pub rcpt_to: Vec<String>,
}

/// One header field, unfolded.
#[derive(Clone, Debug, Serialize)]
pub struct FieldJson {
    /// Name.
    pub name: String,
    /// Value, unfolded (folding whitespace kept as one space).
    pub value: String,
}

/// A recipient refused at RCPT.
#[derive(Clone, Debug, Serialize)]
pub struct RefusedJson {
    /// The recipient.
    pub recipient: String,
    /// The reply it got.
    pub reply: Answer,
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `accepted`, `rejected` or `tempfailed`.
    pub result: Outcome,
    /// For an accepted message: `delivered`, `quarantined`, `discarded`, `no-recipients`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Disposition>,
    /// A plugin call failed (its `on_error` policy applied).
    pub plugin_failed: bool,
    /// The exit status.
    pub exit_code: i32,
    /// The reply that decided the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_reply: Option<Answer>,
    /// The quarantine reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_reason: Option<String>,
    /// The run's settings.
    pub run: RunJson,
    /// The session.
    pub session: SessionJson,
    /// The dialogue, with the plugin calls of each stage.
    pub steps: Vec<StepJson>,
    /// The deliver stage, for a delivered message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver: Option<DeliverJson>,
    /// The plugins' score of the transaction (the session's included).
    pub score: f64,
    /// The plugins' tags.
    pub tags: Vec<String>,
    /// Recipients refused at RCPT, with their replies.
    pub refused_recipients: Vec<RefusedJson>,
    /// Sender and recipients as delivered (or quarantined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<EnvelopeJson>,
    /// The header block as it leaves the gateway (`Received:` and every edit applied),
    /// CRLF line ends, without the blank line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
    /// The same header block, one field per entry, unfolded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_fields: Vec<FieldJson>,
    /// Octets of the message as delivered (headers and body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

/// The result of a dialogue and the reply that decided it.
pub fn outcome(d: &Dialogue) -> (Outcome, Option<Answer>) {
    let class = |a: &Option<Answer>| match a {
        Some(a) if a.code >= 500 => Outcome::Rejected,
        _ => Outcome::Tempfailed,
    };
    let mut rcpts: Vec<&Option<Answer>> = Vec::new();
    for s in &d.steps {
        let ok = match (s.stage, &s.reply) {
            (_, None) if s.stage != "quit" => false,
            ("connect", Some(r)) => r.code == 220,
            ("data", Some(r)) => r.code == 354,
            ("helo" | "mail", Some(r)) => r.ok(),
            ("message", Some(r)) if r.ok() => return (Outcome::Accepted, s.reply.clone()),
            ("message", Some(_)) => false,
            ("rcpt", _) => {
                rcpts.push(&s.reply);
                true
            }
            _ => true,
        };
        if !ok {
            return (class(&s.reply), s.reply.clone());
        }
    }
    // The transaction stopped at RCPT: no recipient was accepted.
    let transient = rcpts.iter().find(|r| class(r) == Outcome::Tempfailed);
    match transient.or(rcpts.last()) {
        Some(r) => (class(r), (*r).clone()),
        None => (Outcome::Tempfailed, None),
    }
}

/// The exit status of a result.
pub fn exit_code(outcome: Outcome, plugin_failed: bool) -> i32 {
    match outcome {
        _ if plugin_failed => EXIT_PLUGIN_FAILED,
        Outcome::Accepted => EXIT_ACCEPTED,
        Outcome::Rejected => EXIT_REJECTED,
        Outcome::Tempfailed => EXIT_TEMPFAILED,
    }
}

/// A header block's fields, unfolded.
pub fn fields(head: &str) -> Vec<FieldJson> {
    let mut out: Vec<FieldJson> = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.value.push(' ');
                last.value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push(FieldJson {
                name: name.trim_end().to_string(),
                value: value.trim().to_string(),
            });
        }
    }
    out
}

fn kib(octets: usize) -> String {
    if octets >= 1 << 20 {
        format!("{:.1} MiB", octets as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", octets.div_ceil(1024))
    }
}

fn time(micros: u64) -> String {
    if micros >= 1000 {
        format!("{:.1} ms", micros as f64 / 1000.0)
    } else {
        format!("{micros} µs")
    }
}

fn write_decision(out: &mut String, d: &DecisionJson) {
    let _ = writeln!(
        out,
        "    [{}] {} {}  ({}, {})",
        d.plugin,
        d.stage,
        d.verdict,
        time(d.micros),
        kib(d.memory_bytes)
    );
    if let Some(r) = &d.reply {
        let enh = r
            .enhanced
            .as_deref()
            .map(|e| format!(" {e}"))
            .unwrap_or_default();
        let _ = writeln!(out, "        reply: {}{enh} {}", r.code, r.text.join(" / "));
    }
    if let Some(f) = &d.failure {
        let _ = writeln!(out, "        failure: {f}");
    }
    if !d.output.is_empty() {
        let _ = writeln!(
            out,
            "        output: {}",
            d.output.replace('\n', "\n                ")
        );
    }
    if !d.score.is_empty() {
        let entries: Vec<String> = d
            .score
            .iter()
            .map(|s| format!("{} {:+}", s.rule, s.points))
            .collect();
        let _ = writeln!(
            out,
            "        score: {} (= {:+})",
            entries.join(", "),
            d.points
        );
    }
    if !d.tags.is_empty() {
        let _ = writeln!(out, "        tags: {}", d.tags.join(", "));
    }
    if let Some(r) = &d.reason {
        let _ = writeln!(out, "        reason: {r}");
    }
    if let Some(r) = &d.disposition_reason {
        let _ = writeln!(out, "        why: {r}");
    }
    // A refusal drops the edits of its stage (and a failed call has none).
    let refused = d.reply.as_ref().is_some_and(|r| r.code >= 400);
    for e in &d.edits {
        let dropped = if refused { " (dropped: refused)" } else { "" };
        let _ = writeln!(out, "        edit: {}{dropped}", e.text());
    }
    for r in &d.routes {
        let _ = writeln!(out, "        route: {} -> {}", r.recipient, r.route);
    }
}

fn write_logs(out: &mut String, logs: &[LogLine]) {
    for l in logs {
        let fields = if l.fields.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", l.fields)
        };
        let _ = writeln!(
            out,
            "    [{}] log {}: {}{fields}",
            l.plugin, l.level, l.message
        );
    }
}

impl Report {
    /// The report as text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let r = &self.run;
        let _ = writeln!(
            out,
            "mailgate plugin test: {}",
            match &r.config {
                Some(c) => format!("the chain of {c}"),
                None => "one plugin".into(),
            }
        );
        for p in &r.plugins {
            let _ = writeln!(
                out,
                "  plugin {}: {} ({}, world {}), hooks {}, capabilities [{}], on_error {}",
                p.name,
                p.version,
                p.path,
                p.world,
                p.hooks.join(","),
                p.capabilities.join(", "),
                p.on_error
            );
        }
        let _ = writeln!(
            out,
            "  client {}{}{}, host name {}, local domains [{}], delivery mode {}",
            r.client,
            match &self.session.reverse_name {
                Some(n) => format!(" ({n})"),
                None => " (no confirmed reverse name)".into(),
            },
            if r.tls { ", TLS" } else { "" },
            r.hostname,
            r.local_domains.join(", "),
            r.delivery_mode
        );
        let _ = writeln!(
            out,
            "  clock {}, DNS {}",
            r.time.as_deref().unwrap_or("the system's"),
            match &r.dns_zones {
                Some(z) => format!("from the zones {}", z.join(" ")),
                None => "the live resolver".into(),
            }
        );
        let _ = writeln!(
            out,
            "  message {}",
            r.message_file.as_deref().unwrap_or("(built in)")
        );
        for s in &self.steps {
            let _ = writeln!(out);
            let what = match s.stage {
                "message" => "end of data".to_string(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "{what}");
            if let Some(c) = &s.command {
                let _ = writeln!(out, "  C: {c}");
            }
            match &s.reply {
                Some(a) if s.stage == "helo" && a.lines.len() > 1 => {
                    let _ = writeln!(out, "  S: {} (+{} lines)", a.first(), a.lines.len() - 1);
                }
                Some(a) => {
                    for l in &a.lines {
                        let _ = writeln!(out, "  S: {l}");
                    }
                }
                None => {
                    let _ = writeln!(out, "  S: (connection closed)");
                }
            }
            for d in &s.decisions {
                write_decision(&mut out, d);
            }
            write_logs(&mut out, &s.logs);
        }
        if let Some(d) = &self.deliver {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "deliver (queue id {}){}",
                d.queue_id,
                if d.runs_in_server {
                    ""
                } else {
                    " -- the config's delivery mode does not run on-deliver; shown as the queue would"
                }
            );
            for x in &d.decisions {
                write_decision(&mut out, x);
            }
            write_logs(&mut out, &d.logs);
            if let Some(r) = &d.attempt_reply {
                let _ = writeln!(
                    out,
                    "  the whole attempt: {} {}",
                    r.code,
                    r.text.join(" / ")
                );
            }
            for rt in &d.routes {
                let _ = writeln!(
                    out,
                    "  route {} -> {} (by {})",
                    rt.recipient, rt.route, rt.by
                );
                for h in &rt.next_hops {
                    let _ = writeln!(out, "      next hop {h}");
                }
            }
        }
        let _ = writeln!(out);
        let result = match (self.result, self.disposition) {
            (Outcome::Accepted, Some(d)) => format!(
                "accepted, {}",
                match d {
                    Disposition::Delivered => "delivered",
                    Disposition::Quarantined => "quarantined",
                    Disposition::Discarded => "discarded",
                    Disposition::NoRecipients => "no recipients left (nothing delivered)",
                }
            ),
            (Outcome::Accepted, None) => "accepted".into(),
            (Outcome::Rejected, _) => "rejected".into(),
            (Outcome::Tempfailed, _) => "tempfailed".into(),
        };
        let _ = writeln!(
            out,
            "result: {result}{} (exit {})",
            if self.plugin_failed {
                "; a plugin failed"
            } else {
                ""
            },
            self.exit_code
        );
        if let Some(a) = &self.final_reply {
            let _ = writeln!(out, "reply: {}", a.lines.join(" / "));
        }
        if let Some(q) = &self.quarantine_reason {
            let _ = writeln!(out, "quarantine reason: {q}");
        }
        for r in &self.refused_recipients {
            let _ = writeln!(
                out,
                "refused recipient {}: {}",
                r.recipient,
                r.reply.lines.join(" / ")
            );
        }
        let _ = writeln!(
            out,
            "score: {}{}",
            self.score,
            if self.tags.is_empty() {
                String::new()
            } else {
                format!(", tags: {}", self.tags.join(", "))
            }
        );
        if let Some(e) = &self.envelope {
            let _ = writeln!(out, "envelope:");
            let _ = writeln!(out, "  MAIL FROM:<{}>", e.mail_from);
            for r in &e.rcpt_to {
                let _ = writeln!(out, "  RCPT TO:<{r}>");
            }
        }
        if let Some(h) = &self.headers {
            let _ = writeln!(
                out,
                "header block{}:",
                self.size
                    .map(|n| format!(" (message {n} octets)"))
                    .unwrap_or_default()
            );
            for line in h.split("\r\n").filter(|l| !l.is_empty()) {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16) -> Option<Answer> {
        Some(Answer {
            code,
            lines: vec![format!("{code} x")],
        })
    }

    fn step(stage: &'static str, reply: Option<Answer>) -> Step {
        Step {
            stage,
            command: None,
            reply,
            decisions: vec![],
            logs: vec![],
        }
    }

    fn dialogue(steps: Vec<Step>) -> Dialogue {
        Dialogue {
            steps,
            ..Dialogue::default()
        }
    }

    #[test]
    fn the_first_refusal_decides_and_a_whole_transaction_is_accepted() {
        let ok = |s| step(s, answer(250));
        let d = dialogue(vec![
            step("connect", answer(220)),
            ok("helo"),
            ok("mail"),
            step("rcpt", answer(550)),
            ok("rcpt"),
            step("data", answer(354)),
            ok("message"),
            step("quit", answer(221)),
        ]);
        assert_eq!(outcome(&d).0, Outcome::Accepted);
        let d = dialogue(vec![
            step("connect", answer(554)),
            step("quit", answer(221)),
        ]);
        assert_eq!(outcome(&d).0, Outcome::Rejected);
        let d = dialogue(vec![step("connect", answer(421))]);
        assert_eq!(outcome(&d).0, Outcome::Tempfailed);
        let d = dialogue(vec![
            step("connect", answer(220)),
            ok("helo"),
            step("mail", None),
        ]);
        assert_eq!(outcome(&d).0, Outcome::Tempfailed, "closed");
        let d = dialogue(vec![
            step("connect", answer(220)),
            ok("helo"),
            ok("mail"),
            ok("rcpt"),
            step("data", answer(354)),
            step("message", answer(550)),
        ]);
        assert_eq!(outcome(&d).0, Outcome::Rejected);
    }

    #[test]
    fn refused_recipients_tempfail_if_any_refusal_is_temporary() {
        let base = || {
            vec![
                step("connect", answer(220)),
                step("helo", answer(250)),
                step("mail", answer(250)),
            ]
        };
        let mut s = base();
        s.extend([
            step("rcpt", answer(550)),
            step("rcpt", answer(451)),
            step("quit", answer(221)),
        ]);
        let (o, r) = outcome(&dialogue(s));
        assert_eq!(o, Outcome::Tempfailed);
        assert_eq!(r.unwrap().code, 451);
        let mut s = base();
        s.extend([step("rcpt", answer(550)), step("rcpt", answer(554))]);
        assert_eq!(outcome(&dialogue(s)).0, Outcome::Rejected);
    }

    #[test]
    fn a_plugin_failure_wins_the_exit_status() {
        assert_eq!(exit_code(Outcome::Accepted, false), 0);
        assert_eq!(exit_code(Outcome::Rejected, false), 1);
        assert_eq!(exit_code(Outcome::Tempfailed, false), 2);
        assert_eq!(exit_code(Outcome::Accepted, true), 3);
        assert_eq!(exit_code(Outcome::Tempfailed, true), 3);
    }

    #[test]
    fn header_fields_are_unfolded() {
        let f = fields("Received: from a\r\n\tby b\r\nSubject: hi\r\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "Received");
        assert_eq!(f[0].value, "from a by b");
        assert_eq!(f[1].value, "hi");
    }
}
