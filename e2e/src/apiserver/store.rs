//! Objects keyed by (resource, namespace, name), one global resourceVersion counter, and
//! the bounded history of changes that watches read from.
//!
//! Like etcd behind the real server: every write bumps the counter and stamps the object's
//! `metadata.resourceVersion` (a decimal string); a write that changes nothing is not a
//! write (no new resourceVersion, no event); a watch can resume from any resourceVersion
//! still in the history and gets `Expired` for an older one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::resources::Gvr;

/// Where an object lives: its storage resource, namespace (empty when cluster-scoped) and
/// name. Ordered as etcd keys are, so lists come out sorted by namespace then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: &'static str,
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(storage: Gvr, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: storage.group,
            resource: storage.resource,
            namespace: namespace.unwrap_or_default().to_string(),
            name: name.to_string(),
        }
    }
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    /// The object after the change; for a deletion, its last state stamped with the
    /// deletion's resourceVersion.
    pub object: Value,
    /// The object before the change (none for an addition), so a filtered watch can tell
    /// an object entering its selection from one leaving it.
    pub previous: Option<Value>,
}

/// What a [`Store::write`] closure decides.
#[derive(Debug)]
pub enum Write {
    Put(Value),
    Remove,
    Keep,
}

/// What a [`Store::write`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The object as stored, with its new resourceVersion.
    Stored(Value),
    /// The object removed, stamped with the deletion's resourceVersion.
    Removed(Value),
    /// Nothing written: the object as it is (none if it does not exist).
    Kept(Option<Value>),
}

/// Store errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The history no longer reaches back to the resourceVersion asked for.
    #[error("too old resource version: {asked} ({oldest})")]
    Expired { asked: u64, oldest: u64 },
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    /// Events after this resourceVersion are all in `history`.
    floor: u64,
    limit: usize,
}

/// The object store.
pub struct Store {
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
}

impl Store {
    /// An empty store keeping the last `history` events.
    pub fn new(history: usize) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: 0,
                limit: history.max(1),
            }),
            changes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The resourceVersion of the last write.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Wakes on every write with the new resourceVersion.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// The objects of `storage` (in `namespace`, or all), sorted, and the resourceVersion
    /// they were read at.
    pub fn list(&self, storage: Gvr, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| k.group == storage.group && k.resource == storage.resource)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Reads the object at `key` and writes what `decide` returns, atomically: nothing
    /// else writes between the read and the write (a guaranteed update).
    pub fn write<T, E>(
        &self,
        key: &Key,
        decide: impl FnOnce(Option<&Value>) -> Result<(Write, T), E>,
    ) -> Result<(Outcome, T), E> {
        let mut inner = self.lock();
        let current = inner.objects.get(key);
        let (write, extra) = decide(current)?;
        let outcome = match write {
            Write::Keep => Outcome::Kept(current.cloned()),
            Write::Put(mut obj) => {
                if let Some(old) = current {
                    set_rv(&mut obj, rv_of(old));
                    if &obj == old {
                        return Ok((Outcome::Kept(Some(obj)), extra));
                    }
                }
                let previous = current.cloned();
                let rv = inner.rv + 1;
                set_rv(&mut obj, rv);
                let kind = if previous.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                inner.objects.insert(key.clone(), obj.clone());
                inner.record(rv, kind, key, obj.clone(), previous);
                Outcome::Stored(obj)
            }
            Write::Remove => match inner.objects.remove(key) {
                None => Outcome::Kept(None),
                Some(old) => {
                    let rv = inner.rv + 1;
                    let mut gone = old.clone();
                    set_rv(&mut gone, rv);
                    inner.record(rv, EventType::Deleted, key, gone.clone(), Some(old));
                    Outcome::Removed(gone)
                }
            },
        };
        let rv = inner.rv;
        drop(inner);
        self.changes.send_replace(rv);
        Ok((outcome, extra))
    }

    /// The events after resourceVersion `rv` and the resourceVersion they reach, or
    /// `Expired` when the history no longer goes back that far.
    pub fn since(&self, rv: u64) -> Result<(Vec<Arc<Event>>, u64), Error> {
        let inner = self.lock();
        if rv < inner.floor {
            return Err(Error::Expired {
                asked: rv,
                oldest: inner.floor,
            });
        }
        let start = inner.history.partition_point(|e| e.rv <= rv);
        let events = inner.history.range(start..).cloned().collect();
        Ok((events, inner.rv))
    }

    /// Every object of `storage` (in `namespace`, or all) as synthetic events, and the
    /// resourceVersion they were read at: how a watch without a resourceVersion starts.
    pub fn snapshot(&self, storage: Gvr, namespace: Option<&str>) -> (Vec<(Key, Value)>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| k.group == storage.group && k.resource == storage.resource)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (items, inner.rv)
    }
}

impl Inner {
    fn record(
        &mut self,
        rv: u64,
        kind: EventType,
        key: &Key,
        object: Value,
        previous: Option<Value>,
    ) {
        self.rv = rv;
        self.history.push_back(Arc::new(Event {
            rv,
            kind,
            key: key.clone(),
            object,
            previous,
        }));
        while self.history.len() > self.limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
    }
}

/// The resourceVersion of a stored object (0 when missing or malformed).
pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_rv(obj: &mut Value, rv: u64) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(Gvr::CONFIGMAPS, Some("default"), name)
    }

    fn put(store: &Store, name: &str, data: &str) -> Outcome {
        let obj = json!({"metadata": {"name": name}, "data": {"k": data}});
        store
            .write(&key(name), |_| Ok::<_, ()>((Write::Put(obj), ())))
            .expect("write")
            .0
    }

    #[test]
    fn every_write_bumps_one_global_counter() {
        let store = Store::new(10);
        let Outcome::Stored(a) = put(&store, "a", "1") else {
            panic!("not stored")
        };
        let Outcome::Stored(b) = put(&store, "b", "1") else {
            panic!("not stored")
        };
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert_eq!(store.resource_version(), 2);
    }

    #[test]
    fn a_write_that_changes_nothing_is_not_a_write() {
        let store = Store::new(10);
        put(&store, "a", "1");
        assert!(matches!(put(&store, "a", "1"), Outcome::Kept(Some(_))));
        assert_eq!(store.resource_version(), 1);
        assert_eq!(store.since(0).expect("history").0.len(), 1);
    }

    #[test]
    fn history_is_bounded_and_older_versions_expire() {
        let store = Store::new(3);
        for i in 0..5 {
            put(&store, "a", &i.to_string());
        }
        assert!(matches!(
            store.since(1),
            Err(Error::Expired {
                asked: 1,
                oldest: 2
            })
        ));
        let (events, rv) = store.since(2).expect("in history");
        assert_eq!(rv, 5);
        assert_eq!(events.iter().map(|e| e.rv).collect::<Vec<_>>(), [3, 4, 5]);
    }

    #[test]
    fn removal_is_an_event_with_a_new_version() {
        let store = Store::new(10);
        put(&store, "a", "1");
        let (outcome, ()) = store
            .write(&key("a"), |_| Ok::<_, ()>((Write::Remove, ())))
            .expect("write");
        let Outcome::Removed(gone) = outcome else {
            panic!("not removed")
        };
        assert_eq!(gone["metadata"]["resourceVersion"], "2");
        let (events, _) = store.since(1).expect("history");
        assert_eq!(events[0].kind, EventType::Deleted);
        assert!(store.get(&key("a")).is_none());
    }
}
