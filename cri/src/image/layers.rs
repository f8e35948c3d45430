//! Unpacked layers, one directory per chain id (`layers/sha256/<chain-id>`), each an
//! overlayfs lower directory shared by every image whose layer chain contains it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::content::{parse_digest, sync_dir};
use super::{Error, Result, io_err};

/// Chain ids from diff ids (OCI image spec): `chain[0] = diff[0]`,
/// `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(parent.as_bytes());
                h.update(b" ");
                h.update(diff.as_bytes());
                format!("sha256:{}", hex::encode(h.finalize()))
            }
        };
        out.push(next);
    }
    out
}

#[derive(Debug, Clone)]
pub struct LayerStore {
    committed: PathBuf,
    tmp: PathBuf,
}

impl LayerStore {
    /// Opens the store under `root`, discarding layers whose unpacking never finished.
    pub fn open(root: &Path) -> Result<Self> {
        let committed = root.join("layers").join("sha256");
        let tmp = root.join("layers").join("tmp");
        fs::create_dir_all(&committed).map_err(io_err("creating layer dir", &committed))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("clearing unfinished layers", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err("creating layer tmp dir", &tmp))?;
        Ok(Self { committed, tmp })
    }

    pub fn path(&self, chain_id: &str) -> Result<PathBuf> {
        Ok(self.committed.join(parse_digest(chain_id)?))
    }

    pub fn exists(&self, chain_id: &str) -> bool {
        self.path(chain_id).map(|p| p.is_dir()).unwrap_or(false)
    }

    /// A fresh, empty directory to unpack into; removed on drop unless committed.
    pub fn begin(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&self.tmp)
            .map_err(io_err("creating unpack dir", &self.tmp))
    }

    /// Makes an unpacked layer visible under its chain id. The data is flushed to disk
    /// first, so a crash never leaves a committed layer with missing content. If another
    /// pull committed the same chain id meanwhile, ours is discarded.
    pub fn commit(&self, dir: tempfile::TempDir, chain_id: &str) -> Result<()> {
        let dest = self.path(chain_id)?;
        let src = dir.keep();
        syncfs(&src)?;
        match fs::rename(&src, &dest) {
            Ok(()) => sync_dir(&self.committed),
            Err(e) if dest.is_dir() => {
                tracing::debug!(chain_id, err = %e, "layer committed concurrently, discarding ours");
                fs::remove_dir_all(&src).map_err(io_err("removing duplicate layer", &src))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&src);
                Err(Error::Io {
                    what: "committing layer",
                    path: dest,
                    source: e,
                })
            }
        }
    }

    /// Removes a layer. It first leaves the committed namespace by a rename, so a crash
    /// midway never leaves a half-deleted layer that looks whole.
    pub fn remove(&self, chain_id: &str) -> Result<()> {
        let path = self.path(chain_id)?;
        let doomed = self.tmp.join(format!("rm-{}", parse_digest(chain_id)?));
        match fs::rename(&path, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed).map_err(io_err("removing layer", &doomed)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io {
                what: "removing layer",
                path,
                source: e,
            }),
        }
    }

    /// Chain ids of every committed layer.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.committed).map_err(io_err("listing layers", &self.committed))?
        {
            let entry = entry.map_err(io_err("listing layers", &self.committed))?;
            out.push(format!("sha256:{}", entry.file_name().to_string_lossy()));
        }
        Ok(out)
    }
}

/// Bytes and inodes under `dir`, without following symlinks (for layers whose usage was
/// not recorded, e.g. after a crash between unpack and image record).
pub fn dir_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            inodes += 1;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                bytes += md.len();
            }
        }
    }
    (bytes, inodes)
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).map_err(io_err("opening layer for sync", dir))?;
    nix::unistd::syncfs(&f).map_err(|e| Error::Io {
        what: "syncing layer",
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(ids[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn uncommitted_layers_vanish_and_commit_is_atomic() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = LayerStore::open(root.path()).expect("open");
        let id = format!("sha256:{}", "c".repeat(64));
        {
            let dir = store.begin().expect("begin");
            fs::write(dir.path().join("f"), b"x").expect("write");
        }
        assert!(!store.exists(&id));
        let dir = store.begin().expect("begin");
        fs::write(dir.path().join("f"), b"x").expect("write");
        // a crash leaves a directory in tmp: reopening discards it
        let leaked = dir.keep();
        let store = LayerStore::open(root.path()).expect("reopen");
        assert!(!leaked.exists());
        let dir = store.begin().expect("begin");
        fs::write(dir.path().join("f"), b"x").expect("write");
        store.commit(dir, &id).expect("commit");
        assert!(store.exists(&id));
        assert_eq!(store.list().expect("list"), vec![id.clone()]);
        store.remove(&id).expect("remove");
        store.remove(&id).expect("remove is idempotent");
        assert!(!store.exists(&id));
    }
}
