//! Applying the edits plugins return: header edits to the message's header block and
//! recipient edits to the envelope, in chain order.

use super::bindings::mailgate::plugin::types as wit;
use super::convert::address_text;

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
    let mut out = format!("{name}:");
    let mut line_len = out.len();
    for (i, word) in value.split(' ').enumerate() {
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

fn selected(f: &Field, r: &wit::HeaderRef, nth: &mut u32) -> bool {
    if !f.name.eq_ignore_ascii_case(&r.name) {
        return false;
    }
    let this = *nth;
    *nth += 1;
    r.occurrence.is_none_or(|o| o == this)
}

/// Applies header edits to a message (CRLF lines); the body is untouched.
pub fn apply_headers(data: &[u8], edits: &[wit::HeaderEdit]) -> Vec<u8> {
    if edits.is_empty() {
        return data.to_vec();
    }
    let (mut fields, rest) = split(data);
    let mut top: Vec<Field> = Vec::new();
    for e in edits {
        match e {
            wit::HeaderEdit::Append(h) => fields.push(field(&h.name, &h.value)),
            wit::HeaderEdit::Prepend(h) => top.insert(0, field(&h.name, &h.value)),
            wit::HeaderEdit::Remove(r) => {
                let mut nth = 0;
                fields.retain(|f| !selected(f, r, &mut nth));
            }
            wit::HeaderEdit::Replace(r) => {
                let mut nth = 0;
                for f in fields.iter_mut() {
                    if selected(f, &r.target, &mut nth) {
                        *f = field(&f.name.clone(), &r.value);
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(data.len() + 256);
    for f in top.iter().chain(fields.iter()) {
        out.extend_from_slice(&f.raw);
    }
    if rest.is_empty() && !data.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(rest);
    out
}

/// Applies recipient edits to an envelope's recipients (no duplicates are added).
pub fn apply_recipients(rcpts: &mut Vec<String>, edits: &[wit::RecipientEdit]) {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    for e in edits {
        match e {
            wit::RecipientEdit::Add(a) => {
                let a = address_text(a);
                if !rcpts.iter().any(|r| same(r, &a)) {
                    rcpts.push(a);
                }
            }
            wit::RecipientEdit::Remove(a) => {
                let a = address_text(a);
                rcpts.retain(|r| !same(r, &a));
            }
            wit::RecipientEdit::Rewrite(rw) => {
                let (from, to) = (address_text(&rw.original), address_text(&rw.replacement));
                let had = rcpts.iter().any(|r| same(r, &from));
                rcpts.retain(|r| !same(r, &from));
                if had && !rcpts.iter().any(|r| same(r, &to)) {
                    rcpts.push(to);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::convert::address;
    use super::*;

    fn h(n: &str, v: &str) -> wit::Header {
        wit::Header {
            name: n.into(),
            value: v.into(),
        }
    }

    #[test]
    fn header_edits_apply_in_order() {
        let msg = b"Received: x\r\nSubject: s\r\nX-Spam: 1\r\n folded\r\nX-Spam: 2\r\n\r\nbody\r\n";
        let out = apply_headers(
            msg,
            &[
                wit::HeaderEdit::Prepend(h("X-Top", "t")),
                wit::HeaderEdit::Append(h("X-End", "e")),
                wit::HeaderEdit::Remove(wit::HeaderRef {
                    name: "x-spam".into(),
                    occurrence: Some(0),
                }),
                wit::HeaderEdit::Replace(wit::HeaderReplace {
                    target: wit::HeaderRef {
                        name: "Subject".into(),
                        occurrence: None,
                    },
                    value: "new".into(),
                }),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Top: t\r\nReceived: x\r\nSubject: new\r\nX-Spam: 2\r\nX-End: e\r\n\r\nbody\r\n"
        );
        assert_eq!(
            apply_headers(b"A: 1\r\n", &[wit::HeaderEdit::Append(h("B", "2"))]),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
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
                wit::RecipientEdit::Add(address("archive@x.test")),
                wit::RecipientEdit::Add(address("A@x.test")),
                wit::RecipientEdit::Remove(address("b@x.test")),
                wit::RecipientEdit::Rewrite(wit::AddressRewrite {
                    original: address("a@x.test"),
                    replacement: address("c@x.test"),
                }),
            ],
        );
        assert_eq!(r, vec!["archive@x.test", "c@x.test"]);
    }
}
