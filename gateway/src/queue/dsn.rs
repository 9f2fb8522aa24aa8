//! Delivery status notifications: bounces and delay warnings (RFC 3464).
//!
//! [`build`] turns a [`DsnRequest`] into a complete RFC 5322 message addressed to the
//! original envelope sender. The message is an RFC 6522 (formerly RFC 3462)
//! `multipart/report; report-type=delivery-status` with three parts:
//!
//! 1. `text/plain; charset=utf-8`: a human explanation in the style of Postfix ("This is
//!    the mail system at host ...") followed by one `<address>: diagnostic` line per
//!    recipient, failed recipients and delayed recipients in separate sections.
//! 2. `message/delivery-status`: the machine-readable report. Per-message fields
//!    (`Reporting-MTA`, `X-Mailgate-Queue-ID`, `Arrival-Date`), then for every recipient a
//!    blank line and `Final-Recipient`, `Action`, `Status`, and when known `Remote-MTA`,
//!    `Diagnostic-Code`, `Last-Attempt-Date` and (delayed only) `Will-Retry-Until`.
//! 3. `text/rfc822-headers`: the header section of the original message, never its body,
//!    capped at 64 KiB (cut at a line boundary).
//!
//! The top-level header carries `Auto-Submitted: auto-replied` (RFC 3834) so that
//! well-behaved responders do not answer the bounce.
//!
//! # Sanitising
//!
//! Everything that comes from outside (addresses, the remote server's reply, the remote
//! MTA name, the queue id, the configured host name) is cleaned before it is written:
//!
//! - control characters (CR, LF, NUL, TAB, DEL, C1 controls) and other white space become
//!   single spaces, so a multi-line SMTP reply is joined into one line and nothing taken
//!   from outside can end a header line or start a new header;
//! - addresses lose `<` and `>` (they are written inside angle brackets) and are cut to
//!   512 octets; host names keep only `A-Z a-z 0-9 . - _ : [ ]`; the queue id in the
//!   `Message-ID` keeps only `A-Z a-z 0-9 . - _`;
//! - the delivery-status part is 7-bit as RFC 3464 requires: a non-ASCII recipient gets
//!   address type `utf-8` (RFC 6533) written as `utf-8-addr-xtext` (`\x{HEX}`), and other
//!   non-ASCII characters there become `?` (the text part keeps them, it is UTF-8);
//! - long values are folded between words (continuation lines start with white space) and
//!   words too long for one line are split, so no line exceeds 998 octets; the original
//!   header section is normalised to CRLF (bare CR and NUL become spaces) and its lines
//!   are cut at 998 octets;
//! - the MIME boundary is derived from [`DsnRequest::boundary_seed`] and, should the
//!   content happen to contain it, extended until it no longer occurs anywhere in it.
//!
//! The output uses CRLF line endings only. This module does no I/O.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::delivery::received::rfc5322_date;

/// Hard line length limit of RFC 5322 2.1.1 (octets, without the CRLF).
const HARD_LINE: usize = 998;

/// Soft line length limit of RFC 5322 2.1.1: values are folded here when possible.
const SOFT_LINE: usize = 78;

/// Largest header section of the original message returned in part 3.
const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;

/// Longest address copied (RFC 5321 allows 256 octets for a path).
const MAX_ADDRESS: usize = 512;

/// Longest host name copied.
const MAX_HOST: usize = 255;

/// Longest queue id copied.
const MAX_ID: usize = 64;

/// Longest diagnostic text copied per recipient.
const MAX_DIAGNOSTIC: usize = 16 * 1024;

/// Longest MIME boundary allowed by RFC 2046.
const MAX_BOUNDARY: usize = 70;

/// What happened to a recipient (the RFC 3464 `Action` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Delivery failed permanently (or the message expired); the message is returned.
    Failed,
    /// Delivery has not succeeded yet and will be retried; this is only a warning.
    Delayed,
}

impl Action {
    /// The `Action` field value: `failed` or `delayed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }

    /// The status code used when the caller's is not a valid enhanced status code.
    fn default_status(self) -> &'static str {
        match self {
            Action::Failed => "5.0.0",
            Action::Delayed => "4.0.0",
        }
    }
}

/// One recipient reported on in a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct DsnRecipient {
    /// The recipient address as given in `RCPT TO` (without angle brackets). A non-ASCII
    /// (SMTPUTF8) address is reported with address type `utf-8` (RFC 6533), others with
    /// `rfc822`.
    pub address: String,
    /// Whether delivery failed or is delayed.
    pub action: Action,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1` or `4.4.1`. A value that is not of
    /// the form `c.d.d` (class 2, 4 or 5; one to three digits each for subject and
    /// detail) is replaced by `5.0.0` for [`Action::Failed`] and `4.0.0` for
    /// [`Action::Delayed`].
    pub status: String,
    /// Host name or address literal (`[192.0.2.1]`) of the server that answered, if any.
    pub remote_mta: Option<String>,
    /// The remote server's reply, e.g. `550 5.1.1 <x@y>: User unknown`; the lines of a
    /// multi-line reply may be joined with `\n` (they are joined with spaces on output).
    pub diagnostic: Option<String>,
    /// When delivery to this recipient was last attempted.
    pub last_attempt: Option<SystemTime>,
    /// For [`Action::Delayed`]: until when delivery will keep being retried.
    pub will_retry_until: Option<SystemTime>,
}

/// Everything needed to build one notification.
#[derive(Debug, Clone, Copy)]
pub struct DsnRequest<'a> {
    /// This gateway's host name, e.g. `mx.example.test` (`Reporting-MTA`, `From`).
    pub reporting_mta: &'a str,
    /// The original envelope sender, who receives the notification. Never empty (a
    /// message with the null sender is never bounced; the caller ensures this).
    pub sender: &'a str,
    /// The queue id of the original message (`X-Mailgate-Queue-ID`, `Message-ID`).
    pub queue_id: &'a str,
    /// When the original message was received (`Arrival-Date`).
    pub arrival: SystemTime,
    /// The recipients reported on; a notification normally covers all failed or delayed
    /// recipients of one message.
    pub recipients: &'a [DsnRecipient],
    /// The original message (CRLF line endings). Only its header section is returned.
    pub original: &'a [u8],
    /// The current time (`Date`).
    pub now: SystemTime,
    /// Makes the MIME boundary and `Message-ID` unique; pass a random value (tests pass a
    /// fixed one for reproducible output).
    pub boundary_seed: u64,
}

/// Builds the notification described by `req`: a complete RFC 5322 message (header and
/// body) with CRLF line endings and no line longer than 998 octets, ready to be queued
/// for delivery to `req.sender` with the null reverse path.
#[must_use]
pub fn build(req: &DsnRequest<'_>) -> Vec<u8> {
    let host = sanitize_host(req.reporting_mta).unwrap_or_else(|| "localhost".to_string());
    let any_failed = req.recipients.iter().any(|r| r.action == Action::Failed);

    let text = human_part(req, &host);
    let status = status_part(req, &host);
    let headers = original_headers(req.original);
    let boundary = pick_boundary(
        req.boundary_seed,
        &[text.as_bytes(), status.as_bytes(), &headers],
    );
    let text_8bit = !text.is_ascii();
    let headers_8bit = !headers.is_ascii();

    let mut top = String::with_capacity(1024);
    let subject = if any_failed {
        "Undelivered Mail Returned to Sender"
    } else {
        "Delayed Mail (still being retried)"
    };
    let fields = [
        (
            "From",
            format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
        ),
        ("To", format!("<{}>", sanitize_address(req.sender))),
        ("Subject", subject.to_string()),
        ("Date", rfc5322_date(req.now)),
        (
            "Message-ID",
            format!(
                "<dsn.{}.{:016x}@{host}>",
                msg_id_token(req.queue_id),
                req.boundary_seed
            ),
        ),
        ("Auto-Submitted", "auto-replied".to_string()),
        ("MIME-Version", "1.0".to_string()),
        (
            "Content-Type",
            format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
        ),
    ];
    for (name, value) in &fields {
        field(&mut top, name, value);
    }
    if text_8bit || headers_8bit {
        field(&mut top, "Content-Transfer-Encoding", "8bit");
    }
    top.push_str("\r\nThis is a MIME-encapsulated message.\r\n");

    let cte = |eight: bool| if eight { "8bit" } else { "7bit" };
    let _ = write!(
        top,
        "\r\n--{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: {}\r\n\r\n\
         {text}\
         \r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n\
         {status}\
         \r\n--{boundary}\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\
         Content-Transfer-Encoding: {}\r\n\r\n",
        cte(text_8bit),
        cte(headers_8bit),
    );

    let mut out = top.into_bytes();
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Part 1: the explanation for humans, every line ending in CRLF.
fn human_part(req: &DsnRequest<'_>, host: &str) -> String {
    let mut t = String::with_capacity(1024);
    wrap(
        &mut t,
        &format!("This is the mail system at host {host}."),
        "    ",
    );
    t.push_str("\r\n");

    let line = |t: &mut String, r: &DsnRecipient| {
        let detail = r
            .diagnostic
            .as_deref()
            .map(|d| one_line(d, MAX_DIAGNOSTIC))
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| status_code(r).to_string());
        wrap(
            t,
            &format!("<{}>: {detail}", sanitize_address(&r.address)),
            "    ",
        );
    };

    let failed = || req.recipients.iter().filter(|r| r.action == Action::Failed);
    let delayed = || {
        req.recipients
            .iter()
            .filter(|r| r.action == Action::Delayed)
    };

    if failed().next().is_some() {
        t.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. The headers of your\r\n\
             message are attached below.\r\n\
             \r\n\
             For further assistance, please send mail to postmaster.\r\n\
             \r\n\
             If you do so, please include this problem report.\r\n\
             \r\n\
             \x20                  The mail system\r\n\
             \r\n",
        );
        for r in failed() {
            line(&mut t, r);
        }
    }

    if delayed().next().is_some() {
        if failed().next().is_some() {
            t.push_str("\r\n");
        }
        t.push_str(
            "####################################################################\r\n\
             # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
             ####################################################################\r\n\
             \r\n",
        );
        let until = delayed().filter_map(|r| r.will_retry_until).max();
        t.push_str(
            "Your message could not be delivered yet to the recipients\r\n\
             listed below. The mail system will keep trying to deliver it.\r\n",
        );
        if let Some(until) = until {
            // Our own text and date: one line of at most 57 characters.
            let _ = write!(t, "It will be retried until {}.\r\n", rfc5322_date(until));
        }
        t.push_str("\r\n");
        for r in delayed() {
            line(&mut t, r);
        }
    }
    t
}

/// Part 2: the `message/delivery-status` body (7-bit), every line ending in CRLF.
fn status_part(req: &DsnRequest<'_>, host: &str) -> String {
    let mut s = String::with_capacity(512 * (1 + req.recipients.len()));
    field(&mut s, "Reporting-MTA", &format!("dns; {host}"));
    let queue_id = ascii_line(req.queue_id, MAX_ID);
    if !queue_id.is_empty() {
        field(&mut s, "X-Mailgate-Queue-ID", &queue_id);
    }
    field(&mut s, "Arrival-Date", &rfc5322_date(req.arrival));

    for r in req.recipients {
        s.push_str("\r\n");
        let address = sanitize_address(&r.address);
        let final_recipient = if address.is_ascii() {
            format!("rfc822; {address}")
        } else {
            format!("utf-8; {}", utf8_addr_xtext(&address))
        };
        field(&mut s, "Final-Recipient", &final_recipient);
        field(&mut s, "Action", r.action.as_str());
        field(&mut s, "Status", status_code(r));
        if let Some(mta) = r.remote_mta.as_deref().and_then(sanitize_host) {
            field(&mut s, "Remote-MTA", &format!("dns; {mta}"));
        }
        if let Some(diag) = r.diagnostic.as_deref() {
            let diag = ascii_line(diag, MAX_DIAGNOSTIC);
            if !diag.is_empty() {
                field(&mut s, "Diagnostic-Code", &format!("smtp; {diag}"));
            }
        }
        if let Some(at) = r.last_attempt {
            field(&mut s, "Last-Attempt-Date", &rfc5322_date(at));
        }
        if r.action == Action::Delayed
            && let Some(until) = r.will_retry_until
        {
            field(&mut s, "Will-Retry-Until", &rfc5322_date(until));
        }
    }
    s
}

/// Whether `line` can be part of a header section after `fields` field lines: a field
/// (`name:` with a name of printable ASCII) or the continuation of one.
fn header_line(line: &[u8], fields: usize) -> bool {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return fields > 0;
    }
    match line.iter().position(|&b| b == b':') {
        Some(colon) => colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        None => false,
    }
}

/// Part 3: the header section of `original`, and nothing else: its field lines up to
/// the empty line that ends it, stopping early at the first line that is not a header
/// field (a message without a header section returns nothing of its body), normalised
/// to CRLF, with bare CR and NUL turned into spaces and lines cut at 998 octets, at most
/// 64 KiB of whole lines.
fn original_headers(original: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(original.len().min(MAX_ORIGINAL_HEADERS));
    let mut rest = original;
    let mut fields = 0;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() && !header_line(line, fields) {
            out.extend_from_slice(b"\r\n");
            break;
        }
        fields += 1;
        let mut cut = line.len().min(HARD_LINE);
        // Do not split a UTF-8 sequence (at most three continuation bytes to back over).
        let floor = cut.saturating_sub(3);
        while cut < line.len() && cut > floor && line[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        if out.len() + cut + 2 > MAX_ORIGINAL_HEADERS {
            break;
        }
        out.extend(
            line[..cut]
                .iter()
                .map(|&b| if b == b'\r' || b == 0 { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
        if line.is_empty() {
            break;
        }
    }
    out
}

/// The MIME boundary: `=_mailgate_{seed as 16 hex digits}`, extended one character at a
/// time while it occurs anywhere in `parts`. Each character is the one that the fewest
/// remaining occurrences continue with, so every step keeps at most 1/36 of them: a few
/// steps always suffice, and the loop is bounded by the 70 character limit anyway.
fn pick_boundary(seed: u64, parts: &[&[u8]]) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut boundary = format!("=_mailgate_{seed:016x}");
    let needle = boundary.as_bytes();
    let mut hits: Vec<(usize, usize)> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if part.len() >= needle.len() {
            hits.extend(
                (0..=part.len() - needle.len())
                    .filter(|&pos| part[pos..].starts_with(needle))
                    .map(|pos| (i, pos)),
            );
        }
    }
    while !hits.is_empty() && boundary.len() < MAX_BOUNDARY {
        let len = boundary.len();
        let next = |&(i, pos): &(usize, usize)| parts[i].get(pos + len).copied();
        let best = ALPHABET
            .iter()
            .copied()
            .min_by_key(|&c| hits.iter().filter(|h| next(h) == Some(c)).count())
            .unwrap_or(b'0');
        hits.retain(|h| next(h) == Some(best));
        boundary.push(char::from(best));
    }
    boundary
}

/// The recipient's status code, or the default for its action if it is not valid.
fn status_code(r: &DsnRecipient) -> &str {
    let s = r.status.trim();
    if valid_status(s) {
        s
    } else {
        r.action.default_status()
    }
}

/// `class "." subject "." detail` of RFC 3463: class 2, 4 or 5, 1 to 3 digits each.
fn valid_status(s: &str) -> bool {
    let mut it = s.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return false;
    };
    matches!(class, "2" | "4" | "5")
        && [subject, detail]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Appends the header field `name: value`, folded (see [`wrap`]).
fn field(out: &mut String, name: &str, value: &str) {
    wrap(out, &format!("{name}: {value}"), " ");
}

/// Appends `text` (already one line, see [`one_line`]) followed by CRLF, broken between
/// words so that lines stay within 78 octets where possible; continuation lines start
/// with `indent`. A word that does not fit in 998 octets is split (at a character
/// boundary), so no line ever exceeds 998 octets. Runs of spaces are collapsed.
fn wrap(out: &mut String, text: &str, indent: &str) {
    debug_assert!(indent.len() < SOFT_LINE);
    let mut line_len = 0usize;
    let mut at_start = true; // nothing but the indent on the current line yet
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !at_start && line_len + 1 + word.len() > SOFT_LINE {
            out.push_str("\r\n");
            out.push_str(indent);
            line_len = indent.len();
            at_start = true;
        }
        let mut word = word;
        loop {
            let sep = usize::from(!at_start);
            if line_len + sep + word.len() <= HARD_LINE {
                if sep == 1 {
                    out.push(' ');
                }
                out.push_str(word);
                line_len += sep + word.len();
                at_start = false;
                break;
            }
            // Only reached at the start of a line (a word that fits after another one is
            // within the soft limit), so there is room for at least one character.
            let room = HARD_LINE - line_len - sep;
            let mut cut = word.floor_char_boundary(room);
            if cut == 0 {
                cut = word.ceil_char_boundary(1);
            }
            if sep == 1 {
                out.push(' ');
            }
            out.push_str(&word[..cut]);
            out.push_str("\r\n");
            out.push_str(indent);
            line_len = indent.len();
            at_start = true;
            word = &word[cut..];
            if word.is_empty() {
                break;
            }
        }
    }
    out.push_str("\r\n");
}

/// One line of text from `s`: control characters and other white space become spaces,
/// runs of them a single space, leading and trailing ones dropped; at most `max` octets.
fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut space = false;
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if out.len() + usize::from(space) + c.len_utf8() > max {
            break;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    out
}

/// [`one_line`] restricted to US-ASCII: other characters become `?`.
fn ascii_line(s: &str, max: usize) -> String {
    one_line(s, max)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// An address to be written between angle brackets: [`one_line`] without `<` and `>`.
fn sanitize_address(s: &str) -> String {
    one_line(&s.replace(['<', '>'], " "), MAX_ADDRESS)
}

/// A host name or address literal: only `A-Z a-z 0-9 . - _ : [ ]` (anything else becomes
/// `_`), at most 255 characters; `None` if nothing is left.
fn sanitize_host(s: &str) -> Option<String> {
    let host: String = s
        .trim()
        .chars()
        .take(MAX_HOST)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']') {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!host.is_empty()).then_some(host)
}

/// The queue id as a dot-atom fragment for the `Message-ID`: only `A-Z a-z 0-9 - _`
/// and single inner dots; `unknown` if nothing is left.
fn msg_id_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_ID));
    for c in s.chars() {
        if out.len() >= MAX_ID {
            break;
        }
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
            out.push(c);
        } else if c == '.' && !out.is_empty() && !out.ends_with('.') {
            out.push('.');
        }
    }
    while out.ends_with('.') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

/// The 7-bit `utf-8-addr-xtext` form of RFC 6533 3: printable ASCII except `+`, `=` and
/// `\` as is, every other character as `\x{HEX}` (upper case, no leading zeros).
fn utf8_addr_xtext(addr: &str) -> String {
    let mut out = String::with_capacity(addr.len() * 2);
    for c in addr.chars() {
        if matches!(c, '\x21'..='\x2a' | '\x2c'..='\x3c' | '\x3e'..='\x5b' | '\x5d'..='\x7e') {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

    use super::*;

    const SEED: u64 = 0xdead_beef;
    const ORIGINAL: &[u8] = b"From: Alice <alice@origin.test>\r\n\
        To: bob@dest.test\r\n\
        Subject: Lunch\r\n\
        Message-ID: <orig.1@origin.test>\r\n\
        \r\n\
        SECRET BODY LINE\r\n";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn failed(address: &str, status: &str, diagnostic: Option<&str>) -> DsnRecipient {
        DsnRecipient {
            address: address.into(),
            action: Action::Failed,
            status: status.into(),
            remote_mta: Some("mx.dest.test".into()),
            diagnostic: diagnostic.map(str::to_string),
            last_attempt: Some(at(1_795_417_200)),
            will_retry_until: None,
        }
    }

    fn delayed(address: &str) -> DsnRecipient {
        DsnRecipient {
            address: address.into(),
            action: Action::Delayed,
            status: "4.4.1".into(),
            remote_mta: None,
            diagnostic: Some("connect to mx.slow.test: Connection timed out".into()),
            last_attempt: Some(at(1_795_417_200)),
            // 2026-11-28T07:00:00Z
            will_retry_until: Some(at(1_795_849_200)),
        }
    }

    fn build_with(sender: &str, recipients: &[DsnRecipient], original: &[u8]) -> Vec<u8> {
        build(&DsnRequest {
            reporting_mta: "mx.example.test",
            sender,
            queue_id: "Q1",
            arrival: at(1_795_413_600),
            recipients,
            original,
            now: at(1_795_420_800),
            boundary_seed: SEED,
        })
    }

    /// CRLF only, every line within 998 octets, ends with CRLF.
    fn assert_wire_clean(out: &[u8]) {
        assert!(out.ends_with(b"\r\n"));
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
            }
        }
        for line in out[..out.len() - 2].split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(line.len() <= HARD_LINE, "line of {} octets", line.len());
        }
    }

    fn parse(out: &[u8]) -> Message<'_> {
        MessageParser::default().parse(out).expect("parses")
    }

    /// The three leaf parts (the root multipart is `parts[0]`).
    fn leaves<'a>(msg: &'a Message<'a>) -> Vec<&'a mail_parser::MessagePart<'a>> {
        assert!(matches!(msg.parts[0].body, PartType::Multipart(_)));
        msg.parts[1..].iter().collect()
    }

    fn content_type(part: &mail_parser::MessagePart<'_>) -> String {
        let ct = part.content_type().expect("content type");
        format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
    }

    fn text_of(part: &mail_parser::MessagePart<'_>) -> String {
        String::from_utf8(part.contents().to_vec()).expect("utf-8")
    }

    fn header<'a>(msg: &'a Message<'a>, name: &'a str) -> &'a str {
        msg.header_raw(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .trim()
    }

    #[test]
    fn bounce_has_report_structure_and_fields() {
        let rcpts = [failed(
            "bob@dest.test",
            "5.1.1",
            Some("550 5.1.1 <bob@dest.test>: User unknown"),
        )];
        let out = build_with("alice@origin.test", &rcpts, ORIGINAL);
        assert_wire_clean(&out);
        let msg = parse(&out);

        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        assert_eq!(header(&msg, "Auto-Submitted"), "auto-replied");
        assert_eq!(header(&msg, "MIME-Version"), "1.0");
        assert_eq!(
            msg.to().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("alice@origin.test")
        );
        let from = msg.from().and_then(|a| a.first()).expect("from");
        assert_eq!(from.address(), Some("MAILER-DAEMON@mx.example.test"));
        assert_eq!(from.name(), Some("Mail Delivery System"));
        assert_eq!(
            msg.message_id(),
            Some("dsn.Q1.00000000deadbeef@mx.example.test")
        );
        assert_eq!(header(&msg, "Date"), "Mon, 23 Nov 2026 08:00:00 +0000");

        let ct = msg.content_type().expect("content type");
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(
            ct.attribute("boundary"),
            Some("=_mailgate_00000000deadbeef")
        );

        let parts = leaves(&msg);
        assert_eq!(parts.len(), 3);
        assert_eq!(content_type(parts[0]), "text/plain");
        assert_eq!(
            parts[0].content_type().and_then(|c| c.attribute("charset")),
            Some("utf-8")
        );
        assert_eq!(content_type(parts[1]), "message/delivery-status");
        assert_eq!(content_type(parts[2]), "text/rfc822-headers");

        let human = text_of(parts[0]);
        assert!(
            human.starts_with("This is the mail system at host mx.example.test."),
            "{human}"
        );
        assert!(human.contains("could not\r\nbe delivered"), "{human}");
        assert!(
            human.contains("<bob@dest.test>: 550 5.1.1 <bob@dest.test>: User unknown\r\n"),
            "{human}"
        );
        assert!(!human.contains("WARNING"), "{human}");

        let status = text_of(parts[1]);
        assert_eq!(
            status,
            "Reporting-MTA: dns; mx.example.test\r\n\
             X-Mailgate-Queue-ID: Q1\r\n\
             Arrival-Date: Mon, 23 Nov 2026 06:00:00 +0000\r\n\
             \r\n\
             Final-Recipient: rfc822; bob@dest.test\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; mx.dest.test\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <bob@dest.test>: User unknown\r\n\
             Last-Attempt-Date: Mon, 23 Nov 2026 07:00:00 +0000\r\n"
        );
    }

    #[test]
    fn delay_warning_says_until_when() {
        let rcpts = [delayed("carol@slow.test")];
        let out = build_with("alice@origin.test", &rcpts, ORIGINAL);
        assert_wire_clean(&out);
        let msg = parse(&out);
        assert_eq!(msg.subject(), Some("Delayed Mail (still being retried)"));
        assert_eq!(header(&msg, "Auto-Submitted"), "auto-replied");
        let parts = leaves(&msg);
        assert_eq!(parts.len(), 3);

        let human = text_of(parts[0]);
        assert!(human.contains("THIS IS A WARNING ONLY"), "{human}");
        assert!(!human.contains("I'm sorry"), "{human}");
        assert!(
            human.contains("\r\nIt will be retried until Sat, 28 Nov 2026 07:00:00 +0000.\r\n"),
            "{human}"
        );
        assert!(
            human.contains("<carol@slow.test>: connect to mx.slow.test: Connection timed out\r\n"),
            "{human}"
        );

        let status = text_of(parts[1]);
        assert!(
            status.ends_with(
                "\r\n\r\nFinal-Recipient: rfc822; carol@slow.test\r\n\
                 Action: delayed\r\n\
                 Status: 4.4.1\r\n\
                 Diagnostic-Code: smtp; connect to mx.slow.test: Connection timed out\r\n\
                 Last-Attempt-Date: Mon, 23 Nov 2026 07:00:00 +0000\r\n\
                 Will-Retry-Until: Sat, 28 Nov 2026 07:00:00 +0000\r\n"
            ),
            "{status}"
        );
        assert!(!status.contains("Remote-MTA"), "{status}");
    }

    #[test]
    fn mixed_report_has_one_block_per_recipient() {
        let mut no_diag = failed("dave@dest.test", "5.2.2", None);
        no_diag.remote_mta = None;
        no_diag.last_attempt = None;
        no_diag.will_retry_until = Some(at(1)); // ignored for a failed recipient
        let rcpts = [
            failed("bob@dest.test", "5.1.1", Some("550 5.1.1 unknown")),
            delayed("carol@slow.test"),
            no_diag,
        ];
        let out = build_with("alice@origin.test", &rcpts, ORIGINAL);
        assert_wire_clean(&out);
        let msg = parse(&out);
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let parts = leaves(&msg);

        let human = text_of(parts[0]);
        let sorry = human.find("I'm sorry").expect("failure section");
        let warning = human.find("WARNING ONLY").expect("delay section");
        let bob = human
            .find("<bob@dest.test>: 550 5.1.1 unknown")
            .expect("bob");
        let dave = human.find("<dave@dest.test>: 5.2.2\r\n").expect("dave");
        let carol = human.find("<carol@slow.test>: connect").expect("carol");
        assert!(sorry < bob && bob < dave && dave < warning && warning < carol);

        let status = text_of(parts[1]);
        let blocks: Vec<&str> = status.split("\r\n\r\n").collect();
        assert_eq!(blocks.len(), 4, "{status}");
        assert!(blocks[0].starts_with("Reporting-MTA: dns; mx.example.test\r\n"));
        assert!(blocks[1].starts_with(
            "Final-Recipient: rfc822; bob@dest.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(blocks[2].starts_with(
            "Final-Recipient: rfc822; carol@slow.test\r\nAction: delayed\r\nStatus: 4.4.1\r\n"
        ));
        assert!(blocks[2].contains("Will-Retry-Until: "));
        assert_eq!(
            blocks[3],
            "Final-Recipient: rfc822; dave@dest.test\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        );
        assert_eq!(status.matches("Will-Retry-Until:").count(), 1);
    }

    #[test]
    fn hostile_input_cannot_inject_or_overflow() {
        let long_words = "x".repeat(5000);
        let long_text = "word ".repeat(1000);
        let rcpts = [
            failed(
                "victim@dest.test>\r\nBcc: evil@attacker.test",
                "5.1.1",
                Some("550 bad\r\n\r\nInjected: x\r\n\0X-Evil:\ty"),
            ),
            failed("a@dest.test", "5.1.1", Some(long_words.as_str())),
            failed("b@dest.test", "5.1.1", Some(long_text.as_str())),
            DsnRecipient {
                remote_mta: Some("mx.dest.test\r\nX-Remote-Evil: 1".into()),
                ..delayed("c@dest.test")
            },
        ];
        let out = build(&DsnRequest {
            reporting_mta: "mx.example.test\r\nX-Host-Evil: 1",
            sender: "alice@origin.test>\r\nBcc: evil@attacker.test",
            queue_id: "Q1\r\nX-Queue-Evil: 1",
            arrival: at(0),
            recipients: &rcpts,
            original: ORIGINAL,
            now: at(0),
            boundary_seed: SEED,
        });
        assert_wire_clean(&out);

        // No line anywhere starts a header taken from outside.
        let text = String::from_utf8(out.clone()).unwrap();
        for evil in [
            "Bcc:",
            "Injected:",
            "X-Evil:",
            "X-Remote-Evil:",
            "X-Host-Evil:",
            "X-Queue-Evil:",
        ] {
            assert!(
                !text.split("\r\n").any(|l| l.starts_with(evil)),
                "{evil} starts a line"
            );
        }
        assert!(!text.contains('\0') && !text.contains('\t'));

        let msg = parse(&out);
        assert!(msg.header_raw("Bcc").is_none());
        let to = msg.to().and_then(|a| a.first()).expect("to");
        assert!(
            to.address()
                .unwrap_or_default()
                .starts_with("alice@origin.test"),
            "{to:?}"
        );
        let parts = leaves(&msg);
        assert_eq!(parts.len(), 3);
        let status = text_of(parts[1]);
        assert!(
            status.contains("Diagnostic-Code: smtp; 550 bad Injected: x X-Evil: y\r\n"),
            "{status}"
        );
        assert!(status.contains("Remote-MTA: dns; mx.dest.test__X-Remote-Evil:_1\r\n"));
        // The 5000-character word is split over several continuation lines, losing nothing.
        let unfolded = status.replace("\r\n ", "");
        assert!(
            unfolded.contains(&format!("smtp;{long_words}")),
            "not kept whole"
        );
        assert!(status.contains(&format!("\r\n {}", "x".repeat(900))));
        // The long text is folded between words, within the soft limit.
        let folded: Vec<&str> = status
            .split("\r\n")
            .filter(|l| l.starts_with(" word"))
            .collect();
        assert!(folded.len() > 50);
        assert!(folded.iter().all(|l| l.len() <= SOFT_LINE));
    }

    #[test]
    fn only_the_original_header_section_is_returned() {
        let rcpts = [failed("bob@dest.test", "5.1.1", None)];
        let out = build_with("alice@origin.test", &rcpts, ORIGINAL);
        assert_wire_clean(&out);
        assert!(!out.windows(11).any(|w| w == b"SECRET BODY"));
        let msg = parse(&out);
        let parts = leaves(&msg);
        let headers = text_of(parts[2]);
        assert!(headers.starts_with("From: Alice <alice@origin.test>\r\n"));
        assert!(headers.contains("Subject: Lunch\r\nMessage-ID: <orig.1@origin.test>\r\n"));

        // Without a body (and without a final line break) everything is returned,
        // and bare LF, bare CR and NUL are normalised.
        let odd = b"Subject: a\nX-Bare: b\rc\0d\r\nX-Last: e";
        let out = build_with("alice@origin.test", &rcpts, odd);
        assert_wire_clean(&out);
        let tail = String::from_utf8(out).unwrap();
        assert!(
            tail.ends_with(
                "Content-Type: text/rfc822-headers\r\n\
                 Content-Transfer-Encoding: 7bit\r\n\r\n\
                 Subject: a\r\nX-Bare: b c d\r\nX-Last: e\r\n\
                 \r\n--=_mailgate_00000000deadbeef--\r\n"
            ),
            "{tail}"
        );
    }

    #[test]
    fn a_message_without_a_blank_line_returns_its_fields_only() {
        let mut original = b"Subject: reflected?\r\nX-A: 1\r\n continued\r\n".to_vec();
        for i in 0..800 {
            original.extend_from_slice(format!("body line {i} with no colon\r\n").as_bytes());
        }
        let headers = original_headers(&original);
        assert_eq!(
            headers,
            b"Subject: reflected?\r\nX-A: 1\r\n continued\r\n\r\n"
        );
        assert_eq!(original_headers(b"no header at all\r\nsecond\r\n"), b"\r\n");
        assert_eq!(original_headers(b" starts folded\r\n"), b"\r\n");
    }

    #[test]
    fn original_headers_are_capped_at_whole_lines() {
        let mut original = Vec::new();
        for i in 0..2000 {
            original
                .extend_from_slice(format!("X-Filler-{i:04}: {}\r\n", "f".repeat(80)).as_bytes());
        }
        original.extend_from_slice(b"\r\nbody\r\n");
        let headers = original_headers(&original);
        assert!(headers.len() <= MAX_ORIGINAL_HEADERS);
        assert!(headers.len() > MAX_ORIGINAL_HEADERS - 200);
        assert!(original.starts_with(&headers), "whole lines, unchanged");
        assert!(headers.ends_with(b"\r\n"));

        let rcpts = [failed("bob@dest.test", "5.1.1", None)];
        let out = build_with("alice@origin.test", &rcpts, &original);
        assert_wire_clean(&out);
        let msg = parse(&out);
        let parts = leaves(&msg);
        assert_eq!(parts.len(), 3);
        assert!(text_of(parts[2]).starts_with("X-Filler-0000: "));

        // A single overlong line is cut at 998 octets, at a character boundary.
        let long = format!("X-Long: {}\r\n\r\n", "é".repeat(1000));
        let headers = original_headers(long.as_bytes());
        let first = headers.split(|&b| b == b'\r').next().unwrap();
        assert!(first.len() <= HARD_LINE && first.len() >= HARD_LINE - 3);
        assert!(std::str::from_utf8(&headers).is_ok());
        assert!(headers.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn utf8_recipient_uses_utf8_address_type() {
        let rcpts = [
            failed("用户@例子.test", "5.1.1", Some("550 unknown ü")),
            failed("plain@dest.test", "5.1.1", None),
        ];
        let out = build_with("alice@origin.test", &rcpts, ORIGINAL);
        assert_wire_clean(&out);
        let msg = parse(&out);
        let parts = leaves(&msg);
        let status = text_of(parts[1]);
        assert!(status.is_ascii(), "delivery-status must be 7-bit: {status}");
        assert!(
            status
                .contains("Final-Recipient: utf-8; \\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.test\r\n"),
            "{status}"
        );
        assert!(status.contains("Final-Recipient: rfc822; plain@dest.test\r\n"));
        assert!(status.contains("Diagnostic-Code: smtp; 550 unknown ?\r\n"));
        let human = text_of(parts[0]);
        assert!(
            human.contains("<用户@例子.test>: 550 unknown ü\r\n"),
            "{human}"
        );
        assert!(
            String::from_utf8_lossy(&out)
                .contains("Content-Transfer-Encoding: 8bit\r\n\r\nThis is the mail")
        );
    }

    #[test]
    fn invalid_status_falls_back_per_action() {
        let mut bad_delayed = delayed("c@dest.test");
        bad_delayed.status = "6.1.1".into();
        let mut long_detail = delayed("d@dest.test");
        long_detail.status = "4.4.1000".into();
        let mut ok_delayed = delayed("e@dest.test");
        ok_delayed.status = " 4.7.0 ".into();
        let rcpts = [
            failed("a@dest.test", "bogus", None),
            failed("b@dest.test", "5.1", None),
            bad_delayed,
            long_detail,
            ok_delayed,
            failed("f@dest.test", "5.1.10", None),
        ];
        let out = build_with("alice@origin.test", &rcpts, ORIGINAL);
        let msg = parse(&out);
        let status = text_of(leaves(&msg)[1]);
        let codes: Vec<&str> = status
            .lines()
            .filter_map(|l| l.strip_prefix("Status: "))
            .collect();
        assert_eq!(
            codes,
            ["5.0.0", "5.0.0", "4.0.0", "4.0.0", "4.7.0", "5.1.10"]
        );
        assert!(valid_status("2.0.0") && !valid_status("3.0.0") && !valid_status("5.a.0"));
        assert!(!valid_status("5.1.1.1") && !valid_status("5..1") && !valid_status(""));
    }

    #[test]
    fn boundary_avoids_content() {
        let base = format!("=_mailgate_{SEED:016x}");
        // The original contains the seed's boundary followed by every possible next
        // character, so one extension character is not enough.
        let mut original = String::from("Subject: x\r\n");
        for c in "0123456789abcdefghijklmnopqrstuvwxyz".chars() {
            original.push_str(&format!("X-Trap: --{base}{c}\r\n"));
        }
        original.push_str(&format!("X-Trap: --{base}--\r\n\r\n"));
        let rcpts = [failed(
            "bob@dest.test",
            "5.1.1",
            Some(format!("550 --{base}").as_str()),
        )];
        let out = build_with("alice@origin.test", &rcpts, original.as_bytes());
        assert_wire_clean(&out);
        let msg = parse(&out);
        let boundary = msg
            .content_type()
            .and_then(|c| c.attribute("boundary"))
            .expect("boundary")
            .to_string();
        assert!(
            boundary.starts_with(&base) && boundary.len() == base.len() + 2,
            "{boundary}"
        );
        assert!(!original.contains(&boundary));
        let parts = leaves(&msg);
        assert_eq!(parts.len(), 3);
        assert_eq!(text_of(parts[2]).matches("X-Trap:").count(), 37);

        // Without a collision the boundary is the seed's.
        assert_eq!(pick_boundary(1, &[b"abc"]), "=_mailgate_0000000000000001");
    }

    #[test]
    fn message_id_and_from_are_sanitised() {
        let rcpts = [failed("bob@dest.test", "5.1.1", None)];
        let out = build(&DsnRequest {
            reporting_mta: " mx example.test ",
            sender: "<alice@origin.test>",
            queue_id: "..Q 1..2<>.",
            arrival: at(0),
            recipients: &rcpts,
            original: b"",
            now: at(0),
            boundary_seed: 7,
        });
        assert_wire_clean(&out);
        let msg = parse(&out);
        assert_eq!(
            msg.message_id(),
            Some("dsn.Q1.2.0000000000000007@mx_example.test")
        );
        assert_eq!(
            msg.from().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("MAILER-DAEMON@mx_example.test")
        );
        assert_eq!(
            msg.to().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("alice@origin.test")
        );
        let parts = leaves(&msg);
        assert_eq!(parts.len(), 3);
        assert!(text_of(parts[1]).contains("X-Mailgate-Queue-ID: ..Q 1..2<>.\r\n"));
        assert_eq!(msg_id_token(""), "unknown");
    }
}
