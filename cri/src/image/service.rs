//! The image service proper: pull, import, look up, list, remove, garbage-collect and
//! account disk usage. The gRPC layer (`crate::image_service`) only translates.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::archive::ArchiveSource;
use super::content::{ContentStore, sha256_digest};
use super::install::{self, Parsed, Platform, Source, Target};
use super::layers::LayerStore;
use super::pull::{Credentials, Registries, RegistryConfig, RegistrySource};
use super::reference::ImageRef;
use super::store::{Image, ImageStore};
use super::{Error, Result};

#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// Where images live; `<root>/images` is created.
    pub root: PathBuf,
    pub registry: RegistryConfig,
    /// Layers downloaded and unpacked at once, per pull.
    pub max_concurrent_downloads: usize,
    /// A layer that unpacks to more than this is rejected (decompression bombs).
    pub max_layer_bytes: u64,
    pub platform: Platform,
}

/// Disk usage of the image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub bytes: u64,
    pub inodes: u64,
}

pub struct Images {
    root: PathBuf,
    platform: Platform,
    content: ContentStore,
    layers: LayerStore,
    store: ImageStore,
    registries: Registries,
    max_concurrent: usize,
    max_layer_bytes: u64,
    inflight: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Pulls and imports hold it shared while they add content; garbage collection holds
    /// it exclusively, so it never deletes a layer a pull committed but not yet recorded.
    gc: tokio::sync::RwLock<()>,
}

impl Images {
    /// Opens the store, discards unfinished writes, and removes what no image references
    /// (left over by a crash between committing content and recording the image).
    pub async fn open(cfg: ImagesConfig) -> Result<Self> {
        let root = cfg.root.join("images");
        std::fs::create_dir_all(&root).map_err(super::io_err("creating image root", &root))?;
        let images = Self {
            content: ContentStore::open(&root)?,
            layers: LayerStore::open(&root)?,
            store: ImageStore::open(&root)?,
            registries: Registries::new(cfg.registry)?,
            platform: cfg.platform,
            max_concurrent: cfg.max_concurrent_downloads,
            max_layer_bytes: cfg.max_layer_bytes,
            inflight: Default::default(),
            gc: Default::default(),
            root,
        };
        let scratch = images.scratch();
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)
                .map_err(super::io_err("clearing import dir", &scratch))?;
        }
        for img in images.store.list() {
            let missing: Vec<&str> = img
                .layers
                .iter()
                .filter(|l| !images.layers.exists(&l.chain_id))
                .map(|l| l.chain_id.as_str())
                .collect();
            if !missing.is_empty() {
                tracing::warn!(image.id = %img.id, ?missing, "image lost layers on disk; it will be pulled again when needed");
                images.store.remove(&img.id)?;
            }
        }
        images.collect_garbage().await?;
        Ok(images)
    }

    fn scratch(&self) -> PathBuf {
        self.root.join("import")
    }

    /// Directory of an unpacked layer (an overlayfs lower dir).
    pub fn layer_path(&self, chain_id: &str) -> Result<PathBuf> {
        self.layers.path(chain_id)
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    fn target(&self) -> Target {
        let known_usage = self
            .store
            .list()
            .into_iter()
            .flat_map(|i| i.layers)
            .map(|l| (l.chain_id, (l.unpacked_bytes, l.unpacked_inodes)))
            .collect();
        Target {
            content: self.content.clone(),
            layers: self.layers.clone(),
            inflight: self.inflight.clone(),
            max_concurrent: self.max_concurrent,
            max_layer_bytes: self.max_layer_bytes,
            known_usage,
        }
    }

    /// Pulls `reference` and records it; returns the image.
    #[tracing::instrument(skip_all, fields(image.ref = %reference))]
    pub async fn pull(&self, reference: &str, creds: &Credentials) -> Result<Image> {
        let image_ref = ImageRef::parse(reference)?;
        // Resolving stores nothing, so it needs no lock and no cleanup.
        let resolved = self.registries.resolve(&image_ref, creds).await?;
        let pulled = {
            let _shared = self.gc.read().await;
            self.install_resolved(&image_ref, resolved).await
        };
        if pulled.is_err() {
            self.collect_after_failure().await;
        }
        pulled
    }

    /// A failed pull or import may have committed verified blobs and layers that no image
    /// records. They go now, so ImageFsInfo does not count them until the next start.
    /// Collection waits for pulls in flight (the gc lock), whose content is not recorded
    /// yet; the failed pull released its share of the lock before.
    async fn collect_after_failure(&self) {
        if let Err(err) = self.collect_garbage().await {
            tracing::warn!(err = %err, "collecting garbage after a failed pull failed");
        }
    }

    async fn install_resolved(
        &self,
        image_ref: &ImageRef,
        (source, top, top_digest): (Arc<RegistrySource>, Vec<u8>, String),
    ) -> Result<Image> {
        let (manifest, manifest_digest, extra) = match install::parse_manifest(&top_digest, &top)? {
            Parsed::Manifest { .. } => (top, top_digest.clone(), vec![]),
            Parsed::Index(entries) => {
                let chosen =
                    install::select_platform(&entries, &self.platform).ok_or_else(|| {
                        Error::NoMatchingPlatform {
                            reference: image_ref.to_string(),
                            platform: self.platform.to_string(),
                        }
                    })?;
                // A child already stored was verified when it was committed.
                let bytes = match self.content.read(&chosen.digest) {
                    Ok(stored) => stored,
                    Err(Error::NotFound { .. }) => source.manifest(&chosen.digest).await?,
                    Err(e) => return Err(e),
                };
                let actual = sha256_digest(&bytes);
                if actual != chosen.digest {
                    return Err(Error::DigestMismatch {
                        expected: chosen.digest.clone(),
                        actual,
                    });
                }
                self.content.write_blob(&top_digest, &top)?;
                (bytes, chosen.digest.clone(), vec![top_digest.clone()])
            }
        };
        let repo_tags: Vec<String> = image_ref.tagged().into_iter().collect();
        let repo_digests = vec![image_ref.with_digest(&top_digest)];
        if let Some(existing) = self.complete_image(&manifest_digest) {
            tracing::info!(image.id = %existing.id, "image already present, no download");
            return self.store.add(Image {
                repo_tags,
                repo_digests,
                blobs: extra,
                ..existing
            });
        }
        self.content.write_blob(&manifest_digest, &manifest)?;
        let started = std::time::Instant::now();
        let source: Arc<dyn Source> = source;
        let mut image =
            install::install(source, &self.target(), &manifest_digest, &manifest, extra).await?;
        image.repo_tags = repo_tags;
        image.repo_digests = repo_digests;
        let image = self.store.add(image)?;
        tracing::info!(image.id = %image.id, layers = image.layers.len(), elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
        Ok(image)
    }

    /// The stored image with this platform manifest, if it is complete on disk.
    fn complete_image(&self, manifest_digest: &str) -> Option<Image> {
        self.store.list().into_iter().find(|i| {
            i.manifest_digest == manifest_digest
                && i.layers.iter().all(|l| self.layers.exists(&l.chain_id))
        })
    }

    /// Imports every image of an OCI archive.
    #[tracing::instrument(skip_all, fields(archive = %path.display()))]
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<Image>> {
        let imported = {
            let _shared = self.gc.read().await;
            self.import_locked(path).await
        };
        if imported.is_err() {
            self.collect_after_failure().await;
        }
        imported
    }

    async fn import_locked(&self, path: &Path) -> Result<Vec<Image>> {
        let scratch = self.scratch();
        let path_owned = path.to_path_buf();
        let source = Arc::new(
            tokio::task::spawn_blocking(move || ArchiveSource::extract(&path_owned, &scratch))
                .await??,
        );
        let target = self.target();
        let mut out = Vec::new();
        for (desc, name) in source.entries()? {
            let mut top = install::fetch_verified(source.as_ref(), &target, &desc).await?;
            let mut manifest_digest = desc.digest.clone();
            let mut extra = vec![];
            // An entry may be an index (multi-platform archive) whose child is the image.
            if let Parsed::Index(entries) = install::parse_manifest(&desc.digest, &top)? {
                let chosen =
                    install::select_platform(&entries, &self.platform).ok_or_else(|| {
                        Error::NoMatchingPlatform {
                            reference: format!("{}@{}", source.origin().display(), desc.digest),
                            platform: self.platform.to_string(),
                        }
                    })?;
                extra.push(desc.digest.clone());
                top = install::fetch_verified(source.as_ref(), &target, chosen).await?;
                manifest_digest = chosen.digest.clone();
            }
            let dyn_source: Arc<dyn Source> = source.clone();
            let mut image =
                install::install(dyn_source, &target, &manifest_digest, &top, extra).await?;
            if let Some(name) = name {
                match ImageRef::parse(&name) {
                    Ok(r) => {
                        image.repo_tags = r.tagged().into_iter().collect();
                        image.repo_digests = vec![r.with_digest(&desc.digest)];
                    }
                    Err(e) => {
                        tracing::warn!(name, err = %e, "ignoring unusable image name in archive")
                    }
                }
            }
            let image = self.store.add(image)?;
            tracing::info!(image.id = %image.id, tags = ?image.repo_tags, "imported image");
            out.push(image);
        }
        Ok(out)
    }

    /// Imports every archive in `dir` (`*.tar`, `*.oci`); one bad archive is reported and
    /// does not stop the others. Returns how many images were imported.
    pub async fn preload_dir(&self, dir: &Path) -> usize {
        let Ok(rd) = std::fs::read_dir(dir) else {
            tracing::warn!(dir = %dir.display(), "image preload directory unreadable");
            return 0;
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "tar" || e == "oci"))
            .collect();
        paths.sort();
        let mut n = 0;
        for p in paths {
            match self.import_archive(&p).await {
                Ok(imgs) => n += imgs.len(),
                Err(e) => {
                    tracing::error!(archive = %p.display(), err = %e, "preloading image archive failed")
                }
            }
        }
        n
    }

    /// Finds an image by id (full or unique prefix), tag or digest reference.
    pub fn resolve(&self, reference: &str) -> Option<Image> {
        if let Some(img) = self.store.get(reference) {
            return Some(img);
        }
        if let Some(img) = self.store.get(&format!("sha256:{reference}")) {
            return Some(img);
        }
        if let Ok(r) = ImageRef::parse(reference) {
            let by_name = match &r.digest {
                Some(d) => self.store.by_name(&r.with_digest(d)).or_else(|| {
                    // name@digest where digest is the platform manifest
                    self.store.list().into_iter().find(|i| {
                        i.manifest_digest == *d
                            && i.repo_digests
                                .iter()
                                .any(|n| names_repository(n, &r.name()))
                    })
                }),
                None => r.tagged().and_then(|t| self.store.by_name(&t)),
            };
            if by_name.is_some() {
                return by_name;
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = self.store.by_id_prefix(hex);
            if found.len() == 1 {
                return found.pop();
            }
        }
        None
    }

    pub fn list(&self) -> Vec<Image> {
        self.store.list()
    }

    /// Removes an image with all its names; a missing image is not an error. Layers and
    /// blobs go only when no other image uses them.
    pub async fn remove(&self, reference: &str) -> Result<Option<Image>> {
        let Some(img) = self.resolve(reference) else {
            return Ok(None);
        };
        let removed = self.store.remove(&img.id)?;
        self.collect_garbage().await?;
        Ok(removed)
    }

    /// Deletes layers and blobs that no image references.
    pub async fn collect_garbage(&self) -> Result<()> {
        let _exclusive = self.gc.write().await;
        let images = self.store.list();
        let chains: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| l.chain_id.as_str()))
            .collect();
        let blobs: HashSet<&str> = images
            .iter()
            .flat_map(|i| i.blobs.iter().map(String::as_str))
            .collect();
        for chain in self.layers.list()? {
            if !chains.contains(chain.as_str()) {
                tracing::debug!(chain_id = %chain, "removing unused layer");
                self.layers.remove(&chain)?;
            }
        }
        for (digest, _) in self.content.list()? {
            if !blobs.contains(digest.as_str()) {
                tracing::debug!(%digest, "removing unused blob");
                self.content.remove(&digest)?;
            }
        }
        Ok(())
    }

    /// Bytes and inodes used under the image store: every committed blob and every
    /// committed layer directory, referenced or not. Layers use the sizes recorded when
    /// they were unpacked, or are measured when no image records them.
    pub fn usage(&self) -> Result<FsUsage> {
        let blobs = self.content.list()?;
        let mut bytes: u64 = blobs.iter().map(|(_, s)| s).sum();
        let mut inodes = blobs.len() as u64;
        let recorded: HashMap<String, (u64, u64)> = self
            .store
            .list()
            .into_iter()
            .flat_map(|i| i.layers)
            .map(|l| (l.chain_id, (l.unpacked_bytes, l.unpacked_inodes)))
            .collect();
        for chain in self.layers.list()? {
            let (b, i) = match recorded.get(&chain) {
                Some(u) => *u,
                None => super::layers::dir_usage(&self.layers.path(&chain)?),
            };
            bytes += b;
            inodes += i + 1;
        }
        Ok(FsUsage { bytes, inodes })
    }

    /// The directory holding the image store (reported as the image filesystem).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Whether `repo_digest` (`name@sha256:…`) names repository `name`, and not one whose name
/// merely starts the same (`reg/foo` is not `reg/foobar`).
fn names_repository(repo_digest: &str, name: &str) -> bool {
    repo_digest
        .strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_digests_match_whole_repository_names() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            (format!("reg/foo@{d}"), "reg/foo", true),
            (format!("reg/foobar@{d}"), "reg/foo", false),
            (format!("reg/foo@{d}"), "reg/foobar", false),
            (format!("reg/foo/bar@{d}"), "reg/foo", false),
            (format!("reg/foo@{d}"), "reg/fo", false),
        ];
        for (repo_digest, name, want) in cases {
            assert_eq!(
                names_repository(&repo_digest, name),
                want,
                "{repo_digest} {name}"
            );
        }
    }
}
