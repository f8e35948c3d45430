//! Certificate files as upstream's certificate store keeps them: each issued pair in
//! `<prefix>-<YYYY-MM-DD-HH-MM-SS>.pem` (chain, then key; mode 0600), and
//! `<prefix>-current.pem` a symlink to the newest, swapped atomically (a new symlink
//! renamed over the old), so a reader sees the old pair or the new one, never half.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::pki::Pair;
use super::{Error, Result};

/// The client certificate's files: `kubelet-client-*.pem`.
pub const CLIENT: &str = "kubelet-client";
/// The serving certificate's files (serverTLSBootstrap): `kubelet-server-*.pem`.
pub const SERVING: &str = "kubelet-server";

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    prefix: &'static str,
}

impl Store {
    pub fn new(dir: &Path, prefix: &'static str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            prefix,
        }
    }

    /// `<dir>/<prefix>-current.pem`: what kubeconfigs and servers point at.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}-current.pem", self.prefix))
    }

    /// The current pair; none when there is no current file (or its target is gone).
    pub fn load(&self) -> Result<Option<Pair>> {
        let path = self.current_path();
        let pem = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Read { path, source }),
        };
        Pair::from_pem(&pem, &pem)
            .map(Some)
            .map_err(|reason| Error::InvalidPem { path, reason })
    }

    /// Writes a new pair (issued at `now`) and makes it current; returns its file.
    pub fn update(&self, cert_pem: &[u8], key_pem: &[u8], now: SystemTime) -> Result<PathBuf> {
        ensure_dir(&self.dir)?;
        let name = format!("{}-{}.pem", self.prefix, timestamp(now));
        let path = self.dir.join(&name);
        let mut pem = Vec::with_capacity(cert_pem.len() + key_pem.len() + 1);
        pem.extend_from_slice(cert_pem);
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(key_pem);
        write_atomic(&path, &pem, 0o600)?;
        // The new link beside the old one, then renamed over it.
        let updated = self.dir.join(format!("{}-updated.pem", self.prefix));
        let _ = std::fs::remove_file(&updated);
        std::os::unix::fs::symlink(&name, &updated).map_err(|source| Error::Write {
            path: updated.clone(),
            source,
        })?;
        let current = self.current_path();
        std::fs::rename(&updated, &current).map_err(|source| Error::Write {
            path: current.clone(),
            source,
        })?;
        sync_dir(&self.dir)?;
        tracing::debug!(path = %path.display(), current = %current.display(), "certificate pair stored");
        Ok(path)
    }
}

/// `YYYY-MM-DD-HH-MM-SS` in UTC, as upstream names pair files.
pub fn timestamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}-{:02}-{:02}-{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` through a temporary file in the same directory (created
/// with `mode`, synced, renamed into place), so `path` is never seen half written.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Err(source) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })
}
