//! Image metadata: records keyed by image id (the config digest) with a name index of
//! repo tags and repo digests, checkpointed atomically to `images.json`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::content::sync_dir;
use super::{Error, Result, io_err};

/// One layer of an image as stored here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed (compressed or not).
    pub digest: String,
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    /// Digest of the uncompressed tar (from the image config).
    pub diff_id: String,
    /// Key of the unpacked directory in the layer store.
    pub chain_id: String,
    /// Bytes and inodes the unpacked layer uses on disk.
    pub unpacked_bytes: u64,
    pub unpacked_inodes: u64,
}

/// An image: the result of a pull or an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:` digest of the image config, the image id kubelet and crictl see.
    pub id: String,
    /// Normalized `registry/repository:tag` names.
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:` names, one per repository the image came from.
    pub repo_digests: Vec<String>,
    /// The platform manifest.
    pub manifest_digest: String,
    /// Every blob this image owns: index (if pulled by one), manifest, config, layers.
    pub blobs: Vec<String>,
    pub layers: Vec<LayerRecord>,
    /// Bytes of manifest, config and layer blobs, as containerd reports image size.
    pub size: u64,
    /// `User` from the image config, verbatim (`name`, `uid`, `uid:gid`, ...).
    pub user: String,
    #[serde(default)]
    pub pinned: bool,
}

impl Image {
    /// Uid when the config user is numeric, as CRI's `Image.uid` wants.
    pub fn uid(&self) -> Option<i64> {
        let user = self.user.split(':').next().unwrap_or_default();
        user.parse().ok()
    }

    /// User name when the config user is not numeric, as CRI's `Image.username` wants.
    pub fn username(&self) -> String {
        let user = self.user.split(':').next().unwrap_or_default();
        if user.parse::<i64>().is_ok() {
            String::new()
        } else {
            user.to_string()
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    images: Vec<Image>,
}

#[derive(Debug, Default)]
struct State {
    images: BTreeMap<String, Image>,
    /// repo tag or repo digest → image id
    names: HashMap<String, String>,
}

impl State {
    fn reindex(&mut self) {
        self.names.clear();
        for img in self.images.values() {
            for name in img.repo_tags.iter().chain(&img.repo_digests) {
                self.names.insert(name.clone(), img.id.clone());
            }
        }
    }
}

#[derive(Debug)]
pub struct ImageStore {
    path: PathBuf,
    state: RwLock<State>,
    /// Serializes checkpoint writes so they land in the order of the updates.
    write: std::sync::Mutex<()>,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join("images.json");
        let mut state = State::default();
        match fs::read(&path) {
            Ok(bytes) => {
                let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| Error::Store {
                    path: path.clone(),
                    reason: format!("unreadable checkpoint: {e}"),
                })?;
                for img in cp.images {
                    state.images.insert(img.id.clone(), img);
                }
                state.reindex();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading image store", &path)(e)),
        }
        Ok(Self {
            path,
            state: RwLock::new(state),
            write: std::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Image> {
        self.read().images.get(id).cloned()
    }

    pub fn by_name(&self, name: &str) -> Option<Image> {
        let state = self.read();
        state
            .names
            .get(name)
            .and_then(|id| state.images.get(id))
            .cloned()
    }

    /// Ids starting with `prefix` (hex, with or without `sha256:`).
    pub fn by_id_prefix(&self, prefix: &str) -> Vec<Image> {
        let hex = prefix.strip_prefix("sha256:").unwrap_or(prefix);
        self.read()
            .images
            .values()
            .filter(|img| img.id["sha256:".len()..].starts_with(hex))
            .cloned()
            .collect()
    }

    pub fn list(&self) -> Vec<Image> {
        self.read().images.values().cloned().collect()
    }

    /// Adds an image or merges names into the existing record with the same id. Names
    /// move: a tag that pointed at another image now points at this one only.
    pub fn add(&self, image: Image) -> Result<Image> {
        self.update(|state| {
            for other in state.images.values_mut() {
                if other.id != image.id {
                    other.repo_tags.retain(|t| !image.repo_tags.contains(t));
                }
            }
            let merged = match state.images.get_mut(&image.id) {
                Some(existing) => {
                    for t in &image.repo_tags {
                        if !existing.repo_tags.contains(t) {
                            existing.repo_tags.push(t.clone());
                        }
                    }
                    for d in &image.repo_digests {
                        if !existing.repo_digests.contains(d) {
                            existing.repo_digests.push(d.clone());
                        }
                    }
                    for b in &image.blobs {
                        if !existing.blobs.contains(b) {
                            existing.blobs.push(b.clone());
                        }
                    }
                    existing.clone()
                }
                None => {
                    state.images.insert(image.id.clone(), image.clone());
                    image
                }
            };
            Ok(merged)
        })
    }

    /// Removes an image record; returns it if it existed.
    pub fn remove(&self, id: &str) -> Result<Option<Image>> {
        self.update(|state| Ok(state.images.remove(id)))
    }

    /// Applies a change under the lock and checkpoints it before anyone can observe it.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut state)?;
        state.reindex();
        let cp = Checkpoint {
            version: 1,
            images: state.images.values().cloned().collect(),
        };
        drop(state);
        self.checkpoint(&cp)?;
        Ok(out)
    }

    fn checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let bytes = serde_json::to_vec_pretty(cp).map_err(|e| Error::Store {
            path: self.path.clone(),
            reason: format!("encoding checkpoint: {e}"),
        })?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(io_err("creating checkpoint", dir))?;
        tmp.write_all(&bytes)
            .map_err(io_err("writing checkpoint", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("syncing checkpoint", tmp.path()))?;
        tmp.persist(&self.path).map_err(|e| Error::Io {
            what: "replacing checkpoint",
            path: self.path.clone(),
            source: e.error,
        })?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: char, tags: &[&str]) -> Image {
        Image {
            id: format!("sha256:{}", id.to_string().repeat(64)),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![],
            manifest_digest: String::new(),
            blobs: vec![],
            layers: vec![],
            size: 0,
            user: "1000:1000".into(),
            pinned: false,
        }
    }

    #[test]
    fn names_merge_move_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        store.add(img('a', &["r/x:1"])).expect("add");
        let merged = store.add(img('a', &["r/y:2"])).expect("merge");
        assert_eq!(merged.repo_tags, vec!["r/x:1", "r/y:2"]);
        // the tag r/x:1 moves to image b
        store.add(img('b', &["r/x:1"])).expect("add b");
        let a = store.get(&img('a', &[]).id).expect("a");
        assert_eq!(a.repo_tags, vec!["r/y:2"]);
        assert_eq!(store.by_name("r/x:1").expect("b").id, img('b', &[]).id);

        let reopened = ImageStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.list(), store.list());
        assert_eq!(reopened.by_id_prefix("bbbb").len(), 1);
        assert_eq!(a.uid(), Some(1000));
        assert_eq!(a.username(), "");
    }

    #[test]
    fn corrupt_checkpoint_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("images.json"), b"{not json").expect("write");
        let err = ImageStore::open(dir.path()).expect_err("must fail");
        assert!(err.to_string().contains("unreadable checkpoint"), "{err}");
    }
}
