//! The scripted SMTP client at the far end of the in-memory pipe: one transaction, one
//! command at a time (no pipelining), as a careful sending MTA would: EHLO, MAIL FROM
//! (with `SMTPUTF8` and `BODY=8BITMIME` when the message or addresses need them and the
//! server offers them), each RCPT TO, DATA with the message dot-stuffed, QUIT. It stops
//! at the first refusal that ends the transaction. After each reply it takes the plugin
//! decisions and log lines that came with it, so the report shows every stage with
//! what the plugins decided in it.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

use super::logs::{Captured, LogLine};
use crate::plugin::chain::{Decided, DecisionLog};

/// Longest wait for one reply: plugin deadlines and DNS timeouts bound the server's
/// side; this only keeps a broken run from hanging.
const REPLY_LIMIT: Duration = Duration::from_secs(300);
/// Most lines one reply may have.
const MAX_REPLY_LINES: usize = 100;

/// What the client does.
#[derive(Debug)]
pub struct Script {
    /// The EHLO name.
    pub helo: String,
    /// The envelope sender (empty for `<>`).
    pub from: String,
    /// The recipients, in order.
    pub rcpts: Vec<String>,
    /// The message, every line ending in CRLF, not dot-stuffed.
    pub message: Vec<u8>,
}

/// One reply: its code and text lines (without the code).
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// The reply code.
    pub code: u16,
    /// Its lines as sent, code and separator included.
    pub lines: Vec<String>,
}

impl Answer {
    /// Positive completion (2xx) or intermediate (3xx).
    pub fn ok(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The first line as sent.
    pub fn first(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }
}

/// One step of the dialogue and what happened in the plugins meanwhile.
#[derive(Debug)]
pub struct Step {
    /// `connect`, `helo`, `mail`, `rcpt`, `data`, `message` or `quit`.
    pub stage: &'static str,
    /// What the client sent (`None` at connect; a summary for the message).
    pub command: Option<String>,
    /// The reply; `None` when the connection closed instead.
    pub reply: Option<Answer>,
    /// Plugin decisions taken before the reply.
    pub decisions: Vec<Decided>,
    /// Plugin log lines written before the reply.
    pub logs: Vec<LogLine>,
}

/// The whole dialogue.
#[derive(Debug, Default)]
pub struct Dialogue {
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// `SMTPUTF8` was given on MAIL FROM.
    pub smtputf8: bool,
    /// `BODY=8BITMIME` was given on MAIL FROM.
    pub eight_bit: bool,
}

/// The recorders the client reads after each reply.
pub struct Recorders<'a> {
    /// Plugin decisions.
    pub decisions: &'a DecisionLog,
    /// Plugin log lines.
    pub logs: &'a Captured,
}

struct Conn<'a> {
    io: BufReader<DuplexStream>,
    rec: Recorders<'a>,
    marks: (usize, usize),
    dialogue: Dialogue,
}

impl Conn<'_> {
    /// Reads one reply; `Ok(None)` at end of stream.
    async fn reply(&mut self) -> anyhow::Result<Option<Answer>> {
        let mut lines = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut line = String::new();
            let n = tokio::time::timeout(REPLY_LIMIT, self.io.read_line(&mut line))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("no reply from the session within {REPLY_LIMIT:?}")
                })??;
            if n == 0 {
                return Ok(None);
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            lines.push(line);
            if !more {
                let code =
                    code.ok_or_else(|| anyhow::anyhow!("not an SMTP reply: {:?}", lines.last()))?;
                return Ok(Some(Answer { code, lines }));
            }
        }
        anyhow::bail!("a reply of more than {MAX_REPLY_LINES} lines")
    }

    /// Records a step: the reply and what the plugins did since the last one.
    fn record(&mut self, stage: &'static str, command: Option<String>, reply: Option<Answer>) {
        let decisions = self.rec.decisions.since(self.marks.0);
        let logs = self.rec.logs.since(self.marks.1);
        self.marks = (self.marks.0 + decisions.len(), self.marks.1 + logs.len());
        self.dialogue.steps.push(Step {
            stage,
            command,
            reply,
            decisions,
            logs,
        });
    }

    /// Sends `line` (CRLF added), reads and records the reply.
    async fn command(
        &mut self,
        stage: &'static str,
        line: String,
    ) -> anyhow::Result<Option<Answer>> {
        let mut bytes = line.clone().into_bytes();
        bytes.extend_from_slice(b"\r\n");
        if self.io.get_mut().write_all(&bytes).await.is_err() {
            self.record(stage, Some(line), None);
            return Ok(None);
        }
        let reply = self.reply().await?;
        self.record(stage, Some(line), reply.clone());
        Ok(reply)
    }

    /// Says QUIT unless the server closed.
    async fn quit(&mut self) -> anyhow::Result<()> {
        self.command("quit", "QUIT".into()).await?;
        Ok(())
    }
}

/// `message` dot-stuffed, with the terminating `.CRLF`.
pub fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Whether a reply closes the session (421, or 221 to QUIT).
fn closing(a: &Option<Answer>) -> bool {
    a.as_ref().is_none_or(|a| a.code == 421)
}

/// Runs `script` over `io`.
pub async fn run(
    io: DuplexStream,
    script: &Script,
    rec: Recorders<'_>,
) -> anyhow::Result<Dialogue> {
    let mut c = Conn {
        io: BufReader::new(io),
        rec,
        marks: (0, 0),
        dialogue: Dialogue::default(),
    };
    let greeting = c.reply().await?;
    c.record("connect", None, greeting.clone());
    if closing(&greeting) {
        return Ok(c.dialogue);
    }
    if greeting.as_ref().is_some_and(|g| g.code != 220) {
        // RFC 5321 3.1: a 554 greeting; the client may only QUIT.
        c.quit().await?;
        return Ok(c.dialogue);
    }
    let ehlo = c.command("helo", format!("EHLO {}", script.helo)).await?;
    let ehlo = match ehlo {
        Some(r) if r.ok() => r,
        other => {
            if !closing(&other) {
                c.quit().await?;
            }
            return Ok(c.dialogue);
        }
    };
    let offers = |ext: &str| {
        ehlo.lines.iter().skip(1).any(|l| {
            l.get(4..)
                .and_then(|t| t.split_whitespace().next())
                .is_some_and(|k| k.eq_ignore_ascii_case(ext))
        })
    };
    let non_ascii = !script.from.is_ascii() || script.rcpts.iter().any(|r| !r.is_ascii());
    let eight_bit = !script.message.is_ascii();
    let mut mail = format!("MAIL FROM:<{}>", script.from);
    if eight_bit && offers("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
        c.dialogue.eight_bit = true;
    }
    if (non_ascii || eight_bit) && offers("SMTPUTF8") {
        mail.push_str(" SMTPUTF8");
        c.dialogue.smtputf8 = true;
    }
    let reply = c.command("mail", mail).await?;
    if !reply.as_ref().is_some_and(Answer::ok) {
        if !closing(&reply) {
            c.quit().await?;
        }
        return Ok(c.dialogue);
    }
    let mut accepted = 0;
    for rcpt in &script.rcpts {
        let reply = c.command("rcpt", format!("RCPT TO:<{rcpt}>")).await?;
        if closing(&reply) {
            return Ok(c.dialogue);
        }
        accepted += usize::from(reply.as_ref().is_some_and(Answer::ok));
    }
    if accepted == 0 {
        c.quit().await?;
        return Ok(c.dialogue);
    }
    let reply = c.command("data", "DATA".into()).await?;
    match &reply {
        Some(r) if r.code == 354 => {}
        r if closing(r) => return Ok(c.dialogue),
        _ => {
            c.quit().await?;
            return Ok(c.dialogue);
        }
    }
    let text = dot_stuffed(&script.message);
    let summary = format!("(the message, {} octets)", script.message.len());
    if c.io.get_mut().write_all(&text).await.is_err() {
        c.record("message", Some(summary), None);
        return Ok(c.dialogue);
    }
    let reply = c.reply().await?;
    c.record("message", Some(summary), reply.clone());
    if !closing(&reply) {
        c.quit().await?;
    }
    Ok(c.dialogue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_starting_with_a_dot_are_stuffed_and_the_end_is_marked() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..\r\n"),
            b"a\r\n..b\r\n...\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b".\r\n");
        assert_eq!(dot_stuffed(b"no end"), b"no end\r\n.\r\n");
    }
}
