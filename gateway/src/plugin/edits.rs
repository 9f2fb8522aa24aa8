//! The edits plugins return, as validated values ([`convert`](super::convert) makes
//! them from WIT), and how they apply: header edits make a new header block in front of
//! the unchanged body, recipient edits change the envelope, in chain order.

/// Which field(s) an edit targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRef {
    /// Field name, compared case-insensitively.
    pub name: String,
    /// Which occurrence (0 = first); `None` = all of them.
    pub occurrence: Option<u32>,
}

/// One header edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Add a field at the end of the header block.
    Append(String, String),
    /// Add a field at the top of the header block.
    Prepend(String, String),
    /// Remove fields.
    Remove(HeaderRef),
    /// Give fields a new value.
    Replace(HeaderRef, String),
}

/// One recipient edit; addresses are `local@domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientEdit {
    /// Add a recipient (unless present).
    Add(String),
    /// Remove a recipient.
    Remove(String),
    /// Replace a recipient by another.
    Rewrite(String, String),
}

/// One header field as raw lines (folding kept), CRLF-terminated.
struct Field {
    name: String,
    raw: Vec<u8>,
}

fn split(data: &[u8]) -> (Vec<Field>, &[u8]) {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let end = data[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i + 2)
            .unwrap_or(data.len());
        let line = &data[pos..end];
        if line == b"\r\n" {
            return (fields, &data[pos..]);
        }
        if (line[0] == b' ' || line[0] == b'\t') && !fields.is_empty() {
            if let Some(f) = fields.last_mut() {
                f.raw.extend_from_slice(line);
            }
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            fields.push(Field {
                name: String::from_utf8_lossy(&line[..colon]).trim().to_string(),
                raw: line.to_vec(),
            });
        } else {
            return (fields, &data[pos..]);
        }
        pos = end;
    }
    (fields, &data[data.len()..])
}

fn field(name: &str, value: &str) -> Field {
    Field {
        name: name.to_string(),
        raw: fold(name, value).into_bytes(),
    }
}

/// `Name: value` folded at whitespace to lines of at most 78 characters where possible.
pub fn fold(name: &str, value: &str) -> String {
    // Whatever the value, the field stays one field: control characters (CR and LF
    // above all) become spaces. Validated values have none; the trace and other texts
    // the gateway writes itself may carry a plugin's words.
    let value: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    // No line over 998 octets (RFC 5322 2.1.1): a word too long for that is cut (only
    // text the gateway writes itself can have one: validation refuses them).
    let longest = MAX_LINE.saturating_sub(name.len() + 2).max(1);
    let mut out = format!("{name}:");
    let mut line_len = out.len();
    let words = value.split(' ').flat_map(|w| split_word(w, longest));
    for (i, word) in words.enumerate() {
        if i > 0 || !word.is_empty() {
            if line_len + 1 + word.len() > 78 && line_len > name.len() + 1 {
                out.push_str("\r\n");
                line_len = 0;
            }
            out.push(' ');
            out.push_str(word);
            line_len += 1 + word.len();
        }
    }
    out.push_str("\r\n");
    out
}

/// Longest line of a header field, CRLF excluded (RFC 5322 2.1.1).
pub const MAX_LINE: usize = 998;

/// `word` in pieces of at most `max` octets (cut at character boundaries).
fn split_word(word: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = word;
    // Bounded: every pass takes at least one character off `rest`.
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces.push(rest);
    pieces
}

fn selected(f: &Field, r: &HeaderRef, nth: &mut u32) -> bool {
    if !f.name.eq_ignore_ascii_case(&r.name) {
        return false;
    }
    let this = *nth;
    *nth += 1;
    r.occurrence.is_none_or(|o| o == this)
}

/// Applies header edits to a message (CRLF lines): the new header block (its blank line
/// included) and the offset in `data` where the untouched body starts. `whole`: `data`
/// is the whole message (a message of header fields only gets its blank line); else it
/// is the first lines of a longer one, whose header block may go on past `data`.
pub fn apply_headers(data: &[u8], whole: bool, edits: &[HeaderEdit]) -> (Vec<u8>, usize) {
    let (mut fields, rest) = split(data);
    let body_at = data.len() - rest.len();
    let mut top: Vec<Field> = Vec::new();
    for e in edits {
        match e {
            HeaderEdit::Append(name, value) => fields.push(field(name, value)),
            HeaderEdit::Prepend(name, value) => top.insert(0, field(name, value)),
            HeaderEdit::Remove(r) => {
                let mut nth = 0;
                fields.retain(|f| !selected(f, r, &mut nth));
            }
            HeaderEdit::Replace(r, value) => {
                let mut nth = 0;
                for f in fields.iter_mut() {
                    if selected(f, r, &mut nth) {
                        *f = field(&f.name.clone(), value);
                    }
                }
            }
        }
    }
    let size = top
        .iter()
        .chain(fields.iter())
        .map(|f| f.raw.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size + 2);
    for f in top.iter().chain(fields.iter()) {
        out.extend_from_slice(&f.raw);
    }
    if rest.is_empty() && !data.is_empty() && whole {
        out.extend_from_slice(b"\r\n");
    }
    (out, body_at)
}

/// Applies recipient edits to an envelope's recipients (no duplicates are added).
pub fn apply_recipients(rcpts: &mut Vec<String>, edits: &[RecipientEdit]) {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    for e in edits {
        match e {
            RecipientEdit::Add(a) => {
                if !rcpts.iter().any(|r| same(r, a)) {
                    rcpts.push(a.clone());
                }
            }
            RecipientEdit::Remove(a) => rcpts.retain(|r| !same(r, a)),
            RecipientEdit::Rewrite(from, to) => {
                let had = rcpts.iter().any(|r| same(r, from));
                rcpts.retain(|r| !same(r, from));
                if had && !rcpts.iter().any(|r| same(r, to)) {
                    rcpts.push(to.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(name: &str, occurrence: Option<u32>) -> HeaderRef {
        HeaderRef {
            name: name.into(),
            occurrence,
        }
    }

    fn applied(msg: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
        let (head, at) = apply_headers(msg, true, edits);
        [&head[..], &msg[at..]].concat()
    }

    #[test]
    fn header_edits_apply_in_order() {
        let msg = b"Received: x\r\nSubject: s\r\nX-Spam: 1\r\n folded\r\nX-Spam: 2\r\n\r\nbody\r\n";
        let edits = [
            HeaderEdit::Prepend("X-Top".into(), "t".into()),
            HeaderEdit::Append("X-End".into(), "e".into()),
            HeaderEdit::Remove(all("x-spam", Some(0))),
            HeaderEdit::Replace(all("Subject", None), "new".into()),
        ];
        assert_eq!(
            String::from_utf8(applied(msg, &edits)).unwrap(),
            "X-Top: t\r\nReceived: x\r\nSubject: new\r\nX-Spam: 2\r\nX-End: e\r\n\r\nbody\r\n"
        );
        let (_, at) = apply_headers(msg, true, &edits);
        assert_eq!(
            &msg[at..],
            b"\r\nbody\r\n",
            "the body starts at its blank line"
        );
        assert_eq!(
            applied(b"A: 1\r\n", &[HeaderEdit::Append("B".into(), "2".into())]),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(
            applied(b"", &[HeaderEdit::Prepend("B".into(), "2".into())]),
            b"B: 2\r\n"
        );
    }

    #[test]
    fn fold_keeps_one_field_and_every_line_short() {
        // CR/LF in a value cannot start another field.
        let f = fold(
            "X-Mailgate-Trace",
            "init failed: x\r\nBcc: victim@example.test\nX-Injected: 1",
        );
        assert_eq!(
            f.matches("\r\n").count(),
            1 + f.matches("\r\n ").count(),
            "{f:?}"
        );
        assert!(
            !f.contains("\r\nBcc") && !f.contains("\r\nX-Injected"),
            "{f:?}"
        );
        // A 4,000-octet word is cut into lines within 998 octets.
        let f = fold("X-Long", &"a".repeat(4000));
        assert!(f.split("\r\n").all(|l| l.len() <= MAX_LINE), "{f:?}");
        assert_eq!(f.matches('a').count(), 4000);
        let f = fold("X-Utf8", &"ä".repeat(1000));
        assert!(f.split("\r\n").all(|l| l.len() <= MAX_LINE));
    }

    #[test]
    fn the_first_lines_of_a_spilled_message_get_no_blank_line() {
        // Only the start of a long header block is in memory: the edit must not end it.
        let front = b"A: 1\r\nB: 2\r\n";
        let (head, at) =
            apply_headers(front, false, &[HeaderEdit::Prepend("X".into(), "y".into())]);
        assert_eq!(head, b"X: y\r\nA: 1\r\nB: 2\r\n");
        assert_eq!(at, front.len());
    }

    #[test]
    fn long_values_fold() {
        let v = "word ".repeat(40);
        let f = fold("X-Long", v.trim());
        assert!(f.split("\r\n").all(|l| l.len() <= 78), "{f}");
        assert_eq!(f.replace("\r\n", ""), format!("X-Long: {}", v.trim()));
    }

    #[test]
    fn recipient_edits_apply() {
        let mut r = vec!["a@x.test".to_string(), "b@x.test".to_string()];
        apply_recipients(
            &mut r,
            &[
                RecipientEdit::Add("archive@x.test".into()),
                RecipientEdit::Add("A@x.test".into()),
                RecipientEdit::Remove("b@x.test".into()),
                RecipientEdit::Rewrite("a@x.test".into(), "c@x.test".into()),
            ],
        );
        assert_eq!(r, vec!["archive@x.test", "c@x.test"]);
    }
}
