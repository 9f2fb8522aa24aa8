//! The message as plugins see it: a host-owned resource with headers parsed once and
//! the body read in bounded chunks (no copy of the whole message into the guest). A
//! message spilled to disk is read from its file; only its header block is in memory,
//! and MIME parsing (parts, text) reads at most [`MAX_MIME`] octets of it.

use std::sync::OnceLock;

use crate::smtp::MessageText;

/// Largest chunk one `read-*` call returns.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Header fields parsed (the rest stay readable through `read-raw`).
pub const MAX_HEADERS: usize = 1000;
/// Longest `text` result.
pub const MAX_TEXT: usize = 1024 * 1024;
/// Octets of a message MIME parsing looks at (`parts`, `read-part`, `text`,
/// `header-decoded`): a larger message's later parts are not seen. Also the most
/// decoded part content kept in all.
pub const MAX_MIME: usize = 4 * 1024 * 1024;
/// MIME leaf parts listed (the rest are not).
pub const MAX_PARTS: usize = 1000;
/// Messages up to this size are MIME-parsed on the calling task (it takes microseconds);
/// larger ones on the blocking pool.
pub const INLINE_MIME: usize = 64 * 1024;

/// A message shared by all plugins of one DATA stage.
#[derive(Debug)]
pub struct ParsedMessage {
    /// Transaction id.
    pub id: String,
    /// End of DATA, ms since the epoch.
    pub received_at_ms: u64,
    /// The text as received.
    pub raw: MessageText,
    /// Offset of the body (after the empty line), or the whole text without one.
    pub body_offset: usize,
    /// Header fields, unfolded.
    pub headers: Vec<(String, String)>,
    mime: OnceLock<Mime>,
}

/// MIME facts computed on first use.
#[derive(Debug, Default)]
struct Mime {
    parts: Vec<Part>,
    text: String,
    decoded: Vec<(String, String)>,
}

/// One MIME leaf part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// `type/subtype`, lowercase.
    pub content_type: String,
    /// `charset` parameter.
    pub charset: Option<String>,
    /// File name, if any.
    pub filename: Option<String>,
    /// Content-Disposition is attachment.
    pub attachment: bool,
    /// Decoded content (empty past [`MAX_MIME`] octets of decoded content in all).
    pub decoded: Vec<u8>,
    /// Size after removing the transfer encoding.
    pub size: u64,
}

/// What the resource table holds for a lent `message`.
#[derive(Clone, Debug)]
pub struct MessageHandle(pub std::sync::Arc<ParsedMessage>);

impl ParsedMessage {
    /// Parses the header block of `raw` (as far as it is in memory: see
    /// [`MessageText::front`]).
    pub fn new(id: String, received_at_ms: u64, raw: MessageText) -> ParsedMessage {
        let (headers, body_offset) = parse_headers(raw.front());
        ParsedMessage {
            id,
            received_at_ms,
            raw,
            body_offset,
            headers,
            mime: OnceLock::new(),
        }
    }

    /// Values of fields named `name`, unfolded.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Values with RFC 2047 encoded-words decoded.
    pub fn header_decoded(&self, name: &str) -> Vec<String> {
        self.mime()
            .decoded
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Octets of the whole text.
    pub fn size(&self) -> usize {
        self.raw.received_len()
    }

    /// Octets of the body.
    pub fn body_size(&self) -> usize {
        self.size() - self.body_offset
    }

    /// Up to `len` octets (at most [`MAX_CHUNK`]) of the whole text from `offset`.
    pub fn read_raw(&self, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let len = (len as usize).min(MAX_CHUNK);
        Ok(self.raw.read_received(offset, len)?.to_vec())
    }

    /// Up to `len` octets (at most [`MAX_CHUNK`]) of the body from `offset`.
    pub fn read_body(&self, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let at = offset.saturating_add(self.body_offset as u64);
        if at > self.size() as u64 {
            return Ok(Vec::new());
        }
        self.read_raw(at, len)
    }

    /// MIME leaf parts.
    pub fn parts(&self) -> &[Part] {
        &self.mime().parts
    }

    /// Readable text, at most `max` octets (cut at a char boundary).
    pub fn text(&self, max: usize) -> String {
        let t = &self.mime().text;
        let mut cut = max.min(MAX_TEXT).min(t.len());
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t[..cut].to_string()
    }

    /// Parses the MIME structure once per message (every plugin of the stage shares
    /// it): a message over [`INLINE_MIME`] on the blocking pool, so a huge or deeply
    /// split message never holds up a runtime worker; either way the time it takes
    /// counts against the calling plugin's deadline (the call that waits is under it).
    pub async fn parse_mime(self: &std::sync::Arc<Self>) {
        if self.mime.get().is_some() {
            return;
        }
        // A small message is parsed where it is: handing it to the blocking pool would
        // cost more than parsing it.
        if self.raw.received_len() <= INLINE_MIME {
            self.mime();
            return;
        }
        let me = std::sync::Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            me.mime();
        })
        .await;
    }

    fn mime(&self) -> &Mime {
        self.mime.get_or_init(|| match self.raw.read_received(0, MAX_MIME) {
            Ok(bytes) => mime(&bytes),
            Err(e) => {
                tracing::warn!(msg = %self.id, error = %e, "cannot read the spilled message for MIME parsing");
                Mime::default()
            }
        })
    }
}

/// `bytes[offset..offset+len]` within bounds and the chunk cap.
pub fn chunk(bytes: &[u8], offset: u64, len: u32) -> Vec<u8> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start
        .saturating_add((len as usize).min(MAX_CHUNK))
        .min(bytes.len());
    bytes[start..end].to_vec()
}

/// The header fields of `raw` and where its body starts. For a spilled message `raw` is
/// its first lines only; a header block longer than that ends there for plugins (the
/// rest of it reads as body).
fn parse_headers(raw: &[u8]) -> (Vec<(String, String)>, usize) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    // Bounded by the message length: each pass consumes one line.
    while pos < raw.len() {
        let end = raw[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i)
            .unwrap_or(raw.len());
        let line = &raw[pos..end];
        let next = (end + 2).min(raw.len());
        if line.is_empty() {
            return (headers, next);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = headers.last_mut() {
                last.1.push_str(&String::from_utf8_lossy(line));
            }
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            if headers.len() < MAX_HEADERS {
                let name = String::from_utf8_lossy(&line[..colon])
                    .trim_end()
                    .to_string();
                let value = String::from_utf8_lossy(&line[colon + 1..]);
                headers.push((name, value.trim_start().to_string()));
            }
        } else {
            // Not a header line: the header block ended without an empty line.
            return (headers, pos);
        }
        pos = next;
    }
    (headers, raw.len())
}

fn mime(raw: &[u8]) -> Mime {
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Mime::default();
    };
    let decoded = msg
        .headers()
        .iter()
        .map(|h| {
            let v = match h.value() {
                mail_parser::HeaderValue::Text(t) => t.to_string(),
                mail_parser::HeaderValue::TextList(l) => l.join(", "),
                _ => String::from_utf8_lossy(
                    &raw[h.offset_start() as usize..h.offset_end() as usize],
                )
                .trim()
                .to_string(),
            };
            (h.name().to_string(), v)
        })
        .collect();
    let mut parts = Vec::new();
    let mut kept = 0usize;
    for p in msg.parts.iter() {
        if matches!(p.body, PartType::Multipart(_)) {
            continue;
        }
        if parts.len() >= MAX_PARTS {
            break;
        }
        let contents = p.contents();
        let decoded = if kept + contents.len() <= MAX_MIME {
            kept += contents.len();
            contents.to_vec()
        } else {
            Vec::new()
        };
        let ct = p.content_type();
        let content_type = ct
            .map(|c| {
                format!("{}/{}", c.ctype(), c.subtype().unwrap_or("plain")).to_ascii_lowercase()
            })
            .unwrap_or_else(|| "text/plain".into());
        parts.push(Part {
            content_type,
            charset: ct
                .and_then(|c| c.attribute("charset"))
                .map(|s| s.to_ascii_lowercase()),
            filename: p.attachment_name().map(str::to_string),
            attachment: p.content_disposition().is_some_and(|d| d.is_attachment()),
            decoded,
            size: contents.len() as u64,
        });
    }
    let mut text = String::new();
    for i in 0..msg.text_body_count() {
        if let Some(t) = msg.body_text(i) {
            text.push_str(&t);
            if text.len() > MAX_TEXT {
                break;
            }
        }
    }
    Mime {
        parts,
        text,
        decoded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(raw: &str) -> ParsedMessage {
        ParsedMessage::new("S.1".into(), 0, MessageText::new(raw.as_bytes().to_vec()))
    }

    #[test]
    fn headers_unfolded_and_body_found() {
        let m = msg("Subject: one\r\n two\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\n");
        assert_eq!(m.header("subject"), vec!["one two"]);
        assert_eq!(m.header("X-A"), vec!["1", "2"]);
        assert_eq!(m.read_body(0, 100).unwrap(), b"body\r\n");
        let m = msg("no header here\r\n");
        assert!(m.headers.is_empty());
        assert_eq!(m.read_body(0, 100).unwrap(), b"no header here\r\n");
    }

    #[test]
    fn decoded_headers_parts_and_text() {
        let raw = "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n--b\r\nContent-Type: application/pdf; name=x.pdf\r\nContent-Disposition: attachment; filename=x.pdf\r\n\r\nPDF\r\n--b--\r\n";
        let m = msg(raw);
        assert_eq!(m.header_decoded("subject"), vec!["grüße"]);
        let parts = m.parts();
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0].content_type, "text/plain");
        assert_eq!(parts[0].decoded, b"hello world");
        assert!(parts[1].attachment);
        assert_eq!(parts[1].filename.as_deref(), Some("x.pdf"));
        assert_eq!(m.text(5), "hello");
    }

    #[test]
    fn chunks_are_bounded() {
        let b = vec![7u8; 200_000];
        assert_eq!(chunk(&b, 0, u32::MAX).len(), MAX_CHUNK);
        assert_eq!(chunk(&b, 199_990, 100).len(), 10);
        assert!(chunk(&b, u64::MAX, 10).is_empty());
    }
}
