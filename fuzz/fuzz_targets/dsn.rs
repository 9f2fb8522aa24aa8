//! Fuzz target `dsn`: the delivery status notification builder (`queue::dsn::build`),
//! with every field of the request fuzzed: the reporting host, the sender, the queue id,
//! the times (before 1970 and after 9999 too), the boundary seed, up to 8 recipients
//! (address, action, status, remote MTA, diagnostic, attempt and retry times), and the
//! original message.
//!
//! Input: octets 0..8 the boundary seed, 8..16 the arrival and 16..24 the current time
//! (seconds, little-endian), 24 flags (1 arrival before 1970, 2 now before 1970), 25 the
//! number of recipients (mod 9); then 17 octets per recipient: flags (1 delayed rather
//! than failed, 2 remote MTA given, 4 diagnostic given, 8 last attempt known, 16 retry
//! limit known, 32 and 64 those times before 1970), the last attempt and the retry limit
//! (seconds, little-endian); then text fields separated by 0xFF: reporting MTA, sender,
//! queue id, and per recipient address, status, remote MTA, diagnostic; what follows is
//! the original message, as it is.
//!
//! Invariants of the notification:
//! - CRLF line ends only (no bare CR or LF), ends in CRLF, no line over 998 octets;
//! - the top-level header has exactly the fields the builder writes, each once (nothing
//!   from outside starts a header field), then `This is a MIME-encapsulated message.`;
//! - the MIME boundary of `Content-Type` starts exactly four lines (three delimiters and
//!   the closing one, which is the last line), so no part's content can end it;
//! - the `message/delivery-status` part is 7-bit ASCII, holds only RFC 3464 fields (and
//!   continuation lines), one `Final-Recipient` per recipient;
//! - the `text/rfc822-headers` part holds only header field lines (or continuations),
//!   then at most the empty line that ended them;
//! - a body with 8-bit octets is declared `Content-Transfer-Encoding: 8bit` at the top.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_fuzz::check;
use mailgate_fuzz::input::{fields, time, u64_at};
use mailgate_fuzz::queue::dsn::{Action, DsnRecipient, DsnRequest, build};

const HEADER: usize = 26;
const PER_RECIPIENT: usize = 17;

/// A header field line (`name:` with a printable ASCII name) or a continuation line.
fn field_or_continuation(line: &[u8]) -> bool {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return true;
    }
    match line.iter().position(|&b| b == b':') {
        Some(colon) => colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        None => false,
    }
}

/// The field name of a line that starts a field.
fn name(line: &[u8]) -> Option<&str> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    let colon = line.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&line[..colon]).ok()
}

const TOP: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
];

const PART: &[&str] = &[
    "Content-Description",
    "Content-Type",
    "Content-Transfer-Encoding",
];

const STATUS: &[&str] = &[
    "Reporting-MTA",
    "X-Mailgate-Queue-ID",
    "Arrival-Date",
    "Final-Recipient",
    "Action",
    "Status",
    "Remote-MTA",
    "Diagnostic-Code",
    "Last-Attempt-Date",
    "Will-Retry-Until",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let count = usize::from(data[25] % 9).min((data.len() - HEADER) / PER_RECIPIENT);
    let fixed = HEADER + count * PER_RECIPIENT;
    let (f, original) = fields(&data[fixed..], 3 + 4 * count);
    let recipients: Vec<DsnRecipient> = (0..count)
        .map(|k| {
            let at = HEADER + k * PER_RECIPIENT;
            let flags = data[at];
            let on = |bit: u8| flags & bit != 0;
            let t = &f[3 + 4 * k..3 + 4 * k + 4];
            DsnRecipient {
                address: t[0].clone(),
                action: if on(1) {
                    Action::Delayed
                } else {
                    Action::Failed
                },
                status: t[1].clone(),
                remote_mta: on(2).then(|| t[2].clone()),
                diagnostic: on(4).then(|| t[3].clone()),
                last_attempt: on(8).then(|| time(u64_at(data, at + 1), on(32))),
                will_retry_until: on(16).then(|| time(u64_at(data, at + 9), on(64))),
            }
        })
        .collect();
    let req = DsnRequest {
        reporting_mta: &f[0],
        sender: &f[1],
        queue_id: &f[2],
        arrival: time(u64_at(data, 8), data[24] & 1 != 0),
        recipients: &recipients,
        original,
        now: time(u64_at(data, 16), data[24] & 2 != 0),
        boundary_seed: u64_at(data, 0),
    };
    let out = build(&req);
    let show = || String::from_utf8_lossy(&out).into_owned();

    if let Err(e) = check::lines_within(&out, 998) {
        panic!("{e}: {}", show());
    }
    let lines = check::crlf_lines(&out).unwrap();

    // The top-level header.
    let blank = lines
        .iter()
        .position(|l| l.is_empty())
        .expect("end of header");
    let mut seen: Vec<&str> = Vec::new();
    for l in &lines[..blank] {
        assert!(field_or_continuation(l), "not a field: {:?}", show());
        if let Some(n) = name(l) {
            seen.push(n);
        }
    }
    let mut expected: Vec<&str> = TOP.to_vec();
    if seen.contains(&"Content-Transfer-Encoding") {
        expected.push("Content-Transfer-Encoding");
    }
    assert_eq!(seen, expected, "top-level fields: {}", show());
    assert_eq!(lines[blank + 1], b"This is a MIME-encapsulated message.");

    // The boundary, from the Content-Type field (unfolded; other fields may quote
    // anything, `boundary="` included).
    let start = lines[..blank]
        .iter()
        .position(|l| name(l) == Some("Content-Type"))
        .unwrap();
    let end = lines[start + 1..blank]
        .iter()
        .position(|l| name(l).is_some())
        .map_or(blank, |i| start + 1 + i);
    let content_type = lines[start..end]
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("");
    let b = content_type
        .split_once("boundary=\"")
        .and_then(|(_, r)| r.split_once('"'))
        .map(|(b, _)| b.to_string())
        .expect("a boundary");
    assert!(!b.is_empty() && b.len() <= 70, "boundary {b:?}");
    let delimiter = format!("--{b}");
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with(delimiter.as_bytes()))
        .collect();
    assert_eq!(
        starts.len(),
        4,
        "boundary {b:?} starts {starts:?}: {}",
        show()
    );
    for &i in &starts[..3] {
        assert_eq!(lines[i], delimiter.as_bytes());
    }
    assert_eq!(starts[3], lines.len() - 1, "closing delimiter is not last");
    assert_eq!(lines[starts[3]], format!("{delimiter}--").as_bytes());

    // Each part: its own header, a blank line, its content.
    let part = |k: usize| -> (&[&[u8]], &[&[u8]]) {
        let body = &lines[starts[k] + 1..starts[k + 1]];
        let blank = body
            .iter()
            .position(|l| l.is_empty())
            .expect("part header end");
        for l in &body[..blank] {
            assert!(name(l).is_some_and(|n| PART.contains(&n)), "{}", show());
        }
        (&body[..blank], &body[blank + 1..])
    };
    let _ = part(0);
    let (status_head, status) = part(1);
    assert!(status_head.contains(&&b"Content-Type: message/delivery-status"[..]));
    let mut finals = 0;
    for l in status {
        assert!(l.is_ascii(), "8-bit delivery-status: {}", show());
        if l.is_empty() || l[0] == b' ' {
            continue;
        }
        let n = name(l).unwrap_or_default();
        assert!(
            STATUS.contains(&n),
            "unexpected status line {:?}",
            String::from_utf8_lossy(l)
        );
        finals += usize::from(n == "Final-Recipient");
    }
    assert_eq!(finals, recipients.len());
    let (headers_head, headers) = part(2);
    assert!(headers_head.contains(&&b"Content-Type: text/rfc822-headers"[..]));
    // Header lines, then the blank line that ends them (if the original had one), then
    // the CRLF that belongs to the closing delimiter.
    let fields = headers
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(headers.len());
    for l in &headers[..fields] {
        assert!(
            field_or_continuation(l),
            "not a header line in part 3: {}",
            show()
        );
    }
    let after = &headers[fields..];
    assert!(
        after.len() <= 2 && after.iter().all(|l| l.is_empty()),
        "{}",
        show()
    );

    let body = &lines[blank..];
    if body.iter().any(|l| !l.is_ascii()) {
        assert!(
            seen.contains(&"Content-Transfer-Encoding"),
            "8-bit body without Content-Transfer-Encoding: 8bit"
        );
    }
});
