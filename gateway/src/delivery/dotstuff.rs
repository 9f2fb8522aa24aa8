//! The DATA wire form of a message (RFC 5321 4.5.2 "transparency").
//!
//! Before a message goes to the next hop after `DATA`, every line that starts with `.`
//! gets one more `.` in front, and the message is closed with `.CRLF`. On top of that the
//! encoder normalises line endings: every bare LF and every bare CR becomes CRLF. The
//! session already refuses such input, so this is defence in depth against SMTP
//! smuggling (a `LF.LF` or `CR.CR` end-of-data sequence that the next hop might honour):
//! whatever reaches the encoder, the bytes on the wire contain no line ending other than
//! CRLF and exactly one end-of-data sequence, at the end.
//!
//! [`DotStuffer`] works incrementally, so a message that is stored in several pieces (a
//! prepended `Received:` header, then the body) can be encoded in bounded chunks;
//! [`dot_stuff`] is the one-shot form.

/// Incremental dot-stuffing encoder; see the module docs.
///
/// Feed the message with [`DotStuffer::push`] in as many pieces as convenient, then call
/// [`DotStuffer::finish`] once to close the last line and append `.CRLF`.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// At the start of a line (nothing written yet on the current line).
    line_start: bool,
    /// The previous input byte was a CR whose line ending has not been written yet.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A fresh encoder, positioned at the start of the message.
    pub fn new() -> DotStuffer {
        DotStuffer {
            line_start: true,
            pending_cr: false,
        }
    }

    /// Encodes `input` and appends the result to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 2);
        let mut rest = input;
        while let Some(&first) = rest.first() {
            if self.pending_cr {
                self.pending_cr = false;
                // CR LF and a bare CR both become one CRLF; the LF is consumed here.
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            if self.line_start && first == b'.' {
                out.push(b'.');
            }
            // The rest of the line goes out as it is, up to its CR or LF.
            let Some(end) = memchr::memchr2(b'\r', b'\n', rest) else {
                out.extend_from_slice(rest);
                self.line_start = false;
                return;
            };
            out.extend_from_slice(&rest[..end]);
            self.line_start = false;
            if rest[end] == b'\r' {
                self.pending_cr = true;
            } else {
                // A bare LF.
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
            }
            rest = &rest[end + 1..];
        }
    }

    /// Ends the message: closes an unterminated last line with CRLF and appends `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The complete DATA wire form of `data`: dot-stuffed, CRLF-normalised and terminated
/// with `.CRLF`.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut enc = DotStuffer::new();
    enc.push(data, &mut out);
    enc.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(input: &[u8]) -> String {
        String::from_utf8(dot_stuff(input)).unwrap()
    }

    #[test]
    fn plain_message_gets_terminator() {
        assert_eq!(
            s(b"Subject: x\r\n\r\nbody\r\n"),
            "Subject: x\r\n\r\nbody\r\n.\r\n"
        );
    }

    #[test]
    fn empty_message_is_only_terminator() {
        assert_eq!(s(b""), ".\r\n");
    }

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(
            s(b".\r\n..x\r\na.b\r\n.end"),
            "..\r\n...x\r\na.b\r\n..end\r\n.\r\n"
        );
        // A dot that is the very first byte of the message, too.
        assert_eq!(s(b".hidden\r\n"), "..hidden\r\n.\r\n");
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(s(b"no newline"), "no newline\r\n.\r\n");
    }

    #[test]
    fn bare_lf_and_cr_become_crlf() {
        assert_eq!(s(b"a\nb\rc\r\n"), "a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(s(b"a\r\r\nb"), "a\r\n\r\nb\r\n.\r\n");
        assert_eq!(s(b"x\n\n"), "x\r\n\r\n.\r\n");
        assert_eq!(s(b"trailing cr\r"), "trailing cr\r\n.\r\n");
    }

    #[test]
    fn smuggling_sequences_are_neutralised() {
        // LF.LF / CR.CR / LF.CRLF: the dot starts a line after normalisation and is doubled.
        let out = s(b"a\n.\nMAIL FROM:<x>\r.\rb\r\n.\r\nz");
        assert_eq!(
            out,
            "a\r\n..\r\nMAIL FROM:<x>\r\n..\r\nb\r\n..\r\nz\r\n.\r\n"
        );
        // Exactly one end-of-data sequence, at the very end.
        assert_eq!(out.matches("\r\n.\r\n").count(), 1);
        assert!(out.ends_with("\r\n.\r\n"));
        // No bare CR or LF anywhere.
        let b = out.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b'\r' {
                assert_eq!(b.get(i + 1), Some(&b'\n'));
            }
            if c == b'\n' {
                assert!(i > 0 && b[i - 1] == b'\r');
            }
        }
    }

    /// `input` encoded in two pushes, cut at `split`.
    fn in_two(input: &[u8], split: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = DotStuffer::new();
        enc.push(&input[..split], &mut out);
        enc.push(&input[split..], &mut out);
        enc.finish(&mut out);
        out
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let input: &[u8] = b"Received: x\r\n.a\r\nb\r\r\n\n.\r\n.\rlast";
        let whole = dot_stuff(input);
        for split in 0..=input.len() {
            assert_eq!(in_two(input, split), whole, "split at {split}");
        }
        // Byte by byte.
        let mut out = Vec::new();
        let mut enc = DotStuffer::new();
        for b in input {
            enc.push(std::slice::from_ref(b), &mut out);
        }
        enc.finish(&mut out);
        assert_eq!(out, whole);
    }

    /// The encoding byte by byte, as the rules say it (the reference for the line-at-a-time
    /// encoder above).
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut line_start, mut pending_cr) = (true, false);
        for &b in input {
            if pending_cr {
                pending_cr = false;
                out.extend_from_slice(b"\r\n");
                line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => {
                    if line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    line_start = false;
                }
            }
        }
        if pending_cr || !line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// Every input of up to 7 octets over `.`, CR, LF and `a`, whole and cut in two at
    /// every point, encodes as the reference does.
    #[test]
    fn matches_the_byte_by_byte_rules_on_every_short_input() {
        const ALPHABET: &[u8] = b".\r\na";
        for len in 0..=7u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                let input: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = ALPHABET[n % ALPHABET.len()];
                        n /= ALPHABET.len();
                        b
                    })
                    .collect();
                let want = reference(&input);
                for split in 0..=input.len() {
                    assert_eq!(in_two(&input, split), want, "{input:?} split at {split}");
                }
            }
        }
    }
}
