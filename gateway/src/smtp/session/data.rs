//! Message content for DATA and BDAT: dot-unstuffing, the size and line-length limits,
//! bare CR/LF detection (SMTP smuggling), and the end of the message.

use super::{Hook, Phase, Session, Step};
use crate::smtp::reply::Reply;
use crate::smtp::text::MessageText;

/// Checks on message content shared by DATA and BDAT.
#[derive(Debug, Default)]
pub(super) struct Content {
    pub(super) bare: bool,
    pub(super) too_big: bool,
    /// The gateway's memory for messages ran out: the rest is read and dropped.
    pub(super) no_memory: bool,
    pub(super) long_line: bool,
    /// DATA: the previous line ended in CRLF (so `.CRLF` now ends the data).
    pub(super) prev_crlf: bool,
    /// DATA: discarding the rest of an over-long line.
    pub(super) skipping: bool,
    /// BDAT: last byte was CR.
    pub(super) prev_cr: bool,
    /// BDAT: length of the current line so far.
    pub(super) line_len: usize,
    /// The last octet stored (the message ends in CRLF when it is LF: bare LF is
    /// refused anyway).
    pub(super) last: Option<u8>,
    /// `Received:` fields of the header block, counted as the content is stored.
    pub(super) hops: HopCount,
}

/// Counts the `Received:` fields of a message's header block (up to its first empty
/// line) as its octets go by, however they are cut and wherever they are kept later.
#[derive(Debug, Default)]
pub(super) struct HopCount {
    /// `Received:` fields so far.
    pub(super) hops: usize,
    /// The empty line that ends the header block was seen.
    done: bool,
    /// Octets of the current line so far.
    pos: usize,
    /// The current line starts like `Received:` (as far as it goes).
    prefix: bool,
    /// The current line's first octet is CR.
    cr: bool,
}

impl HopCount {
    fn feed(&mut self, bytes: &[u8]) {
        const FIELD: &[u8] = b"received:";
        for &b in bytes {
            if self.done {
                return;
            }
            if b == b'\n' {
                // An empty line ends the header block ("\n" or "\r\n").
                self.done = self.pos == 0 || (self.pos == 1 && self.cr);
                self.pos = 0;
                continue;
            }
            if self.pos == 0 {
                self.prefix = true;
                self.cr = b == b'\r';
            }
            if self.pos < FIELD.len() {
                self.prefix &= b.eq_ignore_ascii_case(&FIELD[self.pos]);
                if self.prefix && self.pos == FIELD.len() - 1 {
                    self.hops += 1;
                }
            }
            self.pos += 1;
        }
    }
}

impl Session {
    /// The message is complete and passed the content checks: freeze it into one shared
    /// buffer (or have the driver seal its spill file) and ask the DATA hook.
    fn complete(&mut self) {
        let hops = self.content.hops.hops;
        if hops > self.cfg.max_hops {
            // RFC 5321 6.3: a message that has passed this many relays is looping.
            return self.refuse_message(Reply::new(
                554,
                "5.4.6",
                format!("Too many hops ({hops} Received: headers): mail loop"),
            ));
        }
        if self.spilled > 0 {
            // The rest goes to the driver's file, which the DATA hook then reads.
            let tail = self.take_content();
            self.phase = Phase::Sealing;
            self.next = Some(Step::Seal(tail));
        } else {
            self.text = MessageText::new(std::mem::take(&mut self.data));
            self.pause(Hook::Data);
        }
    }

    /// Appends message content within the size limit.
    pub(super) fn store(&mut self, bytes: &[u8]) {
        self.received += bytes.len();
        if self.content.too_big || self.content.no_memory {
            return;
        }
        // `received` counts every octet of the message, also the dropped rest of an
        // over-long line, so the size verdict does not depend on how lines arrive.
        if self.received > self.cfg.max_message_size {
            self.content.too_big = true;
            self.data = Vec::new();
        } else {
            self.data.extend_from_slice(bytes);
            self.content.hops.feed(bytes);
            if let Some(&b) = bytes.last() {
                self.content.last = Some(b);
            }
        }
    }

    /// Content that is read but not kept (the rest of an over-long line) still counts
    /// toward the size limit, so the size verdict does not depend on line lengths.
    fn count_unstored(&mut self, n: usize) {
        self.received += n;
        if self.received > self.cfg.max_message_size {
            self.content.too_big = true;
            self.data = Vec::new();
        }
    }

    /// The reply refusing the content just received, if any.
    pub(super) fn content_verdict(&self) -> Option<Reply> {
        let c = &self.content;
        if c.bare {
            Some(Reply::new(
                554,
                "5.6.0",
                "Message refused: bare CR or LF in message (SMTP smuggling protection)",
            ))
        } else if c.too_big {
            Some(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ))
        } else if c.no_memory {
            Some(Reply::new(
                452,
                "4.3.1",
                "Insufficient system storage, try again later",
            ))
        } else if c.long_line {
            Some(Reply::new(
                554,
                "5.6.0",
                format!(
                    "Message refused: line longer than {} octets",
                    self.cfg.max_text_line
                ),
            ))
        } else {
            None
        }
    }

    pub(super) fn data_step(&mut self) -> Option<Step> {
        let max_line = self.cfg.max_text_line;
        let mut consumed = 0;
        let mut done = false;
        // Lines are stored straight from the input buffer (taken out while they are).
        let input = std::mem::take(&mut self.input);
        // Bounded by the input length: each pass consumes one line.
        while let Some(off) = input[consumed..].iter().position(|&b| b == b'\n') {
            let end = consumed + off + 1;
            let line = &input[consumed..end];
            consumed = end;
            let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
            let body_len = line.len() - if crlf { 2 } else { 1 };
            let skipping = std::mem::take(&mut self.content.skipping);
            if !crlf || line[..body_len].contains(&b'\r') {
                self.content.bare = true;
            }
            if skipping || line.len() > max_line {
                self.content.long_line = true;
            }
            if !skipping && crlf && self.content.prev_crlf && &line[..body_len] == b"." {
                done = true;
                break;
            }
            let was = self.content.prev_crlf;
            self.content.prev_crlf = crlf;
            if skipping {
                self.count_unstored(line.len());
            } else {
                let start = usize::from(was && line.first() == Some(&b'.'));
                let body = &line[start..body_len];
                self.store(body);
                self.store(b"\r\n");
            }
        }
        self.input = input;
        self.input.drain(..consumed);
        if !done {
            if self.input.len() > max_line {
                // A line without an end yet, already too long: keep nothing of it.
                if self.input[..self.input.len() - 1].contains(&b'\r') {
                    self.content.bare = true;
                }
                let keep_cr = self.input.last() == Some(&b'\r');
                self.count_unstored(self.input.len() - usize::from(keep_cr));
                self.input.clear();
                if keep_cr {
                    self.input.push(b'\r');
                }
                self.content.skipping = true;
                self.content.long_line = true;
            }
            return Some(self.need_input());
        }
        self.phase = Phase::Command;
        match self.content_verdict() {
            Some(r) => self.refuse_message(r),
            None => self.complete(),
        }
        None
    }

    fn scan_chunk(&mut self, bytes: &[u8]) {
        let max_line = self.cfg.max_text_line;
        for &b in bytes {
            let c = &mut self.content;
            if b == b'\n' {
                if !c.prev_cr {
                    c.bare = true;
                }
                c.line_len = 0;
            } else {
                if c.prev_cr {
                    c.bare = true;
                }
                // The line's text, without its CRLF: at most max_line - 2 octets.
                if b != b'\r' {
                    c.line_len += 1;
                    if c.line_len + 2 > max_line {
                        c.long_line = true;
                    }
                }
            }
            c.prev_cr = b == b'\r';
        }
        self.store(bytes);
    }

    pub(super) fn bdat_step(&mut self) -> Option<Step> {
        let Phase::Bdat {
            size,
            remaining,
            last,
            ref error,
        } = self.phase
        else {
            return None;
        };
        let take = remaining.min(self.input.len() as u64) as usize;
        if take > 0 {
            let chunk: Vec<u8> = self.input.drain(..take).collect();
            if error.is_none() {
                self.scan_chunk(&chunk);
            }
        }
        let remaining = remaining - take as u64;
        if remaining > 0 {
            if let Phase::Bdat { remaining: r, .. } = &mut self.phase {
                *r = remaining;
            }
            return Some(self.need_input());
        }
        let Phase::Bdat { error, .. } = std::mem::replace(&mut self.phase, Phase::Command) else {
            return None;
        };
        if let Some(r) = error {
            self.reset_txn();
            self.send(r);
            return None;
        }
        if last && self.content.prev_cr {
            self.content.bare = true;
        }
        if let Some(r) = self.content_verdict() {
            self.refuse_message(r);
            return None;
        }
        if !last {
            self.send(Reply::new(250, "2.0.0", format!("{size} octets received")));
            return None;
        }
        if self.content.last.is_some_and(|b| b != b'\n') {
            self.store(b"\r\n");
            if let Some(r) = self.content_verdict() {
                self.refuse_message(r);
                return None;
            }
        }
        self.complete();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::HopCount;

    /// `Received:` fields in the header section of `message` (CRLF lines), counted whole.
    fn whole(message: &[u8]) -> usize {
        message
            .split(|&b| b == b'\n')
            .take_while(|l| !l.is_empty() && *l != b"\r")
            .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
            .count()
    }

    #[test]
    fn hops_are_counted_the_same_however_the_octets_arrive() {
        let messages: [&[u8]; 5] = [
            b"Received: a\r\nRECEIVED:b\r\nX: 1\r\n received: folded\r\nReceived: c\r\n\r\nReceived: body\r\n",
            b"Receive: no\r\nXReceived: no\r\nReceived:\r\n",
            b"\r\nReceived: after the blank line\r\n",
            b"Received: x\r\n\nReceived: after a bare blank line\r\n",
            b"",
        ];
        for m in messages {
            for cut in 1..=m.len().max(1) {
                let mut h = HopCount::default();
                m.chunks(cut).for_each(|c| h.feed(c));
                assert_eq!(
                    h.hops,
                    whole(m),
                    "{:?} in pieces of {cut}",
                    String::from_utf8_lossy(m)
                );
            }
        }
    }
}
