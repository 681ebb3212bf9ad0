//! Recycled buffers for the object bodies the stores read.
//!
//! Why: a restore reads hundreds of 1-4 MiB bodies, and glibc maps blocks
//! that large (a restore sets `M_MMAP_THRESHOLD` to 512 KiB, see
//! `restore::tune_malloc_for_restore`), so every body was a fresh mapping:
//! its pages faulted in and zeroed as the body arrived, then unmapped when it
//! was dropped. That was ~7% of a 1 GiB restore's CPU (perf, session 9:
//! `exc_page_fault`, `clear_page_erms`, `unmap_page_range`,
//! `do_anonymous_page`). A body's [`Bytes`] now hands its buffer back here
//! when its last clone drops, and the next read of a similar size takes it,
//! already mapped. What is kept idle is bounded ([`MAX_KEPT`]), so a
//! long-running `watch` holds at most that much for its occasional reads.

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

/// Bodies smaller than this come from malloc's heap without a mapping of
/// their own: recycling them would gain nothing.
const MIN_POOLED: usize = 64 << 10;
/// Bodies larger than this are rare (manifests of huge dbs) and not kept.
const MAX_POOLED: usize = 8 << 20;
/// Most bytes of buffers kept idle. A restore has at most its download
/// budget (16 MiB) of bodies in memory, so this keeps every one of them.
pub const MAX_KEPT: usize = 24 << 20;

/// Idle buffers, kept for the next body. One per process ([`buffer`] and
/// [`freeze`] use it); a type so tests can have their own.
struct Pool(Mutex<Vec<Vec<u8>>>);

static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Self {
        Pool(Mutex::new(Vec::new()))
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic while holding the lock cannot leave the list inconsistent
        // (push and swap_remove are the only changes): keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn buffer(&self, capacity: usize) -> Vec<u8> {
        if (MIN_POOLED..=MAX_POOLED).contains(&capacity) {
            let mut idle = self.idle();
            let best = idle
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut b = idle.swap_remove(i);
                b.clear();
                return b;
            }
        }
        Vec::with_capacity(capacity)
    }

    fn freeze(&'static self, buf: Vec<u8>) -> Bytes {
        if (MIN_POOLED..=MAX_POOLED).contains(&buf.capacity()) {
            Bytes::from_owner(Recycled { buf, pool: self })
        } else {
            Bytes::from(buf)
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.idle().iter().map(Vec::capacity).sum()
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut idle = self.idle();
        let kept: usize = idle.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= MAX_KEPT {
            idle.push(buf);
        }
    }
}

/// An empty buffer that can hold `capacity` bytes: a recycled one when one
/// of at least that size is idle (the smallest such), else a new one.
pub fn buffer(capacity: usize) -> Vec<u8> {
    POOL.buffer(capacity)
}

/// Turns a filled buffer into the [`Bytes`] a store returns; the buffer
/// comes back to the pool when the last clone of it is dropped.
pub fn freeze(buf: Vec<u8>) -> Bytes {
    POOL.freeze(buf)
}

/// A body's buffer on its way back to its pool.
struct Recycled {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dropped body's buffer is what the next read of its size gets (same
    /// allocation, no new mapping), only after every clone is gone, and the
    /// idle total stays under its bound. A pool of the test's own: the
    /// process's is shared with every other test.
    #[test]
    fn bodies_are_recycled_after_their_last_clone_and_the_pool_is_bounded() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new()));
        let mut b = pool.buffer(1 << 20);
        b.extend_from_slice(&[7u8; 1 << 20]);
        let ptr = b.as_ptr();
        let body = pool.freeze(b);
        let clone = body.slice(10..20);
        drop(body);
        // Still referenced by `clone`: a new read must not get it.
        assert_eq!(pool.kept(), 0);
        drop(clone);
        assert_eq!(pool.kept(), 1 << 20);
        let again = pool.buffer(1 << 20);
        assert_eq!(again.as_ptr(), ptr, "the dropped body's buffer is reused");
        assert!(again.is_empty());
        // The smallest idle buffer that fits is taken.
        pool.give_back(Vec::with_capacity(4 << 20));
        pool.give_back(again);
        let smallest_fit = pool.buffer(512 << 10);
        assert_eq!(smallest_fit.as_ptr(), ptr);
        drop(smallest_fit);

        // Returning more than MAX_KEPT keeps at most MAX_KEPT.
        let bodies: Vec<Bytes> = (0..(MAX_KEPT >> 20) + 8)
            .map(|_| {
                let mut b = pool.buffer(1 << 20);
                b.resize(1 << 20, 1);
                pool.freeze(b)
            })
            .collect();
        drop(bodies);
        assert!(pool.kept() <= MAX_KEPT, "{} bytes kept idle", pool.kept());
        assert!(pool.kept() >= MAX_KEPT - (1 << 20));

        // Small and huge bodies are plain Bytes, never kept.
        let before = pool.kept();
        drop(pool.freeze(pool.buffer(100)));
        drop(pool.freeze(Vec::with_capacity(MAX_POOLED + 1)));
        assert_eq!(pool.kept(), before);
    }
}
