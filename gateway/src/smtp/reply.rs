//! SMTP replies: a basic code (RFC 5321), an enhanced status code (RFC 3463) and text.
//!
//! Every reply the gateway sends carries an enhanced status code. Text handed in from
//! outside (an upstream server, later a plugin) goes through [`Reply::sanitized`], which
//! strips CR, LF, NUL and other control characters and caps the length, so no reply can
//! inject extra lines into the SMTP stream.

use std::fmt;

/// Longest text we put on one reply line (RFC 5321 allows 512 octets per reply line).
pub const MAX_REPLY_TEXT: usize = 400;

/// An SMTP reply: `code` is the three digit basic code, `enhanced` the RFC 3463 status
/// (`class.subject.detail`), `lines` one or more text lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
}

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Enhanced {
    /// Parses `2.1.0` style codes; `None` for anything else.
    pub fn parse(s: &str) -> Option<Enhanced> {
        let mut it = s.split('.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject: u16 = it.next()?.parse().ok()?;
        let detail: u16 = it.next()?.parse().ok()?;
        if it.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Enhanced(class, subject, detail))
    }
}

impl Reply {
    /// A one-line reply. `enhanced` is written like `"5.7.1"`; the class must match the code.
    ///
    /// # Panics
    /// Only on a programming error in a literal (bad enhanced code); never on peer input.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        let enhanced = Enhanced::parse(enhanced).expect("valid enhanced status code literal");
        debug_assert_eq!(
            u16::from(enhanced.0),
            code / 100,
            "enhanced class matches code"
        );
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (only the greeting and EHLO's first line use this).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply with the same enhanced code on every line (or none).
    pub fn multiline(code: u16, enhanced: Option<Enhanced>, lines: Vec<String>) -> Reply {
        assert!(!lines.is_empty(), "a reply has at least one line");
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// Builds a reply from untrusted parts (upstream server or plugin): the code must be
    /// 200..=599, text is stripped of control characters, other non-ASCII characters
    /// become `?`, and it is capped at [`MAX_REPLY_TEXT`],
    /// and an enhanced code whose class disagrees with the basic code is replaced by the
    /// class default (`X.0.0`). Returns `None` if the code is out of range.
    pub fn sanitized(code: u16, enhanced: Option<Enhanced>, lines: &[&str]) -> Option<Reply> {
        if !(200..=599).contains(&code) {
            return None;
        }
        let class = (code / 100) as u8;
        // Enhanced codes exist for classes 2, 4 and 5 only (RFC 3463): a 3xx has none.
        let enhanced = match enhanced {
            _ if !matches!(class, 2 | 4 | 5) => None,
            Some(e) if e.0 == class => Some(e),
            _ => Some(Enhanced(class, 0, 0)),
        };
        let mut out: Vec<String> = lines
            .iter()
            .take(16)
            .map(|l| {
                // Printable ASCII only: a client that did not ask for SMTPUTF8 gets
                // no other octets (RFC 5321 4.2), and none can be a control.
                let mut s: String = l
                    .chars()
                    .filter(|c| !c.is_control())
                    .map(|c| if c.is_ascii() { c } else { '?' })
                    .collect();
                if s.len() > MAX_REPLY_TEXT {
                    let mut cut = MAX_REPLY_TEXT;
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    s.truncate(cut);
                }
                s
            })
            .collect();
        if out.is_empty() {
            out.push(String::new());
        }
        Some(Reply {
            code,
            enhanced,
            lines: out,
        })
    }

    /// The three digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<Enhanced> {
        self.enhanced
    }

    /// The text lines, without codes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// `true` for 2xx and 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// `true` for 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// `true` for 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as it goes on the wire, every line ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    /// One line for logs: `550 5.7.1 text` (multi-line replies joined with ` / `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

impl Reply {
    /// Reads back the one-line form [`Display`](fmt::Display) writes (`550 5.1.1 text`),
    /// as the queue keeps replies in its state files. Text without a basic code (older
    /// state files wrote `4.4.1 text`) takes the code of its enhanced class (250, 451,
    /// 550); text with neither is kept as a `451 4.0.0`.
    pub fn parse_line(s: &str) -> Reply {
        let s = s.trim();
        let (code, rest) = match s.split_once(' ').unwrap_or((s, "")) {
            (c, rest)
                if c.len() == 3 && c.parse::<u16>().is_ok_and(|c| (200..600).contains(&c)) =>
            {
                (c.parse::<u16>().ok(), rest)
            }
            _ => (None, s),
        };
        let (enhanced, text) = match rest.split_once(' ').unwrap_or((rest, "")) {
            (e, text) if Enhanced::parse(e).is_some() => (Enhanced::parse(e), text),
            _ => (None, rest),
        };
        let code = code.unwrap_or(match enhanced {
            Some(Enhanced(2, ..)) => 250,
            Some(Enhanced(5, ..)) => 550,
            _ => 451,
        });
        Reply::sanitized(code, enhanced, &[text]).unwrap_or_else(|| Reply::new(451, "4.0.0", text))
    }
}

impl serde::Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reply, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Reply::parse_line(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_3xx_reply_gets_no_enhanced_code() {
        let r = Reply::sanitized(354, Some(Enhanced(2, 0, 0)), &["go ahead"]).unwrap();
        assert_eq!(r.to_bytes(), b"354 go ahead\r\n");
        assert_eq!(r.enhanced(), None);
        let r = Reply::sanitized(250, None, &["ok"]).unwrap();
        assert_eq!(r.to_bytes(), b"250 2.0.0 ok\r\n");
    }

    #[test]
    fn one_line_form_round_trips() {
        for r in [
            Reply::new(550, "5.1.1", "no such user"),
            Reply::new(250, "2.0.0", "Ok: queued as X"),
            Reply::new(451, "4.4.1", "host: connection refused"),
        ] {
            assert_eq!(Reply::parse_line(&r.to_string()), r);
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&j).unwrap(), r);
        }
        let old = Reply::parse_line("4.4.1 mx.test:25: connection refused");
        assert_eq!((old.code(), old.enhanced()), (451, Some(Enhanced(4, 4, 1))));
        assert_eq!(old.lines(), ["mx.test:25: connection refused"]);
        assert_eq!(Reply::parse_line("5.4.7 expired").code(), 550);
        let junk = Reply::parse_line("garbage\r\n250 ok");
        assert_eq!(junk.code(), 451);
        assert!(!junk.to_string().contains('\n'));
    }

    #[test]
    fn wire_form_single_and_multi() {
        assert_eq!(
            Reply::new(250, "2.0.0", "Ok").to_bytes(),
            b"250 2.0.0 Ok\r\n"
        );
        let r = Reply::multiline(250, None, vec!["mx".into(), "SIZE 10".into()]);
        assert_eq!(r.to_bytes(), b"250-mx\r\n250 SIZE 10\r\n");
    }

    #[test]
    fn sanitized_strips_injection_and_fixes_class() {
        let r = Reply::sanitized(550, Enhanced::parse("2.1.0"), &["no\r\n250 ok"]).unwrap();
        assert_eq!(r.to_bytes(), b"550 5.0.0 no250 ok\r\n");
        assert!(Reply::sanitized(999, None, &["x"]).is_none());
        let long = "x".repeat(2000);
        let r = Reply::sanitized(451, None, &[long.as_str()]).unwrap();
        assert_eq!(r.lines()[0].len(), MAX_REPLY_TEXT);
    }

    #[test]
    fn enhanced_parse_rejects_garbage() {
        assert!(Enhanced::parse("5.7").is_none());
        assert!(Enhanced::parse("3.0.0").is_none());
        assert!(Enhanced::parse("5.7.1.1").is_none());
        assert_eq!(Enhanced::parse("4.7.1"), Some(Enhanced(4, 7, 1)));
    }
}
