//! Test images built in Rust and written as OCI image layouts: layers from file lists or
//! raw tar bytes, per-layer compression, image config, OCI or Docker schema 2 manifests,
//! multi-platform indexes, and OCI archives for air-gapped import.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Media types written into manifests, indexes and layout descriptors.
pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
}

/// Annotation naming an entry of a layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The tag every layout written here gives its single entry.
pub const LAYOUT_REF: &str = "latest";
/// Modification time of every entry of generated layers, so digests are reproducible.
pub const LAYER_MTIME: u64 = 1_700_000_000;
/// `created` of every generated image config.
const CREATED: &str = "2023-11-14T22:13:20Z";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
            Compression::None => media_type::OCI_LAYER_TAR,
        }
    }

    /// The Docker schema 2 layer media type; Docker has none for zstd.
    pub fn docker_media_type(self) -> Result<&'static str> {
        match self {
            Compression::Gzip => Ok(media_type::DOCKER_LAYER_GZIP),
            Compression::None => Ok(media_type::DOCKER_LAYER_TAR),
            Compression::Zstd => bail!("docker schema 2 has no zstd layer media type"),
        }
    }

    fn compress(self, tar: &[u8]) -> Result<Vec<u8>> {
        match self {
            Compression::None => Ok(tar.to_vec()),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(tar)?;
                Ok(enc.finish()?)
            }
            Compression::Zstd => Ok(zstd::encode_all(tar, 3)?),
        }
    }
}

/// The target platform of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<arch>` with no variant, e.g. `Platform::linux("arm64")`.
    pub fn linux(architecture: &str) -> Self {
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// The platform this test process runs on, in OCI (GOARCH) spelling.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            other => other,
        };
        Self::linux(arch)
    }

    pub fn with_variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which manifest schema an image is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// OCI image manifest (and OCI image index for multi-platform images).
    #[default]
    Oci,
    /// Docker image manifest v2 schema 2 (and Docker manifest list).
    DockerV2,
}

/// A blob plus the media type and size a descriptor gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.into(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
        }
    }

    fn to_json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// One entry of a layer built from a file list.
#[derive(Debug, Clone)]
pub struct Entry {
    path: String,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
}

#[derive(Debug, Clone)]
enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
}

impl Entry {
    /// A regular file. Paths may start with `/`; it is stripped in the tar.
    pub fn file(path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self::new(path, EntryKind::File(contents.into()), mode)
    }

    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Self::new(path, EntryKind::Dir, mode)
    }

    /// A symlink at `path` whose target is `target`, stored verbatim.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self::new(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// A hard link at `path` to the earlier entry `target` (archive-relative).
    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self::new(path, EntryKind::Hardlink(target.into()), 0o644)
    }

    /// Owner of the entry; root (0:0) unless set.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> Self {
        Self {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn append_to<W: Write>(&self, tar: &mut tar::Builder<W>) -> Result<()> {
        let path = self.path.trim_start_matches('/');
        let mut h = tar::Header::new_gnu();
        h.set_mode(self.mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(LAYER_MTIME);
        h.set_size(0);
        let res = match &self.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                tar.append_data(
                    &mut h,
                    format!("{}/", path.trim_end_matches('/')),
                    io::empty(),
                )
            }
            EntryKind::File(contents) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(contents.len() as u64);
                tar.append_data(&mut h, path, contents.as_slice())
            }
            EntryKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut h, path, target)
            }
            EntryKind::Hardlink(target) => {
                h.set_entry_type(tar::EntryType::Link);
                tar.append_link(&mut h, path, target.trim_start_matches('/'))
            }
        };
        res.with_context(|| format!("append {} to layer tar", self.path))
    }
}

/// A layer that is already compressed, with the diff id its manifest config should list.
/// Build one by hand (say, with a wrong `diff_id`) to make a broken image.
#[derive(Debug, Clone)]
pub struct CompressedLayer {
    pub bytes: Vec<u8>,
    pub compression: Compression,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

/// One layer of an [`ImageBuilder`]: a file list, raw tar bytes, or a finished blob.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    entries: Vec<Entry>,
    base: LayerBase,
    compression: Compression,
}

#[derive(Debug, Clone, Default)]
enum LayerBase {
    #[default]
    Entries,
    RawTar(Vec<u8>),
    Compressed(CompressedLayer),
}

impl Layer {
    /// An empty, gzip-compressed layer; add entries with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer whose uncompressed tar is exactly `tar` (for malicious fixtures).
    pub fn raw_tar(tar: Vec<u8>) -> Self {
        Self {
            base: LayerBase::RawTar(tar),
            ..Self::default()
        }
    }

    /// A layer whose blob is exactly `layer.bytes`, listed with `layer.diff_id`.
    pub fn precompressed(layer: CompressedLayer) -> Self {
        Self {
            compression: layer.compression,
            base: LayerBase::Compressed(layer),
            ..Self::default()
        }
    }

    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    pub fn file(self, path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.entry(Entry::file(path, contents, mode))
    }

    pub fn dir(self, path: impl Into<String>, mode: u32) -> Self {
        self.entry(Entry::dir(path, mode))
    }

    pub fn symlink(self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.entry(Entry::symlink(path, target))
    }

    pub fn hardlink(self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.entry(Entry::hardlink(path, target))
    }

    /// An OCI whiteout deleting `path` from lower layers (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let path = path.trim_end_matches('/');
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        self.file(format!("{dir}/.wh.{name}"), Vec::new(), 0o644)
    }

    /// An OCI opaque whiteout hiding everything lower layers put in `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(
            format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            Vec::new(),
            0o644,
        )
    }

    /// The uncompressed tar of this layer.
    pub fn tar(&self) -> Result<Vec<u8>> {
        match &self.base {
            LayerBase::Entries => {
                let mut tar = tar::Builder::new(Vec::new());
                for e in &self.entries {
                    e.append_to(&mut tar)?;
                }
                Ok(tar.into_inner()?)
            }
            LayerBase::RawTar(bytes) if self.entries.is_empty() => Ok(bytes.clone()),
            LayerBase::RawTar(_) => bail!("layer mixes raw tar bytes and entries"),
            LayerBase::Compressed(_) => bail!("precompressed layer has no tar to rebuild"),
        }
    }

    /// The blob and diff id this layer contributes to an image.
    pub fn compress(&self) -> Result<CompressedLayer> {
        if let LayerBase::Compressed(layer) = &self.base {
            ensure!(
                self.entries.is_empty(),
                "layer mixes a precompressed blob and entries"
            );
            ensure!(
                layer.compression == self.compression,
                "precompressed {:?} layer cannot be recompressed as {:?}",
                layer.compression,
                self.compression
            );
            return Ok(layer.clone());
        }
        let tar = self.tar()?;
        Ok(CompressedLayer {
            bytes: self.compression.compress(&tar)?,
            compression: self.compression,
            diff_id: sha256_digest(&tar),
        })
    }
}

/// A layer's descriptor as written in the manifest plus its diff id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub descriptor: Descriptor,
    pub diff_id: String,
    pub compression: Compression,
}

/// One image as written: manifest, config and layers, with their exact bytes.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub platform: Platform,
    pub format: ManifestFormat,
    /// Descriptor of the manifest; `manifest.digest` is what a registry answers with.
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    /// Descriptor of the config; `config.digest` is the image id.
    pub config: Descriptor,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<LayerInfo>,
}

/// Builds one single-platform image.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    platform: Platform,
    format: ManifestFormat,
    user: Option<String>,
    env: Vec<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    extra: serde_json::Map<String, Value>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            platform: Platform::host(),
            format: ManifestFormat::Oci,
            user: None,
            env: Vec::new(),
            entrypoint: None,
            cmd: None,
            working_dir: None,
            labels: BTreeMap::new(),
            extra: serde_json::Map::new(),
        }
    }
}

impl ImageBuilder {
    /// An OCI image for the host platform with no layers and an empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer; the first one added is the bottom of the rootfs.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// `config.User`, e.g. `"app"`, `"1000"` or `"1000:1000"`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Appends `KEY=value` to `config.Env`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    pub fn entrypoint<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    pub fn cmd<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Any other field of the config's `config` object, e.g. `("StopSignal", json!("SIGINT"))`.
    pub fn config_field(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    pub fn format(mut self, format: ManifestFormat) -> Self {
        self.format = format;
        self
    }

    /// Writes this image as an OCI image layout at `dir` (created if missing) whose
    /// `index.json` lists the manifest alone, tagged [`LAYOUT_REF`].
    pub fn write_layout(&self, dir: &Path) -> Result<OciLayout> {
        let mut blobs = BlobWriter::create(dir)?;
        let image = self.write_blobs(&mut blobs)?;
        let root = image.manifest.clone();
        blobs.finish(&root)?;
        Ok(OciLayout {
            dir: dir.to_path_buf(),
            root,
            images: vec![image],
        })
    }

    fn write_blobs(&self, blobs: &mut BlobWriter) -> Result<BuiltImage> {
        let docker = self.format == ManifestFormat::DockerV2;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let blob = layer
                .compress()
                .with_context(|| format!("build layer {i} of {} image", self.platform))?;
            let media_type = if docker {
                blob.compression.docker_media_type()?
            } else {
                blob.compression.oci_media_type()
            };
            let descriptor = blobs.write(media_type, &blob.bytes)?;
            layers.push(LayerInfo {
                descriptor,
                diff_id: blob.diff_id,
                compression: blob.compression,
            });
        }

        let config_bytes = serde_json::to_vec(&self.config_json(&layers))?;
        let config_type = if docker {
            media_type::DOCKER_CONFIG
        } else {
            media_type::OCI_CONFIG
        };
        let config = blobs.write(config_type, &config_bytes)?;

        let manifest_type = if docker {
            media_type::DOCKER_MANIFEST
        } else {
            media_type::OCI_MANIFEST
        };
        let manifest_json = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.to_json(),
            "layers": layers.iter().map(|l| l.descriptor.to_json()).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest_json)?;
        let manifest = blobs.write(manifest_type, &manifest_bytes)?;
        Ok(BuiltImage {
            platform: self.platform.clone(),
            format: self.format,
            manifest,
            manifest_bytes,
            config,
            config_bytes,
            layers,
        })
    }

    fn config_json(&self, layers: &[LayerInfo]) -> Value {
        let mut config = self.extra.clone();
        if let Some(u) = &self.user {
            config.insert("User".into(), json!(u));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if let Some(e) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &self.cmd {
            config.insert("Cmd".into(), json!(c));
        }
        if let Some(w) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(w));
        }
        if !self.labels.is_empty() {
            config.insert("Labels".into(), json!(self.labels));
        }
        let mut image = json!({
            "created": CREATED,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            "history": layers.iter().enumerate().map(|(i, _)| json!({
                "created": CREATED,
                "created_by": format!("nodelet-e2e layer {i}"),
            })).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.platform.variant {
            image["variant"] = json!(v);
        }
        image
    }
}

/// Builds a multi-platform image: an image index over several [`ImageBuilder`]s.
#[derive(Debug, Clone, Default)]
pub struct IndexBuilder {
    images: Vec<ImageBuilder>,
}

impl IndexBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one platform's image; its [`ImageBuilder::platform`] goes into the index.
    pub fn image(mut self, image: ImageBuilder) -> Self {
        self.images.push(image);
        self
    }

    /// Writes every image plus the index as an OCI image layout at `dir`; `index.json`
    /// lists the index alone, tagged [`LAYOUT_REF`]. All images must share one
    /// [`ManifestFormat`]; Docker images make a Docker manifest list.
    pub fn write_layout(&self, dir: &Path) -> Result<OciLayout> {
        let Some(first) = self.images.first() else {
            bail!("an image index needs at least one image");
        };
        ensure!(
            self.images.iter().all(|i| i.format == first.format),
            "images of one index must share a manifest format"
        );
        let mut blobs = BlobWriter::create(dir)?;
        let mut images = Vec::with_capacity(self.images.len());
        for image in &self.images {
            images.push(image.write_blobs(&mut blobs)?);
        }
        let index_type = match first.format {
            ManifestFormat::Oci => media_type::OCI_INDEX,
            ManifestFormat::DockerV2 => media_type::DOCKER_MANIFEST_LIST,
        };
        let manifests = images
            .iter()
            .map(|i| {
                let mut d = i.manifest.to_json();
                d["platform"] = i.platform.to_json();
                d
            })
            .collect::<Vec<_>>();
        let index = json!({ "schemaVersion": 2, "mediaType": index_type, "manifests": manifests });
        let root = blobs.write(index_type, &serde_json::to_vec(&index)?)?;
        blobs.finish(&root)?;
        Ok(OciLayout {
            dir: dir.to_path_buf(),
            root,
            images,
        })
    }
}

/// An OCI image layout directory written by [`ImageBuilder`] or [`IndexBuilder`].
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
    /// The single entry of `index.json`: the image manifest or the image index.
    pub root: Descriptor,
    /// Every image in the layout, one per platform, in the order they were added.
    pub images: Vec<BuiltImage>,
}

impl OciLayout {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Digest of the manifest (single image) or index: what a pull by tag resolves to.
    pub fn digest(&self) -> &str {
        &self.root.digest
    }

    /// The image built for `platform`, if any.
    pub fn image(&self, platform: &Platform) -> Option<&BuiltImage> {
        self.images.iter().find(|i| &i.platform == platform)
    }

    /// Path of blob `digest` inside the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.dir, digest)
    }

    /// Writes the layout as an OCI archive (a plain tar of the layout directory, as
    /// `skopeo copy oci:DIR oci-archive:FILE` makes).
    pub fn write_archive(&self, out: &Path) -> Result<()> {
        write_oci_archive(&self.dir, out)
    }
}

/// Tars the OCI image layout at `layout_dir` into `out`: `oci-layout`, `index.json` and
/// `blobs/` at the archive root.
pub fn write_oci_archive(layout_dir: &Path, out: &Path) -> Result<()> {
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for name in ["oci-layout", "index.json"] {
        tar.append_path_with_name(layout_dir.join(name), name)
            .with_context(|| format!("archive {name} of {}", layout_dir.display()))?;
    }
    tar.append_dir_all("blobs", layout_dir.join("blobs"))
        .with_context(|| format!("archive blobs of {}", layout_dir.display()))?;
    tar.into_inner()?
        .flush()
        .with_context(|| format!("write {}", out.display()))?;
    Ok(())
}

fn blob_path(layout_dir: &Path, digest: &str) -> PathBuf {
    let (algo, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout_dir.join("blobs").join(algo).join(hex)
}

/// Writes blobs into a layout, each once, then `index.json` and `oci-layout`.
struct BlobWriter {
    dir: PathBuf,
}

impl BlobWriter {
    fn create(dir: &Path) -> Result<Self> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn write(&mut self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let desc = Descriptor::of(media_type, bytes);
        let path = blob_path(&self.dir, &desc.digest);
        if !path.exists() {
            fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(desc)
    }

    fn finish(self, root: &Descriptor) -> Result<()> {
        let mut entry = root.to_json();
        entry["annotations"] = json!({ REF_NAME_ANNOTATION: LAYOUT_REF });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [entry],
        });
        let index_path = self.dir.join("index.json");
        fs::write(&index_path, serde_json::to_vec(&index)?)
            .with_context(|| format!("write {}", index_path.display()))?;
        let layout_path = self.dir.join("oci-layout");
        fs::write(&layout_path, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("write {}", layout_path.display()))?;
        Ok(())
    }
}

/// Where [`busybox_layer`] takes busybox from (Debian's busybox-static).
pub const BUSYBOX_HOST_PATH: &str = "/bin/busybox";
/// Applets [`busybox_layer`] links to `/bin/busybox`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "id", "env", "true", "false", "test", "mkdir", "touch",
    "rm", "wc", "grep", "head", "stat", "readlink", "hostname", "ps", "kill", "mount", "nc",
    "wget", "printf",
];
/// The non-root user in [`busybox_layer`]'s `/etc/passwd`.
pub const APP_USER: &str = "app";
pub const APP_UID: u64 = 1000;
pub const APP_GID: u64 = 1000;

/// A base layer: `/bin/busybox` from the host with [`BUSYBOX_APPLETS`] as symlinks,
/// `/etc/passwd` and `/etc/group` with `root` and `app` (1000:1000, home `/home/app`),
/// plus `/tmp` (1777) and `/root`.
pub fn busybox_layer() -> Result<Layer> {
    let busybox = fs::read(BUSYBOX_HOST_PATH)
        .with_context(|| format!("read {BUSYBOX_HOST_PATH} (install busybox-static)"))?;
    let passwd = format!(
        "root:x:0:0:root:/root:/bin/sh\n\
         {APP_USER}:x:{APP_UID}:{APP_GID}:{APP_USER}:/home/{APP_USER}:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    );
    let group = format!("root:x:0:\n{APP_USER}:x:{APP_GID}:\nnogroup:x:65534:\n");
    let mut layer = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", busybox, 0o755);
    for applet in BUSYBOX_APPLETS {
        layer = layer.symlink(format!("bin/{applet}"), "busybox");
    }
    Ok(layer
        .dir("etc", 0o755)
        .file("etc/passwd", passwd, 0o644)
        .file("etc/group", group, 0o644)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .entry(Entry::dir(format!("home/{APP_USER}"), 0o755).owner(APP_UID, APP_GID))
        .dir("tmp", 0o1777))
}

/// File whose contents tell which platform of [`two_platform_index`] was unpacked.
pub const PLATFORM_MARKER: &str = "/platform";

/// An OCI index with `linux/amd64` and `linux/arm64/v8` images. Both are busybox (the
/// host's, so only the host platform actually runs) plus a layer with
/// [`PLATFORM_MARKER`] holding `linux/amd64\n` or `linux/arm64\n`; `Cmd` is
/// `cat /platform`.
pub fn two_platform_index() -> Result<IndexBuilder> {
    let base = busybox_layer()?;
    let mut index = IndexBuilder::new();
    for platform in [
        Platform::linux("amd64"),
        Platform::linux("arm64").with_variant("v8"),
    ] {
        let marker = format!("{}/{}\n", platform.os, platform.architecture);
        index = index.image(
            ImageBuilder::new()
                .platform(platform)
                .layer(base.clone())
                .layer(Layer::new().file(PLATFORM_MARKER, marker, 0o644))
                .cmd(["cat", PLATFORM_MARKER]),
        );
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, Option<String>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                (path, e.header().entry_type(), link)
            })
            .collect()
    }

    #[test]
    fn layer_paths_are_relative_and_links_kept_verbatim() {
        let tar = Layer::new()
            .dir("/app", 0o755)
            .file("/app/x", "hi", 0o600)
            .symlink("/app/l", "/etc/passwd")
            .hardlink("/app/h", "/app/x")
            .whiteout("/etc/gone")
            .opaque("/var")
            .tar()
            .expect("tar");
        let got = entries(&tar);
        let want = [
            ("app/", tar::EntryType::Directory, None),
            ("app/x", tar::EntryType::Regular, None),
            ("app/l", tar::EntryType::Symlink, Some("/etc/passwd")),
            ("app/h", tar::EntryType::Link, Some("app/x")),
            ("etc/.wh.gone", tar::EntryType::Regular, None),
            ("var/.wh..wh..opq", tar::EntryType::Regular, None),
        ];
        assert_eq!(got.len(), want.len());
        for ((path, kind, link), (wpath, wkind, wlink)) in got.iter().zip(want) {
            assert_eq!(path, wpath);
            assert_eq!(*kind, wkind);
            assert_eq!(link.as_deref(), wlink);
        }
    }

    #[test]
    fn compressed_layers_decompress_to_their_diff_id() {
        let layer = Layer::new().file("a", vec![7u8; 4096], 0o644);
        let tar = layer.tar().expect("tar");
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let blob = layer.clone().compression(c).compress().expect("compress");
            let mut plain = Vec::new();
            match c {
                Compression::Gzip => {
                    flate2::read::GzDecoder::new(blob.bytes.as_slice())
                        .read_to_end(&mut plain)
                        .expect("gunzip");
                }
                Compression::Zstd => {
                    plain = zstd::decode_all(blob.bytes.as_slice()).expect("unzstd")
                }
                Compression::None => plain = blob.bytes.clone(),
            }
            assert_eq!(plain, tar, "{c:?}");
            assert_eq!(blob.diff_id, sha256_digest(&tar), "{c:?}");
        }
    }

    #[test]
    fn docker_format_rejects_zstd_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ImageBuilder::new()
            .format(ManifestFormat::DockerV2)
            .layer(
                Layer::new()
                    .file("a", "a", 0o644)
                    .compression(Compression::Zstd),
            )
            .write_layout(dir.path())
            .expect_err("zstd in docker manifest");
        assert!(format!("{err:#}").contains("zstd"), "{err:#}");
    }

    #[test]
    fn layout_blobs_match_descriptors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = ImageBuilder::new()
            .layer(Layer::new().file("a", "a", 0o644))
            .user("1000")
            .cmd(["/bin/sh"])
            .write_layout(dir.path())
            .expect("layout");
        let image = &layout.images[0];
        let descs = [&image.manifest, &image.config, &image.layers[0].descriptor];
        for d in descs {
            let bytes = fs::read(layout.blob_path(&d.digest)).expect("blob");
            assert_eq!(sha256_digest(&bytes), d.digest);
            assert_eq!(bytes.len() as u64, d.size);
        }
        let config: Value = serde_json::from_slice(&image.config_bytes).expect("config");
        assert_eq!(config["config"]["User"], "1000");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            image.layers[0].diff_id.as_str()
        );
        let index: Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).expect("index"))
                .expect("index json");
        assert_eq!(index["manifests"][0]["digest"], layout.digest());
    }
}
