//! How raw messages are compressed for the `Raw` column: zstd at the
//! store's level, or, at level 0 (`MP_COMPRESSION=0`), not at all.
//!
//! Uncompressed messages are still written as zstd frames, made of Raw
//! blocks (RFC 8878, 3.1.1.2: a block type that carries its bytes as they
//! are), which every zstd decoder reads. So the schema does not change and
//! every reader (API, `/view`, `dump`, exports, an older catcher opening the
//! db) reads them as before. It costs a 6-byte frame header and 3 bytes per
//! 128 KiB block, and no compression work (Mailpit's reason for level 0).

use std::io::{self, Write};

/// zstd's frame magic number, little-endian.
const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Frame header descriptor: no content size, not single-segment, no
/// checksum, no dictionary; so a window descriptor follows.
const DESCRIPTOR: u8 = 0;
/// Window descriptor: 2^(10 + 7) = 128 KiB, the largest block size (a
/// block may not exceed the window).
const WINDOW: u8 = 7 << 3;
/// Bytes per Raw block.
const BLOCK: usize = 128 * 1024;

/// `raw` compressed at `level` (0: stored in Raw blocks; others through
/// the thread's reused zstd context, `model::compress`).
pub(super) fn compress(raw: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if level != 0 {
        return super::model::compress(raw, level);
    }
    let mut w = Stored::new(Vec::with_capacity(raw.len() + raw.len() / BLOCK * 3 + 16))?;
    w.write_all(raw)?;
    w.finish()
}

/// A streaming compressor into `W` at a level, 0 included.
pub(super) enum Encoder<W: Write> {
    /// zstd proper.
    Zstd(zstd::stream::Encoder<'static, W>),
    /// Raw blocks (level 0).
    Stored(Stored<W>),
}

impl<W: Write> Encoder<W> {
    /// An encoder writing the frame into `out`.
    pub(super) fn new(out: W, level: i32) -> io::Result<Self> {
        Ok(if level == 0 {
            Encoder::Stored(Stored::new(out)?)
        } else {
            Encoder::Zstd(zstd::stream::Encoder::new(out, level)?)
        })
    }

    /// Ends the frame and gives the output back.
    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Stored(s) => s.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Stored(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Stored(s) => s.flush(),
        }
    }
}

/// A zstd frame of Raw blocks, written a block at a time.
pub(super) struct Stored<W: Write> {
    out: W,
    block: Vec<u8>,
}

impl<W: Write> Stored<W> {
    fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&MAGIC)?;
        out.write_all(&[DESCRIPTOR, WINDOW])?;
        Ok(Self {
            out,
            block: Vec::with_capacity(BLOCK),
        })
    }

    /// Writes the pending bytes as one Raw block (type 0).
    fn write_block(&mut self, last: bool) -> io::Result<()> {
        let header = ((self.block.len() as u32) << 3) | u32::from(last);
        self.out.write_all(&header.to_le_bytes()[..3])?;
        self.out.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        // The last block may be empty (an empty message, or one of a whole
        // number of blocks): a zero-size Raw block is valid.
        self.write_block(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Stored<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.block.len() == BLOCK {
            self.write_block(false)?;
        }
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Bytes that zstd would shrink a lot, so a stored frame is told apart
    /// by its size.
    fn text(n: usize) -> Vec<u8> {
        b"Subject: hello\r\n"
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    #[test]
    fn stored_frames_are_read_back_by_zstd_bulk_and_streaming() {
        for n in [0, 1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
            let raw = text(n);
            let stored = compress(&raw, 0).unwrap();
            let blocks = n.div_ceil(BLOCK).max(1);
            assert_eq!(
                stored.len(),
                6 + n + 3 * blocks,
                "{n} bytes: stored as they are"
            );
            assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), raw, "{n}");
            let mut back = Vec::new();
            zstd::stream::read::Decoder::new(&stored[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, raw, "{n}");
            // The streaming encoder, fed in odd pieces, writes the same.
            let mut e = Encoder::new(Vec::new(), 0).unwrap();
            for piece in raw.chunks(7777) {
                e.write_all(piece).unwrap();
            }
            assert_eq!(e.finish().unwrap(), stored, "{n}");
        }
        // Other levels are zstd proper.
        let raw = text(100_000);
        let z = compress(&raw, 1).unwrap();
        assert!(z.len() < 1000, "{}", z.len());
        assert_eq!(zstd::stream::decode_all(&z[..]).unwrap(), raw);
    }
}
