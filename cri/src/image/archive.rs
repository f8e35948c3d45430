//! Importing OCI image archives (a tarred OCI image layout, as `skopeo copy
//! oci-archive:` and `docker save` of Docker 25+ write), for air-gapped nodes that
//! preload images from a directory at start.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use super::install::{Descriptor, Source, read_cap};
use super::{Error, Result, io_err};

/// Annotation with a full image name (containerd, nerdctl, `docker save`).
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation: a tag, or a full reference in archives written by skopeo and others.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// An archive unpacked into a private temporary directory.
pub struct ArchiveSource {
    dir: tempfile::TempDir,
    origin: PathBuf,
}

impl ArchiveSource {
    /// Extracts the layout files of `archive` (`oci-layout`, `index.json`, `blobs/...`)
    /// into a temporary directory under `scratch`. Anything else in the tar is ignored;
    /// a path that would leave the layout is an error.
    pub fn extract(archive: &Path, scratch: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadArchive {
            path: archive.to_path_buf(),
            reason,
        };
        fs::create_dir_all(scratch).map_err(io_err("creating import dir", scratch))?;
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(scratch)
            .map_err(io_err("creating import dir", scratch))?;
        let file = File::open(archive).map_err(io_err("opening image archive", archive))?;
        let mut tar = tar::Archive::new(file);
        let entries = tar
            .entries()
            .map_err(|e| bad(format!("not a tar file: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("corrupt tar: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| bad(format!("bad entry name: {e}")))?
                .into_owned();
            let mut clean = PathBuf::new();
            for c in path.components() {
                match c {
                    Component::Normal(p) => clean.push(p),
                    Component::CurDir => {}
                    _ => return Err(bad(format!("entry {} leaves the archive", path.display()))),
                }
            }
            let keep = clean == Path::new("oci-layout")
                || clean == Path::new("index.json")
                || clean.starts_with("blobs/sha256");
            if !keep || !entry.header().entry_type().is_file() {
                continue;
            }
            let dest = dir.path().join(&clean);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io_err("creating import dir", parent))?;
            }
            let mut out = File::create(&dest).map_err(io_err("writing import file", &dest))?;
            std::io::copy(&mut entry, &mut out).map_err(io_err("writing import file", &dest))?;
        }
        if !dir.path().join("index.json").is_file() {
            return Err(bad("no index.json: not an OCI image layout".into()));
        }
        Ok(Self {
            dir,
            origin: archive.to_path_buf(),
        })
    }

    /// Top-level manifests with the name each was stored under, if any.
    pub fn entries(&self) -> Result<Vec<(Descriptor, Option<String>)>> {
        let path = self.dir.path().join("index.json");
        let bytes = fs::read(&path).map_err(io_err("reading index.json", &path))?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::BadArchive {
            path: self.origin.clone(),
            reason: format!("index.json: {e}"),
        })?;
        Ok(index
            .manifests
            .into_iter()
            .map(|d| {
                let ann = d.annotations.clone().unwrap_or_default();
                let name = ann.get(ANNOTATION_IMAGE_NAME).cloned().or_else(|| {
                    ann.get(ANNOTATION_REF_NAME)
                        .filter(|n| n.contains([':', '/']))
                        .cloned()
                });
                (d, name)
            })
            .collect())
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = super::content::parse_digest(digest)?;
        Ok(self.dir.path().join("blobs").join("sha256").join(hex))
    }
}

#[async_trait]
impl Source for ArchiveSource {
    async fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let path = self.blob_path(&desc.digest)?;
        let file = File::open(&path).map_err(|e| Error::BadArchive {
            path: self.origin.clone(),
            reason: format!("blob {} missing: {e}", desc.digest),
        })?;
        let mut out = Vec::new();
        file.take(read_cap(desc))
            .read_to_end(&mut out)
            .map_err(io_err("reading archive blob", &path))?;
        Ok(out)
    }

    async fn open(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let path = self.blob_path(&desc.digest)?;
        let f = File::open(&path).map_err(|e| Error::BadArchive {
            path: self.origin.clone(),
            reason: format!("blob {} missing: {e}", desc.digest),
        })?;
        Ok(Box::new(f))
    }
}
