//! Content-addressed blob store: `blobs/sha256/<hex>`, written through `ingest/`.
//!
//! A blob is only ever visible under its digest after its bytes were hashed, compared with
//! the expected digest and size, fsynced, and renamed into place.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{Error, Result, io_err};

/// Checks that `digest` is `sha256:<64 lowercase hex>` and returns the hex part.
pub fn parse_digest(digest: &str) -> Result<&str> {
    let bad = |reason: &str| Error::InvalidReference {
        reference: digest.to_string(),
        reason: reason.to_string(),
    };
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| bad("only sha256 digests are supported"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("digest must be 64 lowercase hex characters"));
    }
    Ok(hex)
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens the store under `root`, discarding any unfinished ingest.
    pub fn open(root: &Path) -> Result<Self> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err("creating blob dir", &blobs))?;
        if ingest.exists() {
            fs::remove_dir_all(&ingest).map_err(io_err("clearing ingest dir", &ingest))?;
        }
        fs::create_dir_all(&ingest).map_err(io_err("creating ingest dir", &ingest))?;
        Ok(Self { blobs, ingest })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs.join(parse_digest(digest)?))
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                reference: digest.to_string(),
            },
            _ => Error::Io {
                what: "reading blob",
                path,
                source,
            },
        })
    }

    /// Size of a committed blob.
    pub fn size(&self, digest: &str) -> Result<u64> {
        let path = self.path(digest)?;
        Ok(fs::metadata(&path)
            .map_err(io_err("stat blob", &path))?
            .len())
    }

    /// Starts writing a blob; nothing is visible until [`Ingest::commit`].
    pub fn ingest(&self) -> Result<Ingest> {
        let file = tempfile::NamedTempFile::new_in(&self.ingest)
            .map_err(io_err("creating ingest file", &self.ingest))?;
        Ok(Ingest {
            file,
            hasher: Sha256::new(),
            size: 0,
            blobs: self.blobs.clone(),
        })
    }

    /// Stores a small blob that is already in memory, verifying it against `digest`.
    pub fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        if self.exists(digest) {
            return Ok(());
        }
        let mut ingest = self.ingest()?;
        ingest
            .write_all(bytes)
            .map_err(io_err("writing ingest file", &self.ingest))?;
        ingest.commit(digest, Some(bytes.len() as u64))
    }

    /// Moves a file holding a blob into the store after verifying it (used by archive
    /// import, where blobs arrive as files).
    pub fn import_file(&self, digest: &str, expected_size: Option<u64>, src: &Path) -> Result<()> {
        if self.exists(digest) {
            return Ok(());
        }
        let mut ingest = self.ingest()?;
        let mut f = File::open(src).map_err(io_err("opening blob", src))?;
        io::copy(&mut f, &mut ingest).map_err(io_err("copying blob", src))?;
        ingest.commit(digest, expected_size)
    }

    pub fn remove(&self, digest: &str) -> Result<()> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io {
                what: "removing blob",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every committed blob digest with its size.
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err("listing blobs", &self.blobs))? {
            let entry = entry.map_err(io_err("listing blobs", &self.blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((format!("sha256:{name}"), len));
        }
        Ok(out)
    }
}

/// A blob being written. Hashes as it goes; dropped without commit, it leaves nothing.
pub struct Ingest {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
    blobs: PathBuf,
}

impl Ingest {
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies digest and size, then makes the blob visible under its digest.
    pub fn commit(self, expected: &str, expected_size: Option<u64>) -> Result<()> {
        let hex = parse_digest(expected)?.to_string();
        let actual = self.digest();
        if let Some(want) = expected_size
            && want != self.size
        {
            return Err(Error::SizeMismatch {
                digest: expected.to_string(),
                expected: want,
                actual: self.size,
            });
        }
        if actual != expected {
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
        let tmp_path = self.file.path().to_path_buf();
        self.file
            .as_file()
            .sync_all()
            .map_err(io_err("syncing blob", &tmp_path))?;
        let dest = self.blobs.join(&hex);
        self.file.persist(&dest).map_err(|e| Error::Io {
            what: "committing blob",
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(&self.blobs)?;
        Ok(())
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_verifies_digest_and_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let good = sha256_digest(b"hello");
        store.write_blob(&good, b"hello").expect("good blob");
        assert_eq!(store.read(&good).expect("read"), b"hello");

        let other = sha256_digest(b"other");
        let err = store
            .write_blob(&other, b"tampered")
            .expect_err("must fail");
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let mut ingest = store.ingest().expect("ingest");
        ingest.write_all(b"other").expect("write");
        let err = ingest.commit(&other, Some(6)).expect_err("must fail");
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        assert!(!store.exists(&other));
        // nothing half-written is left behind
        assert_eq!(
            fs::read_dir(dir.path().join("ingest")).expect("ls").count(),
            0
        );
    }

    #[test]
    fn digests_are_validated() {
        for bad in ["sha256:abc", "md5:00", "sha256:../../etc/passwd", ""] {
            assert!(parse_digest(bad).is_err(), "{bad}");
        }
        assert!(parse_digest(&sha256_digest(b"")).is_ok());
    }
}
