//! Helpers for reading structured values out of fuzz input, in a layout simple enough to
//! write seeds by hand: fixed octets first, then text fields separated by 0xFF (an octet
//! that never occurs in UTF-8, so no text is lost to the separator).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `secs` seconds after the epoch, or before it with `before`; the epoch itself when
/// that is not representable.
pub fn time(secs: u64, before: bool) -> SystemTime {
    let d = Duration::from_secs(secs);
    let t = if before {
        UNIX_EPOCH.checked_sub(d)
    } else {
        UNIX_EPOCH.checked_add(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// A little-endian u64 from the 8 octets at `at` (zero where `data` is short).
pub fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, o) in b.iter_mut().enumerate() {
        *o = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// The first `n` fields of `data` separated by 0xFF (as text, invalid UTF-8 replaced;
/// empty when missing) and whatever follows the n-th separator, as it is.
pub fn fields(data: &[u8], n: usize) -> (Vec<String>, &[u8]) {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0xff).unwrap_or(rest.len());
        out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    (out, rest)
}
