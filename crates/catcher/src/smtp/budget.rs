//! A global cap on message content held in memory across all SMTP sessions.
//!
//! Each session already drops content beyond `MP_MAX_MESSAGE_SIZE`, but many
//! sessions streaming large messages at once (N × 50 MB) could still exhaust
//! a pod's memory. Every session reserves the buffer capacity it grows into
//! from one shared [`DataBudget`]; when a reservation would exceed the cap,
//! that message's content is thrown away as it arrives and the client is
//! answered `452 4.3.1` (a temporary error: it retries later), while every
//! other session goes on. Reservations are released when the message has
//! been stored, refused or abandoned (the session is dropped). Storing a
//! message holds more than its raw bytes (parsed parts, search text, the
//! compressed copy), so the server reserves that too while it stores, and
//! answers `452 4.3.1` when it is not free (`smtp::server`). The send API
//! reserves from the same budget and may wait a little for it
//! ([`DataBudget::reserve_within`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Bytes of message content the SMTP sessions may hold at once.
#[derive(Debug)]
pub struct DataBudget {
    limit: usize,
    used: AtomicUsize,
    /// Woken at every release, for [`DataBudget::reserve_within`].
    freed: Notify,
}

impl DataBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// The cap in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether nothing is left to reserve.
    pub fn is_exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    /// Reserves `n` bytes if they fit under the cap.
    pub fn try_reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Reserves `n` bytes if they fit, returned when the guard is dropped.
    pub fn reserve(self: &std::sync::Arc<Self>, n: usize) -> Option<Reservation> {
        self.try_reserve(n).then(|| Reservation {
            budget: self.clone(),
            bytes: n,
        })
    }

    /// Reserves `n` bytes, waiting up to `wait` for others to release
    /// them; `None` when they did not fit in that time.
    pub async fn reserve_within(
        self: &std::sync::Arc<Self>,
        n: usize,
        wait: Duration,
    ) -> Option<Reservation> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before trying, so a release in between wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(r) = self.reserve(n) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }

    /// Returns `n` bytes reserved earlier.
    pub fn release(&self, n: usize) {
        let prev = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "released more than reserved");
        self.freed.notify_waiters();
    }
}

/// Bytes reserved from a [`DataBudget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: std::sync::Arc<DataBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_respect_the_cap_and_come_back() {
        let b = DataBudget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.try_reserve(40));
        assert!(b.is_exhausted());
        assert!(!b.try_reserve(1));
        b.release(60);
        assert_eq!(b.used(), 40);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(usize::MAX));
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_what_is_released() {
        let b = std::sync::Arc::new(DataBudget::new(100));
        let held = b.reserve(100).unwrap();
        assert!(
            b.reserve_within(1, Duration::from_millis(10))
                .await
                .is_none()
        );
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve_within(50, Duration::from_secs(600)).await })
        };
        drop(held);
        let got = waiter.await.unwrap().expect("reserved once released");
        assert_eq!(b.used(), 50);
        drop(got);
        assert_eq!(b.used(), 0);
    }
}
