//! Log lines carry what clients sent (HELO names, addresses, upstream and plugin text).
//! Before a line reaches the log, every character that a terminal or an editor would act
//! on is escaped: C0 and C1 controls (an `ESC [` sequence rewrites a terminal), DEL, and
//! the Unicode bidirectional controls (which reorder what a reader sees). Text logs get
//! `\u{202e}`, JSON logs `\u202e` (valid JSON for the same character). The line's own
//! final newline is kept. This sits in the writer, so every field of every event is
//! covered, present and future.

use std::borrow::Cow;
use std::io::{self, Write};

/// Whether `c` must not reach a log as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `line` with unsafe characters escaped (a final `\n` is kept as it is).
pub fn escape(line: &str, json: bool) -> Cow<'_, str> {
    let body = line.strip_suffix('\n').unwrap_or(line);
    if !body.chars().any(unsafe_char) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in body.chars() {
        if unsafe_char(c) {
            if json {
                out.push_str(&format!("\\u{:04x}", c as u32));
            } else {
                out.push_str(&c.escape_unicode().to_string());
            }
        } else {
            out.push(c);
        }
    }
    if body.len() < line.len() {
        out.push('\n');
    }
    Cow::Owned(out)
}

/// A writer that escapes each log line before passing it on (tracing's formatter writes
/// one whole event per `write`).
#[derive(Debug)]
pub struct Escaping<W> {
    inner: W,
    json: bool,
}

impl<W: Write> Escaping<W> {
    /// Escapes for a text log (`json = false`) or a JSON log.
    pub fn new(inner: W, json: bool) -> Self {
        Escaping { inner, json }
    }
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(escape(&text, self.json).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_and_plain_text_is_not_copied() {
        let evil = "helo=\u{202e}moc.evil \u{9b}31m esc=\u{1b}[2J tab=\t end\n";
        let text = escape(evil, false);
        assert_eq!(
            text,
            "helo=\\u{202e}moc.evil \\u{9b}31m esc=\\u{1b}[2J tab=\\u{9} end\n"
        );
        let json = escape(evil, true);
        assert_eq!(
            json,
            "helo=\\u202emoc.evil \\u009b31m esc=\\u001b[2J tab=\\u0009 end\n"
        );
        assert!(matches!(escape("plain line\n", false), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\n", false),
            "a\\u{a}b\n",
            "only the final newline stays"
        );
    }

    #[test]
    fn the_writer_escapes_what_passes_through() {
        let mut w = Escaping::new(Vec::new(), true);
        w.write_all("{\"helo\":\"x\u{2066}y\"}\n".as_bytes())
            .unwrap();
        assert_eq!(
            String::from_utf8(w.inner).unwrap(),
            "{\"helo\":\"x\\u2066y\"}\n"
        );
    }
}
