//! URLs in a message's text and HTML: found, normalised (scheme and host lowercased,
//! trailing punctuation and fragments dropped), and the registered domain of each host
//! (the Public Suffix List's, as URIBLs want it: `www.a.example.co.uk` → `example.co.uk`).

/// Most URLs taken from one message.
pub const MAX_URLS: usize = 200;

/// One URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// Normalised text (`https://host/path?query`).
    pub text: String,
    /// The host, lowercase, without a trailing dot or port.
    pub host: String,
}

impl Url {
    /// The registered domain of the host; `None` for an IP address or a bare suffix.
    pub fn registered_domain(&self) -> Option<String> {
        if self.host.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        psl::domain_str(&self.host).map(str::to_string)
    }
}

/// Characters that end a URL written in plain text.
fn ends_url(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '<' | '>' | '"' | '\'' | '`' | '{' | '}' | '|' | '\\' | '^'
        )
}

/// The URLs in `text` (`http://`, `https://` and `www.` forms, also inside HTML
/// attributes), normalised and without duplicates, at most [`MAX_URLS`]. One pass over
/// the text with `memchr` for the two bytes a URL start is recognised by (the `:` of
/// `://` and the `.` of `www.`); only those positions are looked at closer.
pub fn find(text: &str, out: &mut Vec<Url>) {
    let b = text.as_bytes();
    let is = |from: usize, to: usize, p: &[u8]| b[from..to].eq_ignore_ascii_case(p);
    // Where the previous URL ended: a start before it is inside that URL.
    let mut done = 0;
    for p in memchr::memchr2_iter(b':', b'.', b) {
        if out.len() >= MAX_URLS {
            break;
        }
        let start = if b[p] == b':' {
            if b.len() < p + 3 || &b[p + 1..p + 3] != b"//" {
                continue;
            }
            if p >= 5 && is(p - 5, p, b"https") {
                p - 5
            } else if p >= 4 && is(p - 4, p, b"http") {
                p - 4
            } else {
                continue;
            }
        } else if p >= 3
            && is(p - 3, p, b"www")
            // Where a URL can start: not inside a word, nor after the `//` of a URL.
            && (p == 3 || ends_url(b[p - 4] as char))
        {
            p - 3
        } else {
            continue;
        };
        if start < done {
            continue;
        }
        let end = text[p..].find(ends_url).map_or(b.len(), |e| p + e);
        if let Some(url) = normalise(&text[start..end])
            && !out.contains(&url)
        {
            out.push(url);
        }
        done = end.max(p + 1);
    }
}

/// `raw` as a [`Url`], if it has a host.
pub fn normalise(raw: &str) -> Option<Url> {
    let raw = raw.trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '\'', '"']);
    let (scheme, rest) = match raw.find("://") {
        Some(i) => (raw[..i].to_ascii_lowercase(), &raw[i + 3..]),
        None => ("http".to_string(), raw),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // user:password@host:port
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if host_port.starts_with('[') {
        host_port
            .split(']')
            .next()
            .unwrap_or_default()
            .trim_start_matches('[')
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let host = decode_percent(host).to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_string();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        && (host.contains('.') || host.contains(':'));
    if !valid {
        return None;
    }
    Some(Url {
        text: format!("{scheme}://{host}{path}"),
        host,
    })
}

/// `%XX` escapes decoded (hosts are sometimes written `%65xample.com` to dodge filters).
fn decode_percent(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(text: &str) -> Vec<String> {
        let mut out = vec![];
        find(text, &mut out);
        out.into_iter().map(|u| u.text).collect()
    }

    #[test]
    fn urls_are_found_and_normalised() {
        assert_eq!(
            urls("See HTTPS://Example.COM/a?b=1#frag, or www.Test.org."),
            vec!["https://example.com/a?b=1", "http://www.test.org"]
        );
        assert_eq!(
            urls(r#"<a href="http://user:pw@%65vil.example:8080/x">x</a>"#),
            vec!["http://evil.example/x"]
        );
        assert_eq!(urls("http://a.test http://a.test"), vec!["http://a.test"]);
        assert!(urls("no links, just http:// and www.").is_empty());
        // `www.` inside a word or after `//` is not a second URL.
        assert_eq!(
            urls("xwww.a.test http://www.b.test"),
            vec!["http://www.b.test"]
        );
        assert_eq!(
            urls("naïve café: http://ü.example/x"),
            vec!["http://ü.example/x"]
        );
    }

    #[test]
    fn registered_domains_use_the_suffix_list() {
        let d = |h: &str| normalise(h).unwrap().registered_domain();
        assert_eq!(
            d("http://www.a.example.co.uk/x"),
            Some("example.co.uk".into())
        );
        assert_eq!(d("https://bit.ly/x"), Some("bit.ly".into()));
        assert_eq!(d("http://192.0.2.1/x"), None);
    }
}
