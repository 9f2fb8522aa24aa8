//! The text of a message from the end of DATA on: in one shared immutable buffer, or, for
//! a message the driver spilled to disk while it arrived, in a file read back in bounded
//! pieces with only its first octets (the header block) in memory. Header edits replace
//! the header block without touching the body. Nothing here does I/O itself: a spilled
//! message is read through the [`Backing`] the driver supplied.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;

/// Largest piece [`MessageText::chunks`] reads from a spilled message.
pub const CHUNK: usize = 64 * 1024;

/// The most of a spilled message's first octets kept in memory (cut after its last
/// complete line): its header block, for the hop count, plugins and header edits.
pub const FRONT: usize = 32 * 1024;

/// Message octets the driver wrote out of memory (a spill file), read back by offset.
pub trait Backing: fmt::Debug + Send + Sync {
    /// Reads up to `buf.len()` octets at `offset`; fewer only at the end of the text.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// The text of a message: the octets as received (dot-unstuffed, CRLF lines), and the
/// header block plugins rewrote, if they did. Cloning shares the buffer or the file.
#[derive(Clone, Debug, Default)]
pub struct MessageText {
    /// The received text when it is in memory; for a spilled one, its first octets
    /// (at most [`FRONT`], ending after a complete line).
    front: Bytes,
    /// The whole received text, when it was spilled.
    back: Option<Arc<dyn Backing>>,
    /// Octets of received text.
    len: usize,
    /// New header fields standing for the received text's first `rest` octets.
    head: Bytes,
    /// Where the part of the received text that is still used starts.
    rest: usize,
}

impl PartialEq for MessageText {
    fn eq(&self, other: &Self) -> bool {
        let same_back = match (&self.back, &other.back) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_back
            && self.front == other.front
            && self.len == other.len
            && self.head == other.head
            && self.rest == other.rest
    }
}

impl Eq for MessageText {}

impl MessageText {
    /// A text held in memory, as received.
    pub fn new(received: impl Into<Bytes>) -> MessageText {
        let front = received.into();
        MessageText {
            len: front.len(),
            front,
            back: None,
            head: Bytes::new(),
            rest: 0,
        }
    }

    /// A text of `len` octets kept in `back`, whose first octets are `front` (a copy,
    /// for header parsing; cut here after its last complete line and to [`FRONT`]).
    pub fn spilled(front: impl Into<Bytes>, back: Arc<dyn Backing>, len: usize) -> MessageText {
        let mut front: Bytes = front.into();
        front.truncate(front.len().min(FRONT).min(len));
        if front.len() < len {
            let cut = front.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            front.truncate(cut);
        }
        MessageText {
            front,
            back: Some(back),
            len,
            head: Bytes::new(),
            rest: 0,
        }
    }

    /// Whether the text lives in a file rather than in memory.
    pub fn is_spilled(&self) -> bool {
        self.back.is_some()
    }

    /// The first octets of the received text, in memory: all of it unless the text was
    /// spilled, else complete lines up to [`FRONT`] octets. Header parsing and header
    /// edits work on this; see [`MessageText::front_is_whole`].
    pub fn front(&self) -> &Bytes {
        &self.front
    }

    /// Whether [`MessageText::front`] is the whole received text.
    pub fn front_is_whole(&self) -> bool {
        self.front.len() == self.len
    }

    /// Octets of the received text (before header edits).
    pub fn received_len(&self) -> usize {
        self.len
    }

    /// Octets this text holds in memory (not counting a spill file).
    pub fn memory_len(&self) -> usize {
        self.front.len() + self.head.len()
    }

    /// Up to `max` octets of the received text from `offset` (fewer at its end).
    pub fn read_received(&self, offset: usize, max: usize) -> io::Result<Bytes> {
        let start = offset.min(self.len);
        let end = start.saturating_add(max).min(self.len);
        match &self.back {
            _ if end <= self.front.len() => Ok(self.front.slice(start..end)),
            None => Ok(Bytes::new()),
            Some(back) => {
                let mut buf = vec![0u8; end - start];
                read_exact_at(back.as_ref(), &mut buf, start as u64)?;
                Ok(buf.into())
            }
        }
    }

    /// Replaces the first `upto` octets of the received text (its header block, within
    /// [`MessageText::front`]) by `head`; the rest (the body) stays where it is.
    pub fn replace_head(&mut self, head: impl Into<Bytes>, upto: usize) {
        self.head = head.into();
        self.rest = upto.min(self.front.len());
    }

    /// The text as it goes out, in order: the header block, then the rest of the
    /// received text (one shared slice in memory, or pieces of at most [`CHUNK`] octets
    /// read from the file). A read error ends the pieces.
    pub fn chunks(&self) -> Chunks<'_> {
        Chunks {
            text: self,
            head_done: self.head.is_empty(),
            pos: self.rest,
        }
    }

    /// Writes the text as it goes out to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        for piece in self.chunks() {
            w.write_all(&piece?)?;
        }
        Ok(())
    }

    /// Octets of the text as it goes out.
    pub fn len(&self) -> usize {
        self.head.len() + self.len - self.rest
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole text in one new buffer (a copy: for tests and small messages only).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out)?;
        Ok(out)
    }
}

fn read_exact_at(back: &dyn Backing, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    // Bounded: every pass fills some of `buf` or returns.
    while !buf.is_empty() {
        match back.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spilled message shorter than recorded",
                ));
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The pieces of a [`MessageText`] as it goes out; see [`MessageText::chunks`].
#[derive(Debug)]
pub struct Chunks<'a> {
    text: &'a MessageText,
    head_done: bool,
    pos: usize,
}

impl Iterator for Chunks<'_> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        let t = self.text;
        if !self.head_done {
            self.head_done = true;
            return Some(Ok(t.head.clone()));
        }
        if self.pos >= t.len {
            return None;
        }
        let start = self.pos;
        let end = match t.back {
            None => t.len,
            Some(_) => (start + CHUNK).min(t.len),
        };
        let piece = t.read_received(start, end - start);
        self.pos = if piece.is_ok() { end } else { t.len };
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spill file in memory.
    #[derive(Debug)]
    struct InMemory(Vec<u8>);

    impl Backing for InMemory {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let start = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - start);
            buf[..n].copy_from_slice(&self.0[start..start + n]);
            Ok(n)
        }
    }

    #[test]
    fn a_new_head_shares_the_body() {
        let received = Bytes::from_static(b"Subject: a\r\nX-Old: 1\r\n\r\nbody\r\n");
        let mut t = MessageText::new(received.clone());
        assert_eq!(t.to_vec().unwrap(), received.to_vec());
        // The fields before the blank line are replaced; the blank line and body stay.
        t.replace_head(&b"X-New: 2\r\nSubject: a\r\n"[..], 22);
        assert_eq!(
            t.to_vec().unwrap(),
            b"X-New: 2\r\nSubject: a\r\n\r\nbody\r\n"
        );
        assert_eq!(t.len(), t.to_vec().unwrap().len());
        let pieces: Vec<Bytes> = t.chunks().map(Result::unwrap).collect();
        assert_eq!(
            pieces[1].as_ptr(),
            received[22..].as_ptr(),
            "body not copied"
        );
        assert_eq!(t.front(), &received);
        assert!(t.front_is_whole() && !t.is_spilled());
    }

    #[test]
    fn a_spilled_text_reads_back_in_bounded_pieces() {
        let mut whole = b"Subject: big\r\n\r\n".to_vec();
        whole.extend((0..3 * CHUNK).map(|i| {
            if i % 100 == 98 {
                b'\r'
            } else if i % 100 == 99 {
                b'\n'
            } else {
                b'x'
            }
        }));
        let mut t = MessageText::spilled(
            whole[..FRONT + 10].to_vec(),
            Arc::new(InMemory(whole.clone())),
            whole.len(),
        );
        assert!(t.is_spilled() && !t.front_is_whole());
        assert!(t.front().len() <= FRONT && t.front().ends_with(b"\n"));
        assert!(whole.starts_with(t.front()));
        assert_eq!(t.memory_len(), t.front().len());
        assert_eq!(t.to_vec().unwrap(), whole);
        assert!(t.chunks().skip(1).all(|p| p.unwrap().len() <= CHUNK));
        assert_eq!(&t.read_received(10, 20).unwrap()[..], &whole[10..30]);
        assert_eq!(
            &t.read_received(2 * CHUNK, 100).unwrap()[..],
            &whole[2 * CHUNK..2 * CHUNK + 100]
        );
        assert!(t.read_received(whole.len() + 5, 10).unwrap().is_empty());
        t.replace_head(&b"X-New: 1\r\n"[..], 14);
        let mut expected = b"X-New: 1\r\n".to_vec();
        expected.extend_from_slice(&whole[14..]);
        assert_eq!(t.to_vec().unwrap(), expected);
        assert_eq!(t.len(), expected.len());
    }

    #[test]
    fn a_short_file_is_an_error_not_a_short_text() {
        let t = MessageText::spilled(&b"a\r\n"[..], Arc::new(InMemory(b"a\r\n".to_vec())), 1000);
        assert!(t.to_vec().is_err());
        assert!(t.read_received(100, 10).is_err());
    }
}
