//! Invariants shared by the fuzz targets. Each check returns `Err(what is wrong)`; the
//! targets panic with it, so a failure names the rule that broke.

/// Splits `bytes` into lines at CRLF (without the CRLF). Every CR must be followed by
/// LF and every LF preceded by CR, and the text must be empty or end in CRLF.
pub fn crlf_lines(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                lines.push(&bytes[start..i]);
                i += 2;
                start = i;
            }
            b'\r' => return Err(format!("bare CR at offset {i}")),
            b'\n' => return Err(format!("bare LF at offset {i}")),
            _ => i += 1,
        }
    }
    if start != bytes.len() {
        return Err("text does not end in CRLF".into());
    }
    Ok(lines)
}

/// Bytes written to an SMTP client: one or more complete replies, each made of lines
/// `NNN-text` and a last line `NNN text` (RFC 5321 4.2), every line ending in CRLF with
/// no other CR or LF, the code three digits in 200..=599 and the same on every line of
/// one reply. The bytes end at the end of a reply.
pub fn reply_stream(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("empty reply".into());
    }
    let mut open: Option<&[u8]> = None;
    for line in crlf_lines(bytes)? {
        let show = || String::from_utf8_lossy(line).into_owned();
        if line.len() < 4 {
            return Err(format!("reply line too short: {:?}", show()));
        }
        let code = &line[..3];
        if !code.iter().all(u8::is_ascii_digit) {
            return Err(format!("reply code not three digits: {:?}", show()));
        }
        let n: u16 = std::str::from_utf8(code).unwrap().parse().unwrap();
        if !(200..=599).contains(&n) {
            return Err(format!("reply code out of range: {:?}", show()));
        }
        if let Some(c) = open
            && c != code
        {
            return Err(format!(
                "code changes inside a multi-line reply: {:?}",
                show()
            ));
        }
        open = match line[3] {
            b'-' => Some(code),
            b' ' => None,
            _ => return Err(format!("no ' ' or '-' after the code: {:?}", show())),
        };
    }
    if open.is_some() {
        return Err("ends inside a multi-line reply".into());
    }
    Ok(())
}

/// A message's text as delivered: empty or CRLF lines only (no bare CR or LF), every line
/// within `max_line` octets including its CRLF.
pub fn message_text(text: &[u8], max_line: usize) -> Result<(), String> {
    for line in crlf_lines(text)? {
        if line.len() + 2 > max_line {
            return Err(format!(
                "message line of {} octets + CRLF over the {max_line} limit",
                line.len()
            ));
        }
    }
    Ok(())
}

/// Text for a header section or MIME body: CRLF lines only, none over `max` octets
/// (without the CRLF).
pub fn lines_within(text: &[u8], max: usize) -> Result<(), String> {
    for (i, line) in crlf_lines(text)?.iter().enumerate() {
        if line.len() > max {
            return Err(format!("line {i} has {} octets (> {max})", line.len()));
        }
    }
    Ok(())
}
