//! The ESMTP extensions a server announces in its EHLO reply.

/// The ESMTP extensions a server announced in its `EHLO` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The server answered `EHLO` (as opposed to only `HELO`).
    pub esmtp: bool,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `SIZE` (RFC 1870) with its limit; `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `CHUNKING` (RFC 3030).
    pub chunking: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// Postfix's `XCLIENT`, with the attribute names it lists (upper case).
    pub xclient: Option<Vec<String>>,
    /// Postfix's `XFORWARD`, with the attribute names it lists (upper case).
    pub xforward: Option<Vec<String>>,
}

impl Extensions {
    /// Parses the lines of a `250` EHLO reply after the first (which is the greeting
    /// line). Unknown keywords are ignored; a malformed `SIZE` value means no limit.
    pub fn parse<S: AsRef<str>>(lines: &[S]) -> Extensions {
        let mut ext = Extensions {
            esmtp: true,
            ..Extensions::default()
        };
        for line in lines {
            let mut words = line.as_ref().split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "CHUNKING" => ext.chunking = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "XCLIENT" => ext.xclient = Some(super::forward::attribute_list(words)),
                "XFORWARD" => ext.xforward = Some(super::forward::attribute_list(words)),
                _ => {}
            }
        }
        ext
    }
}
