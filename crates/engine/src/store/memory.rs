//! An object store in memory, for engine tests: the same semantics as the S3
//! and file stores (conditional writes, ranged reads, sorted listings), plus
//! what a real server cannot give a test on demand:
//!
//! - **scripted faults**: [`MemoryStore::fail`] queues a failure for the next
//!   matching operation, so a test says exactly which request fails and how,
//!   instead of drawing faults at random (a random draw makes a test fail
//!   "by chance" when it happens to inject nothing);
//! - **a settable clock** for `last_modified` ([`MemoryStore::set_now`],
//!   [`MemoryStore::advance`]), so grace periods and clock steps are tested
//!   without waiting;
//! - **a store that ignores conditional writes**
//!   ([`MemoryStore::ignore_conditional_writes`]), like some S3 clones do;
//! - **request counts** by operation ([`MemoryStore::requests`]).
//!
//! It is `Clone`: clones share the same objects, so a test can keep a handle
//! while the engine owns another.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{ObjectMeta, ObjectStore, StoreError, check_key};

/// The operations of [`ObjectStore`], to aim a scripted fault and to count
/// requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`ObjectStore::put`].
    Put,
    /// [`ObjectStore::put_if_absent`].
    PutIfAbsent,
    /// [`ObjectStore::put_if_match`].
    PutIfMatch,
    /// [`ObjectStore::get`] and [`ObjectStore::get_range`].
    Get,
    /// [`ObjectStore::list`].
    List,
    /// [`ObjectStore::delete`].
    Delete,
    /// [`ObjectStore::head`].
    Head,
}

/// How a scripted fault fails an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request fails and changes nothing (a 503 or a refused connection):
    /// [`StoreError::Unreachable`], which is transient.
    Fail,
    /// A write is applied but its caller gets an error (the connection broke
    /// after the server stored the object): the ambiguous failure that a
    /// retrying writer must survive. Behaves as [`Fault::Fail`] for reads.
    FailAfterWrite,
}

#[derive(Debug, Clone)]
struct Object {
    body: Bytes,
    modified: DateTime<Utc>,
    version: u64,
}

#[derive(Debug)]
struct Scripted {
    op: Op,
    key_prefix: String,
    fault: Fault,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    /// `None`: the real clock.
    now: Option<DateTime<Utc>>,
    next_version: u64,
    faults: VecDeque<Scripted>,
    ignore_conditionals: bool,
    requests: HashMap<Op, u64>,
}

/// A shared in-memory store; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    name: String,
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store; `name` appears in [`ObjectStore::describe`] and errors.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not hide this test's result.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fixes the store's clock (used for `last_modified`) at `t`.
    pub fn set_now(&self, t: DateTime<Utc>) {
        self.lock().now = Some(t);
    }

    /// Moves the store's clock by `d` (negative steps back), starting from
    /// the real time if it was not set.
    pub fn advance(&self, d: chrono::Duration) {
        let mut s = self.lock();
        let now = s.now.unwrap_or_else(Utc::now);
        s.now = Some(now + d);
    }

    /// Queues a fault: the next `op` on a key starting with `key_prefix`
    /// fails as `fault`. Faults fire in the order queued, each once.
    pub fn fail(&self, op: Op, key_prefix: &str, fault: Fault) {
        self.lock().faults.push_back(Scripted {
            op,
            key_prefix: key_prefix.to_string(),
            fault,
        });
    }

    /// Faults queued by [`MemoryStore::fail`] that have not fired yet.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Makes conditional writes behave as plain puts (no 412), as some
    /// S3-compatible servers do.
    pub fn ignore_conditional_writes(&self, on: bool) {
        self.lock().ignore_conditionals = on;
    }

    /// Requests made so far of `op`.
    pub fn requests(&self, op: Op) -> u64 {
        self.lock().requests.get(&op).copied().unwrap_or(0)
    }

    /// Every key stored, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    /// Replaces an object's bytes without changing anything else, as a
    /// hostile bucket writer or bit rot would (tests of verification).
    pub fn tamper(&self, key: &str, body: Bytes) {
        if let Some(o) = self.lock().objects.get_mut(key) {
            o.body = body;
        }
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            key: format!("{}/{key}", self.name),
        }
    }

    /// Counts the request, checks the key, and fires the first queued fault
    /// that matches: `Err` to fail at once, `Ok(true)` to apply a write and
    /// fail afterwards.
    fn begin(&self, s: &mut State, op: Op, key: &str) -> Result<bool, StoreError> {
        *s.requests.entry(op).or_default() += 1;
        if op != Op::List {
            check_key(key)?;
        }
        let Some(i) = s
            .faults
            .iter()
            .position(|f| f.op == op && key.starts_with(&f.key_prefix))
        else {
            return Ok(false);
        };
        let fault = s.faults.remove(i).map(|f| f.fault);
        let writes = matches!(op, Op::Put | Op::PutIfAbsent | Op::PutIfMatch | Op::Delete);
        match fault {
            Some(Fault::FailAfterWrite) if writes => Ok(true),
            _ => Err(self.injected(op, key)),
        }
    }

    fn injected(&self, op: Op, key: &str) -> StoreError {
        StoreError::Unreachable {
            bucket: self.name.clone(),
            endpoint: "memory".into(),
            detail: format!("scripted fault on {op:?} {key}"),
        }
    }

    fn store(&self, s: &mut State, key: &str, body: Bytes) -> String {
        s.next_version += 1;
        let version = s.next_version;
        let modified = s.now.unwrap_or_else(Utc::now);
        s.objects.insert(
            key.to_string(),
            Object {
                body,
                modified,
                version,
            },
        );
        version.to_string()
    }

    fn meta(key: &str, o: &Object) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: o.body.len() as u64,
            last_modified: Some(o.modified),
            etag: Some(o.version.to_string()),
        }
    }

    /// Applies a write, then fails it if a [`Fault::FailAfterWrite`] fired.
    fn write<T>(
        &self,
        op: Op,
        key: &str,
        apply: impl FnOnce(&Self, &mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut s = self.lock();
        let fail_after = self.begin(&mut s, op, key)?;
        let out = apply(self, &mut s)?;
        if fail_after {
            return Err(self.injected(op, key));
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.write(Op::Put, key, |me, s| {
            me.store(s, key, body);
            Ok(())
        })
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.write(Op::PutIfAbsent, key, |me, s| {
            if s.objects.contains_key(key) && !s.ignore_conditionals {
                return Err(StoreError::AlreadyExists {
                    key: format!("{}/{key}", me.name),
                });
            }
            me.store(s, key, body);
            Ok(())
        })
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let mut s = self.lock();
        self.begin(&mut s, Op::Get, key)?;
        s.objects
            .get(key)
            .map(|o| o.body.clone())
            .ok_or_else(|| self.not_found(key))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let mut s = self.lock();
        self.begin(&mut s, Op::Get, key)?;
        let body = &s.objects.get(key).ok_or_else(|| self.not_found(key))?.body;
        let end = (range.end as usize).min(body.len());
        let start = (range.start as usize).min(end);
        Ok(body.slice(start..end))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut s = self.lock();
        self.begin(&mut s, Op::List, prefix)?;
        Ok(s.objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Self::meta(k, o))
            .collect())
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        use std::ops::Bound;
        let mut s = self.lock();
        self.begin(&mut s, Op::List, prefix)?;
        let from = if start_after >= prefix {
            Bound::Excluded(start_after.to_string())
        } else {
            Bound::Included(prefix.to_string())
        };
        Ok(s.objects
            .range((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Self::meta(k, o))
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.write(Op::Delete, key, |_, s| {
            s.objects.remove(key);
            Ok(())
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let mut s = self.lock();
        self.begin(&mut s, Op::Head, key)?;
        s.objects
            .get(key)
            .map(|o| Self::meta(key, o))
            .ok_or_else(|| self.not_found(key))
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<String, StoreError> {
        self.write(Op::PutIfMatch, key, |me, s| {
            if !s.ignore_conditionals {
                match s.objects.get(key) {
                    None => return Err(me.not_found(key)),
                    Some(o) if o.version.to_string() != etag => {
                        return Err(StoreError::PreconditionFailed {
                            key: format!("{}/{key}", me.name),
                        });
                    }
                    Some(_) => {}
                }
            }
            Ok(me.store(s, key, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaves_as_an_object_store() {
        super::super::conformance::run(&MemoryStore::new("t")).await;
    }

    #[tokio::test]
    async fn scripted_faults_fire_once_in_order_on_matching_keys() {
        let s = MemoryStore::new("t");
        s.fail(Op::Put, "manifests/", Fault::Fail);
        s.fail(Op::Put, "", Fault::FailAfterWrite);
        // The first put does not match the first fault's prefix: the second
        // fault (any key) fires, after the write.
        let err = s.put("chunks/a", Bytes::from_static(b"1")).await;
        assert!(err.unwrap_err().is_transient());
        assert_eq!(&s.get("chunks/a").await.unwrap()[..], b"1");
        let err = s.put("manifests/x", Bytes::from_static(b"2")).await;
        assert!(err.is_err());
        assert!(s.get("manifests/x").await.is_err(), "Fail writes nothing");
        assert_eq!(s.pending_faults(), 0);
        s.put("manifests/x", Bytes::from_static(b"2"))
            .await
            .unwrap();
        assert_eq!(s.requests(Op::Put), 3);
    }

    #[tokio::test]
    async fn clock_and_ignored_conditionals_are_settable() {
        let s = MemoryStore::new("t");
        let t0 = "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        s.set_now(t0);
        s.put("a", Bytes::new()).await.unwrap();
        s.advance(chrono::Duration::hours(-2));
        s.put("b", Bytes::new()).await.unwrap();
        assert_eq!(s.head("a").await.unwrap().last_modified, Some(t0));
        assert_eq!(
            s.head("b").await.unwrap().last_modified,
            Some(t0 - chrono::Duration::hours(2))
        );
        s.ignore_conditional_writes(true);
        s.put_if_absent("a", Bytes::from_static(b"over"))
            .await
            .unwrap();
        assert_eq!(&s.get("a").await.unwrap()[..], b"over");
    }
}
