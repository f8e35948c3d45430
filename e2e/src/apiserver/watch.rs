//! Watches: a newline-delimited stream of `{"type": ..., "object": ...}` events read from
//! the store's history.
//!
//! As the real server: without a resourceVersion (or with `0`) a watch starts with a
//! synthetic `ADDED` for every object that matches; with one it resumes just after it,
//! or sends a single `ERROR` event carrying a 410 `Expired` Status when the history no
//! longer reaches back that far. A selected watch sees an object enter its selection as
//! `ADDED` and leave it as `DELETED`. `allowWatchBookmarks` adds periodic `BOOKMARK`
//! events with the resourceVersion the watch has caught up to; `sendInitialEvents` ends
//! the initial `ADDED`s with a bookmark annotated `k8s.io/initial-events-end`;
//! `timeoutSeconds` ends the stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::registry::{Registry, to_external};
use super::resources::Resource;
use super::selectors::Selector;
use super::status::ApiError;
use super::store::{self, EventType};
use super::table::{self, IncludeObject};

/// What a watch asked for.
pub struct Params {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub selector: Selector,
    /// None: start from the current state (no resourceVersion, or `0`).
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
    /// Events carry single-row Tables of this version instead of objects.
    pub table: Option<(&'static str, IncludeObject)>,
}

/// A running watch: call [`Watch::next_chunk`] until it returns none.
pub struct Watch {
    registry: Arc<Registry>,
    params: Params,
    changes: watch::Receiver<u64>,
    last_rv: u64,
    pending: VecDeque<Bytes>,
    deadline: Instant,
    next_bookmark: Instant,
    started: bool,
    done: bool,
}

fn encode(kind: &str, object: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

impl Watch {
    pub fn new(registry: Arc<Registry>, params: Params) -> Self {
        let changes = registry.store.subscribe();
        let now = Instant::now();
        Self {
            deadline: now + params.timeout,
            next_bookmark: now + params.bookmark_interval,
            registry,
            changes,
            last_rv: 0,
            pending: VecDeque::new(),
            started: false,
            done: false,
            params,
        }
    }

    fn in_scope(&self, key: &store::Key) -> bool {
        let storage = self.params.res.storage();
        key.group == storage.group
            && key.resource == storage.resource
            && self
                .params
                .namespace
                .as_deref()
                .is_none_or(|ns| key.namespace == ns)
    }

    fn push(&mut self, kind: &str, stored: &Value) {
        let obj = to_external(self.params.res, stored);
        let obj = match self.params.table {
            Some((version, include)) => {
                let rv = super::registry::resource_version(&obj);
                table::convert(self.params.res, &[obj], Some(rv), include, version)
            }
            None => obj,
        };
        self.pending.push_back(encode(kind, obj));
    }

    fn bookmark(&mut self, initial_events_end: bool) {
        let mut metadata =
            json!({"resourceVersion": self.last_rv.to_string(), "creationTimestamp": null});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({
            "kind": self.params.res.kind,
            "apiVersion": self.params.res.api_version(),
            "metadata": metadata,
        });
        self.pending.push_back(encode("BOOKMARK", obj));
    }

    fn start(&mut self) {
        self.started = true;
        // Mark the current version seen: any write after this wakes the watch.
        self.changes.borrow_and_update();
        match self.params.resource_version {
            Some(rv) if !self.params.send_initial_events => self.last_rv = rv,
            _ => {
                let ns = self.params.namespace.clone();
                let (items, rv) = self
                    .registry
                    .store
                    .snapshot(self.params.res.storage(), ns.as_deref());
                for (_, obj) in items {
                    if self.params.selector.matches(&obj) {
                        self.push("ADDED", &obj);
                    }
                }
                self.last_rv = rv;
                if self.params.send_initial_events && self.params.bookmarks {
                    self.bookmark(true);
                }
            }
        }
    }

    fn catch_up(&mut self) {
        self.changes.borrow_and_update();
        match self.registry.store.since(self.last_rv) {
            Err(store::Error::Expired { asked, oldest }) => {
                self.pending.push_back(encode(
                    "ERROR",
                    ApiError::expired(asked, oldest).to_status(),
                ));
                self.done = true;
            }
            Ok((events, rv)) => {
                for e in events {
                    if !self.in_scope(&e.key) {
                        continue;
                    }
                    let sel = &self.params.selector;
                    let now = sel.matches(&e.object);
                    let before = e.previous.as_ref().is_some_and(|p| sel.matches(p));
                    let kind = match (e.kind, before, now) {
                        (EventType::Added, _, true) => "ADDED",
                        (EventType::Modified, true, true) => "MODIFIED",
                        (EventType::Modified, false, true) => "ADDED",
                        (EventType::Modified, true, false) => "DELETED",
                        (EventType::Deleted, true, _) => "DELETED",
                        _ => continue,
                    };
                    self.push(kind, &e.object);
                }
                self.last_rv = self.last_rv.max(rv);
            }
        }
    }

    /// The next piece of the stream, or none when the watch is over.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            if !self.started {
                self.start();
                continue;
            }
            self.catch_up();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            let bookmarks = self.params.bookmarks;
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        self.done = true;
                    }
                }
                () = tokio::time::sleep_until(self.next_bookmark), if bookmarks => {
                    self.next_bookmark = Instant::now() + self.params.bookmark_interval;
                    self.bookmark(false);
                }
                () = tokio::time::sleep_until(self.deadline) => self.done = true,
            }
        }
    }
}
