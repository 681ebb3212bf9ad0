//! Input buffering shared by the line protocols (SMTP, POP3): what a client
//! sent and the session has not consumed yet, cut into command lines.
//!
//! Memory stays bounded by one read plus one partial line: a line that
//! grows past the limit is dropped as it streams in (the buffer is emptied
//! and the rest up to LF discarded), then reported once as too long.

use std::ops::Range;

/// A command line taken from a [`LineBuffer`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// The line's bytes in the buffer, without CR LF (valid until the
    /// buffer is next fed or cleared).
    Complete(Range<usize>),
    /// The line was longer than the limit; its bytes are gone.
    TooLong,
}

/// Unprocessed input of one connection.
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the unprocessed part of `buf`; drained lazily so that many
    /// short pipelined lines cost one memmove, not one each.
    pos: usize,
    /// A line overflowed the limit: drop bytes until LF.
    discarding_line: bool,
}

impl LineBuffer {
    /// Appends bytes read from the client.
    pub(crate) fn feed(&mut self, input: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(input);
    }

    /// Forgets everything buffered (after a TLS upgrade: what was pipelined
    /// in clear could be an injection).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.discarding_line = false;
    }

    /// Takes the next line of at most `max_line_length` bytes (LF
    /// included); `None` until a whole line is buffered.
    pub(crate) fn take_line(&mut self, max_line_length: usize) -> Option<Line> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let start = self.pos;
                self.pos += i + 1;
                if std::mem::take(&mut self.discarding_line) || i + 1 > max_line_length {
                    return Some(Line::TooLong);
                }
                let mut end = start + i;
                if end > start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                Some(Line::Complete(start..end))
            }
            None => {
                if rest.len() >= max_line_length {
                    // Keep memory flat: the line is already too long, so
                    // nothing of it matters any more.
                    self.discarding_line = true;
                    self.buf.clear();
                    self.pos = 0;
                }
                None
            }
        }
    }

    /// Bytes of the buffer (a range from [`Line::Complete`] or
    /// [`LineBuffer::unread`]).
    pub(crate) fn get(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The range not consumed yet (for content that is not cut into lines,
    /// such as SMTP DATA).
    pub(crate) fn unread(&self) -> Range<usize> {
        self.pos..self.buf.len()
    }

    /// Marks everything before `pos` (an index from [`LineBuffer::unread`])
    /// consumed.
    pub(crate) fn consume_to(&mut self, pos: usize) {
        debug_assert!(pos >= self.pos && pos <= self.buf.len());
        self.pos = pos;
    }

    /// Bytes held, consumed or not (for checks of the memory bound).
    pub(crate) fn held(&self) -> usize {
        self.buf.len()
    }

    /// Bytes not consumed yet.
    pub(crate) fn unread_len(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_lf_without_cr() {
        let mut b = LineBuffer::default();
        b.feed(b"NOOP\r\nQUIT\npart");
        let Some(Line::Complete(r)) = b.take_line(100) else {
            panic!()
        };
        assert_eq!(b.get(r), b"NOOP");
        let Some(Line::Complete(r)) = b.take_line(100) else {
            panic!()
        };
        assert_eq!(b.get(r), b"QUIT");
        assert_eq!(b.take_line(100), None);
        b.feed(b"ial\r\n");
        let Some(Line::Complete(r)) = b.take_line(100) else {
            panic!()
        };
        assert_eq!(b.get(r), b"partial");
    }

    #[test]
    fn an_overlong_line_is_dropped_as_it_streams_in_and_reported_once() {
        let mut b = LineBuffer::default();
        for _ in 0..100 {
            b.feed(&[b'x'; 64]);
            assert_eq!(b.take_line(100), None);
            assert!(b.held() < 200, "memory stays flat");
        }
        b.feed(b"xx\r\nNOOP\r\n");
        assert_eq!(b.take_line(100), Some(Line::TooLong));
        let Some(Line::Complete(r)) = b.take_line(100) else {
            panic!()
        };
        assert_eq!(b.get(r), b"NOOP");
    }
}
