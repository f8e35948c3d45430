//! Records of sandboxes and containers: keyed by id with a unique name index, changed
//! only through `update`, each checkpointed atomically to `<dir>/<id>/<file>` so that a
//! restarted server finds them again.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} name {name:?} is reserved for {id}")]
    NameTaken {
        kind: &'static str,
        name: String,
        id: String,
    },
    #[error("{kind} id prefix {prefix:?} is ambiguous")]
    Ambiguous { kind: &'static str, prefix: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} record {path}: {reason}")]
    Corrupt {
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a stored record must tell the store.
pub trait Record: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// `sandbox` or `container`, for messages.
    const KIND: &'static str;
    /// File name of the checkpoint inside the record's directory.
    const FILE: &'static str;
    fn id(&self) -> &str;
    /// The unique name (CRI metadata name, namespace, uid, attempt).
    fn name(&self) -> String;
}

#[derive(Debug)]
struct State<T> {
    records: BTreeMap<String, T>,
    names: HashMap<String, String>,
}

/// A store of records of one kind.
#[derive(Debug)]
pub struct Store<T> {
    dir: PathBuf,
    state: Mutex<State<T>>,
}

impl<T: Record> Store<T> {
    /// Opens the store, loading every checkpoint under `dir`. A record that cannot be
    /// read is reported and skipped (its directory stays for inspection), never fatal.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir).map_err(io("creating store", dir))?;
        let mut state = State {
            records: BTreeMap::new(),
            names: HashMap::new(),
        };
        for entry in std::fs::read_dir(dir).map_err(io("listing store", dir))? {
            let entry = entry.map_err(io("listing store", dir))?;
            let path = entry.path().join(T::FILE);
            let record: T = match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(path = %path.display(), err = %e, "skipping corrupt record");
                        continue;
                    }
                },
                // A directory without a record: creation died before its checkpoint.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %entry.path().display(), "removing {} left without a record", T::KIND);
                    // What creation mounted there (a rootfs, image volumes) goes first:
                    // never delete through a mount.
                    if let Err(e) = super::rootfs::unmount_under(&entry.path()) {
                        tracing::warn!(dir = %entry.path().display(), err = %e, "unmounting what a half-created {} left", T::KIND);
                        continue;
                    }
                    let _ = std::fs::remove_dir_all(entry.path());
                    continue;
                }
                Err(e) => return Err(io("reading record", &path)(e)),
            };
            state.names.insert(record.name(), record.id().to_string());
            state.records.insert(record.id().to_string(), record);
        }
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        }))
    }

    /// Directory that belongs to the record `id`.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A panic while holding the lock cannot leave a half-updated map: every update
        // builds the new record first and swaps it in.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves the record's name; fails if it is taken.
    pub fn reserve(&self, record: &T) -> Result<()> {
        let mut st = self.lock();
        let name = record.name();
        if let Some(id) = st.names.get(&name) {
            return Err(Error::NameTaken {
                kind: T::KIND,
                name,
                id: id.clone(),
            });
        }
        st.names.insert(name, record.id().to_string());
        Ok(())
    }

    /// Drops a name reservation that never became a record.
    pub fn release(&self, record: &T) {
        let mut st = self.lock();
        if !st.records.contains_key(record.id()) {
            st.names.remove(&record.name());
        }
    }

    /// Adds a record (its name reserved before) and checkpoints it.
    pub fn add(&self, record: T) -> Result<T> {
        self.checkpoint(&record)?;
        let mut st = self.lock();
        st.names.insert(record.name(), record.id().to_string());
        st.records.insert(record.id().to_string(), record.clone());
        Ok(record)
    }

    /// The record with this id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<T> {
        let st = self.lock();
        if let Some(r) = st.records.get(id) {
            return Ok(r.clone());
        }
        let mut found = st
            .records
            .range(id.to_string()..)
            .take_while(|(k, _)| k.starts_with(id));
        match (id.is_empty(), found.next(), found.next()) {
            (false, Some((_, r)), None) => Ok(r.clone()),
            (false, Some(_), Some(_)) => Err(Error::Ambiguous {
                kind: T::KIND,
                prefix: id.into(),
            }),
            _ => Err(Error::NotFound {
                kind: T::KIND,
                id: id.into(),
            }),
        }
    }

    pub fn list(&self) -> Vec<T> {
        self.lock().records.values().cloned().collect()
    }

    /// Changes a record through `f` and checkpoints the result before it is visible.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut T)) -> Result<T> {
        let mut st = self.lock();
        let Some(current) = st.records.get(id) else {
            return Err(Error::NotFound {
                kind: T::KIND,
                id: id.into(),
            });
        };
        let mut next = current.clone();
        f(&mut next);
        // Checkpoint under the lock so concurrent updates land on disk in order.
        self.checkpoint(&next)?;
        st.records.insert(id.to_string(), next.clone());
        Ok(next)
    }

    /// Forgets a record and deletes its directory.
    pub fn remove(&self, id: &str) -> Result<Option<T>> {
        let removed = {
            let mut st = self.lock();
            let removed = st.records.remove(id);
            if let Some(r) = &removed {
                st.names.remove(&r.name());
            }
            removed
        };
        let dir = self.dir_of(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing record directory", &dir)(e)),
        }
        Ok(removed)
    }

    fn checkpoint(&self, record: &T) -> Result<()> {
        let dir = self.dir_of(record.id());
        std::fs::create_dir_all(&dir).map_err(io("creating record directory", &dir))?;
        let path = dir.join(T::FILE);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Corrupt {
            kind: T::KIND,
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes).map_err(io("writing record", &path))
    }
}

/// Writes `bytes` to `path` by way of a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Protobuf messages stored inside JSON records: their encoded bytes as base64, so the
/// record keeps every field kubelet sent, also ones this build does not know.
pub mod pb {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: prost::Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec()))
    }

    pub fn deserialize<'de, M: prost::Message + Default, D: Deserializer<'de>>(
        d: D,
    ) -> Result<M, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        id: String,
        name: String,
        n: u32,
        #[serde(with = "pb")]
        meta: proto::v1::PodSandboxMetadata,
    }

    impl Record for Rec {
        const KIND: &'static str = "thing";
        const FILE: &'static str = "thing.json";
        fn id(&self) -> &str {
            &self.id
        }
        fn name(&self) -> String {
            self.name.clone()
        }
    }

    fn rec(id: &str, name: &str) -> Rec {
        Rec {
            id: id.into(),
            name: name.into(),
            n: 0,
            meta: proto::v1::PodSandboxMetadata {
                name: name.into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 2,
            },
        }
    }

    #[test]
    fn add_update_reload_remove() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io("tempdir", Path::new("/tmp")))?;
        let store = Store::<Rec>::open(dir.path())?;
        let a = rec("abc123", "a");
        store.reserve(&a)?;
        store.add(a.clone())?;
        assert!(matches!(
            store.reserve(&rec("other", "a")),
            Err(Error::NameTaken { .. })
        ));
        store.update("abc123", |r| r.n = 7)?;
        assert_eq!(store.get("abc")?.n, 7, "unique prefix");
        store.reserve(&rec("abd999", "b"))?;
        store.add(rec("abd999", "b"))?;
        assert!(matches!(store.get("ab"), Err(Error::Ambiguous { .. })));
        assert!(matches!(store.get(""), Err(Error::NotFound { .. })));

        let reopened = Store::<Rec>::open(dir.path())?;
        let got = reopened.get("abc123")?;
        assert_eq!(got.n, 7);
        assert_eq!(got.meta, a.meta, "protobuf field survives the checkpoint");
        assert!(reopened.reserve(&rec("x", "a")).is_err(), "names reloaded");

        reopened.remove("abc123")?;
        assert!(!dir.path().join("abc123").exists());
        assert!(
            reopened.remove("abc123")?.is_none(),
            "second remove is fine"
        );
        reopened.reserve(&rec("x", "a"))?;
        Ok(())
    }

    #[test]
    fn corrupt_and_orphan_records_are_skipped() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io("tempdir", Path::new("/tmp")))?;
        let bad = dir.path().join("bad");
        std::fs::create_dir_all(&bad).map_err(io("mkdir", &bad))?;
        std::fs::write(bad.join("thing.json"), b"{not json").map_err(io("write", &bad))?;
        let orphan = dir.path().join("orphan");
        std::fs::create_dir_all(&orphan).map_err(io("mkdir", &orphan))?;
        let store = Store::<Rec>::open(dir.path())?;
        assert!(store.list().is_empty());
        assert!(bad.exists(), "corrupt record kept for inspection");
        assert!(!orphan.exists(), "half-created directory cleaned");
        Ok(())
    }
}
