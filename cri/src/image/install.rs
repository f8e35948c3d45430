//! Turning a manifest from some source (a registry, an OCI archive) into an image: verify
//! every blob, unpack layers as they stream, commit, and record the image.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::content::{ContentStore, Ingest, sha256_digest};
use super::layers::{LayerStore, chain_ids};
use super::store::{Image, LayerRecord};
use super::{Error, Result, unpack};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What we ask registries for, in order of preference.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
];

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI (Go) naming.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        }
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

/// Picks the manifest for `want` from an index: same os and architecture; an exact
/// variant wins, then an entry without variant (arm64 images usually omit `v8`), then for
/// 32-bit arm a lower variant (v7 runs v6 and v5).
pub fn select_platform<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    let rank = |d: &Descriptor| -> Option<u32> {
        match (variant_of(d).as_deref(), want.variant.as_deref()) {
            (v, w) if v == w => Some(0),
            (None, _) => Some(1),
            (Some(v), Some(w)) if want.architecture == "arm" => {
                let num = |s: &str| s.trim_start_matches('v').parse::<u32>().ok();
                match (num(v), num(w)) {
                    (Some(v), Some(w)) if v < w => Some(2 + (w - v)),
                    _ => None,
                }
            }
            _ => None,
        }
    };
    candidates
        .into_iter()
        .filter_map(|d| rank(d).map(|r| (r, d)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, d)| d)
}

/// A manifest or an index, as far as we need it.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestDoc {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

pub enum Parsed {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

pub fn parse_manifest(digest: &str, bytes: &[u8]) -> Result<Parsed> {
    let bad = |reason: String| Error::BadManifest {
        digest: digest.to_string(),
        reason,
    };
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    if doc.schema_version != 2 {
        return Err(bad(format!(
            "schemaVersion {} is not supported (docker schema 1 is obsolete)",
            doc.schema_version
        )));
    }
    match (
        doc.media_type.as_deref(),
        doc.manifests,
        doc.config,
        doc.layers,
    ) {
        (Some(MT_OCI_INDEX | MT_DOCKER_LIST) | None, Some(manifests), None, _) => {
            Ok(Parsed::Index(manifests))
        }
        (Some(MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) | None, None, Some(config), Some(layers)) => {
            Ok(Parsed::Manifest { config, layers })
        }
        (Some(mt), ..) => Err(bad(format!("unexpected media type {mt:?} or shape"))),
        (None, ..) => Err(bad("neither an index nor an image manifest".into())),
    }
}

/// The parts of an image config we use.
#[derive(Debug, Deserialize)]
pub struct ImageConfigDoc {
    #[serde(default)]
    pub config: Option<ContainerConfigDoc>,
    pub rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerConfigDoc {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

fn is_layer_media_type(mt: &str) -> bool {
    mt.is_empty()
        || mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
}

/// Where blobs come from.
#[async_trait]
pub trait Source: Send + Sync {
    /// Bytes of a small blob (manifest, config): all of them, but never more than
    /// `desc.size + 1`, so an endless or oversized body costs no more memory than the
    /// descriptor announced. Verification is the caller's job.
    async fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>>;
    /// A reader over a layer blob; it is read on a blocking thread, and never past
    /// `desc.size + 1` bytes whatever the reader would give.
    async fn open(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>>;
}

/// How many bytes of a blob are read at most: one more than announced, which is enough
/// to tell that it is too long.
pub fn read_cap(desc: &Descriptor) -> u64 {
    desc.size.saturating_add(1)
}

/// Everything install needs from the image service.
pub struct Target {
    pub content: ContentStore,
    pub layers: LayerStore,
    /// Per-chain-id locks so concurrent pulls of images sharing a layer unpack it once.
    pub inflight: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    pub max_concurrent: usize,
    pub max_layer_bytes: u64,
    /// Disk usage of layers already recorded by other images, by chain id.
    pub known_usage: HashMap<String, (u64, u64)>,
}

/// Fetches and verifies a small blob, storing it in the content store.
pub async fn fetch_verified(
    source: &dyn Source,
    target: &Target,
    desc: &Descriptor,
) -> Result<Vec<u8>> {
    if target.content.exists(&desc.digest) {
        return target.content.read(&desc.digest);
    }
    let bytes = source.fetch(desc).await?;
    // Sources stop after `read_cap` bytes; a longer answer is refused the same way.
    if bytes.len() as u64 != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = sha256_digest(&bytes);
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            expected: desc.digest.clone(),
            actual,
        });
    }
    target.content.write_blob(&desc.digest, &bytes)?;
    Ok(bytes)
}

/// Installs the image described by a verified platform manifest. `extra_blobs` are blobs
/// already stored that the image owns too (the index it was chosen from).
pub async fn install(
    source: Arc<dyn Source>,
    target: &Target,
    manifest_digest: &str,
    manifest: &[u8],
    extra_blobs: Vec<String>,
) -> Result<Image> {
    let Parsed::Manifest { config, layers } = parse_manifest(manifest_digest, manifest)? else {
        return Err(Error::BadManifest {
            digest: manifest_digest.to_string(),
            reason: "expected an image manifest, found an index".into(),
        });
    };
    let config_bytes = fetch_verified(source.as_ref(), target, &config).await?;
    let config_doc: ImageConfigDoc =
        serde_json::from_slice(&config_bytes).map_err(|e| Error::BadConfig {
            digest: config.digest.clone(),
            reason: e.to_string(),
        })?;
    if config_doc.rootfs.kind != "layers" {
        return Err(Error::BadConfig {
            digest: config.digest.clone(),
            reason: format!("rootfs type {:?}, want \"layers\"", config_doc.rootfs.kind),
        });
    }
    if config_doc.rootfs.diff_ids.len() != layers.len() {
        return Err(Error::BadConfig {
            digest: config.digest.clone(),
            reason: format!(
                "{} diff ids for {} layers",
                config_doc.rootfs.diff_ids.len(),
                layers.len()
            ),
        });
    }
    for l in &layers {
        if !is_layer_media_type(&l.media_type) {
            return Err(Error::UnsupportedMediaType {
                reference: manifest_digest.to_string(),
                media_type: l.media_type.clone(),
            });
        }
    }
    let chains = chain_ids(&config_doc.rootfs.diff_ids);

    // Layers are independent directories, so they download and unpack concurrently.
    let work: Vec<(Descriptor, String, String)> = layers
        .iter()
        .cloned()
        .zip(config_doc.rootfs.diff_ids.iter().cloned())
        .zip(chains.iter().cloned())
        .map(|((d, diff), chain)| (d, diff, chain))
        .collect();
    let jobs = work.into_iter().map(|(desc, diff_id, chain_id)| {
        let source = source.clone();
        async move { ensure_layer(source, target, &desc, &diff_id, &chain_id).await }
    });
    use futures::StreamExt as _;
    let records: Vec<LayerRecord> = futures::stream::iter(jobs)
        .buffered(target.max_concurrent.max(1))
        .collect::<Vec<Result<LayerRecord>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;

    let mut blobs = extra_blobs;
    blobs.push(manifest_digest.to_string());
    blobs.push(config.digest.clone());
    blobs.extend(layers.iter().map(|l| l.digest.clone()));
    let size = manifest.len() as u64 + config.size + layers.iter().map(|l| l.size).sum::<u64>();
    Ok(Image {
        id: config.digest.clone(),
        repo_tags: vec![],
        repo_digests: vec![],
        manifest_digest: manifest_digest.to_string(),
        blobs,
        layers: records,
        size,
        user: config_doc
            .config
            .unwrap_or_default()
            .user
            .unwrap_or_default(),
        pinned: false,
    })
}

async fn ensure_layer(
    source: Arc<dyn Source>,
    target: &Target,
    desc: &Descriptor,
    diff_id: &str,
    chain_id: &str,
) -> Result<LayerRecord> {
    let lock = {
        let mut map = target.inflight.lock().await;
        map.entry(chain_id.to_string()).or_default().clone()
    };
    let _guard = lock.lock().await;
    let record = |bytes, inodes| LayerRecord {
        digest: desc.digest.clone(),
        media_type: desc.media_type.clone(),
        size: desc.size,
        diff_id: diff_id.to_string(),
        chain_id: chain_id.to_string(),
        unpacked_bytes: bytes,
        unpacked_inodes: inodes,
    };
    if target.layers.exists(chain_id) && target.content.exists(&desc.digest) {
        tracing::debug!(chain_id, digest = %desc.digest, "layer present, not downloading");
        let (b, i) = match target.known_usage.get(chain_id) {
            Some(u) => *u,
            None => super::layers::dir_usage(&target.layers.path(chain_id)?),
        };
        return Ok(record(b, i));
    }
    // However long the body, no more than one byte past the announced size is read.
    let reader = source.open(desc).await?.take(read_cap(desc));
    let ingest = target.content.ingest()?;
    let dir = target.layers.begin()?;
    let desc2 = desc.clone();
    let limit = target.max_layer_bytes;
    let dir_path = dir.path().to_path_buf();
    let (ingest, actual_diff, stats) = tokio::task::spawn_blocking(move || {
        apply_blob(Box::new(reader), ingest, &dir_path, &desc2, limit)
    })
    .await??;
    // The blob is checked before the diff id: its digest is what the manifest vouches for.
    if ingest.size() != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: ingest.size(),
        });
    }
    let actual_digest = ingest.digest();
    if actual_digest != desc.digest {
        return Err(Error::DigestMismatch {
            expected: desc.digest.clone(),
            actual: actual_digest,
        });
    }
    if actual_diff != diff_id {
        return Err(Error::DiffIdMismatch {
            digest: desc.digest.clone(),
            expected: diff_id.to_string(),
            actual: actual_diff,
        });
    }
    // Blob first: a layer directory is only trusted when its blob verified.
    ingest.commit(&desc.digest, Some(desc.size))?;
    target.layers.commit(dir, chain_id)?;
    tracing::debug!(chain_id, digest = %desc.digest, bytes = stats.bytes, "layer unpacked");
    Ok(record(stats.bytes, stats.inodes))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// What the media type says, when it says it exactly: OCI layer types name their
    /// compression. Docker's types predate zstd and are written loosely by many tools, and
    /// an empty type says nothing: for those the first bytes decide, as containerd's
    /// decompressor does for every layer.
    fn declared(media_type: &str) -> Option<Self> {
        let oci = media_type.strip_prefix("application/vnd.oci.image.layer.")?;
        if oci.ends_with(".tar+gzip") {
            Some(Self::Gzip)
        } else if oci.ends_with(".tar+zstd") {
            Some(Self::Zstd)
        } else if oci.ends_with(".tar") {
            Some(Self::None)
        } else {
            None
        }
    }

    /// From the first bytes of the blob (fewer than four only when the blob is shorter).
    fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Reads until `n` bytes or the end of `r`, whichever comes first.
fn read_head(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads a layer blob once: the compressed bytes go to the content store's ingest file and
/// its hash; the decompressed tar is hashed (diff id) and unpacked into `dir`. The caller
/// verifies the blob's size and digest on the returned ingest.
fn apply_blob(
    reader: Box<dyn Read + Send>,
    ingest: Ingest,
    dir: &std::path::Path,
    desc: &Descriptor,
    limit: u64,
) -> Result<(Ingest, String, unpack::UnpackStats)> {
    let digest = desc.digest.as_str();
    let io_fail = |source: io::Error| io_error(digest, dir, source);
    let mut tee = Tee {
        inner: reader,
        sink: ingest,
    };
    let declared = Compression::declared(&desc.media_type);
    let head = match declared {
        Some(_) => Vec::new(),
        None => read_head(&mut tee, 4).map_err(io_fail)?,
    };
    let compression = declared.unwrap_or_else(|| Compression::sniff(&head));
    let mut input = BufReader::with_capacity(256 * 1024, io::Cursor::new(head).chain(tee));
    let unpacked = decompress_and_unpack(&mut input, compression, dir, digest, limit);
    // The blob digest covers every compressed byte, also those after the compressed end.
    let drained = match &unpacked {
        Ok(_) => io::copy(&mut input, &mut io::sink()).map(drop),
        Err(_) => Ok(()),
    };
    let (_, Tee { sink, .. }) = input.into_inner().into_inner();
    // A body longer than announced fails as such, whatever it did to the decoders.
    if sink.size() > desc.size {
        return Err(Error::SizeMismatch {
            digest: digest.to_string(),
            expected: desc.size,
            actual: sink.size(),
        });
    }
    let (diff_id, stats) = unpacked?;
    drained.map_err(io_fail)?;
    Ok((sink, diff_id, stats))
}

/// Decompresses `input` and unpacks the tar into `dir`; returns the diff id (the digest of
/// the whole tar stream) and what was written.
fn decompress_and_unpack(
    input: &mut impl BufRead,
    compression: Compression,
    dir: &std::path::Path,
    digest: &str,
    limit: u64,
) -> Result<(String, unpack::UnpackStats)> {
    let io_fail = |source: io::Error| io_error(digest, dir, source);
    let decompressed: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(io_fail)?)
        }
        Compression::None => Box::new(input),
    };
    let mut counted = Counted {
        inner: decompressed,
        hasher: Sha256::new(),
        n: 0,
        limit,
    };
    let too_large = || Error::TooLarge {
        digest: digest.to_string(),
        limit,
    };
    let stats = match unpack::unpack_layer(&mut counted, dir) {
        Ok(s) => s,
        Err(_) if counted.n > limit => return Err(too_large()),
        Err(source) => {
            return Err(Error::Unpack {
                digest: digest.to_string(),
                source,
            });
        }
    };
    // The diff id covers the whole tar stream, including padding after the end marker:
    // read it to the end.
    if let Err(e) = io::copy(&mut counted, &mut io::sink()) {
        return Err(if counted.n > limit {
            too_large()
        } else {
            io_fail(e)
        });
    }
    Ok((
        format!("sha256:{}", hex::encode(counted.hasher.finalize())),
        stats,
    ))
}

/// Corrupt data in a blob is the blob's fault; anything else is an I/O failure.
fn io_error(digest: &str, dir: &std::path::Path, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::InvalidData {
        Error::BadBlob {
            digest: digest.to_string(),
            reason: source.to_string(),
        }
    } else {
        Error::Io {
            what: "reading layer",
            path: dir.to_path_buf(),
            source,
        }
    }
}

/// Copies everything read into `sink`.
struct Tee<R> {
    inner: R,
    sink: Ingest,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Hashes and counts what passes, failing once more than `limit` bytes went by.
struct Counted<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        if self.n > self.limit {
            return Err(io::Error::other("layer exceeds the unpacked size limit"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn platform_selection() {
        let p = |a: &str, v: Option<&str>| Platform {
            architecture: a.into(),
            os: "linux".into(),
            variant: v.map(Into::into),
        };
        let idx = vec![
            entry("amd64", None, "amd64"),
            entry("arm64", Some("v8"), "arm64v8"),
            entry("arm", Some("v6"), "armv6"),
            entry("arm", Some("v7"), "armv7"),
        ];
        let cases = [
            (p("amd64", None), Some("amd64")),
            (p("arm64", Some("v8")), Some("arm64v8")),
            (p("arm64", None), None),
            (p("arm", Some("v7")), Some("armv7")),
            (p("arm", Some("v8")), Some("armv7")),
            (p("arm", Some("v5")), None),
            (p("s390x", None), None),
        ];
        for (want, expect) in cases {
            let got = select_platform(&idx, &want).map(|d| d.digest.as_str());
            assert_eq!(got, expect, "{want}");
        }
        // arm64 images usually carry no variant
        let idx = vec![entry("arm64", None, "arm64")];
        assert_eq!(
            select_platform(&idx, &p("arm64", Some("v8"))).map(|d| d.digest.as_str()),
            Some("arm64")
        );
    }

    #[test]
    fn compression_from_media_type_or_first_bytes() {
        let declared = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", None),
            ("application/vnd.docker.image.rootfs.diff.tar", None),
            ("", None),
        ];
        for (mt, want) in declared {
            assert_eq!(Compression::declared(mt), want, "{mt:?}");
        }
        let sniffed: [(&[u8], Compression); 5] = [
            (&[0x1f, 0x8b, 8, 0], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0x28, 0xb5, 0x2f], Compression::None),
            (b"usr/", Compression::None),
            (b"", Compression::None),
        ];
        for (head, want) in sniffed {
            assert_eq!(Compression::sniff(head), want, "{head:?}");
        }
    }

    /// Hands out one byte per read, as a slow network can.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            match buf.first_mut() {
                Some(b) => *b = *first,
                None => return Ok(0),
            }
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn head_is_read_across_short_reads() {
        let zstd_magic = [0x28, 0xb5, 0x2f, 0xfd, 0, 1];
        let head = read_head(&mut Trickle(&zstd_magic), 4).expect("read");
        assert_eq!(Compression::sniff(&head), Compression::Zstd);
        assert_eq!(read_head(&mut Trickle(&[0x1f]), 4).expect("read"), [0x1f]);
    }

    /// Serves one layer blob, from bytes or as an endless stream of zeros.
    struct OneBlob {
        bytes: Option<Vec<u8>>,
    }

    #[async_trait]
    impl Source for OneBlob {
        async fn fetch(&self, _: &Descriptor) -> Result<Vec<u8>> {
            Ok(self.bytes.clone().unwrap_or_default())
        }
        async fn open(&self, _: &Descriptor) -> Result<Box<dyn Read + Send>> {
            Ok(match &self.bytes {
                Some(b) => Box::new(io::Cursor::new(b.clone())),
                None => Box::new(io::repeat(0)),
            })
        }
    }

    fn target(root: &std::path::Path) -> Target {
        Target {
            content: ContentStore::open(root).expect("content store"),
            layers: LayerStore::open(root).expect("layer store"),
            inflight: Default::default(),
            max_concurrent: 1,
            max_layer_bytes: 1 << 30,
            known_usage: HashMap::new(),
        }
    }

    fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).expect("append");
        b.into_inner().expect("tar")
    }

    fn layer_desc(media_type: &str, blob: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: sha256_digest(blob),
            size: blob.len() as u64,
            platform: None,
            annotations: None,
        }
    }

    #[tokio::test]
    async fn endless_layer_body_fails_as_too_long_and_stores_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let t = target(root.path());
        let tar = tar_with("f", b"x");
        let desc = layer_desc("application/vnd.oci.image.layer.v1.tar", &tar);
        let diff = sha256_digest(&tar);
        let source: Arc<dyn Source> = Arc::new(OneBlob { bytes: None });
        let err = ensure_layer(source, &t, &desc, &diff, &diff)
            .await
            .expect_err("endless body");
        assert!(
            matches!(err, Error::SizeMismatch { actual, .. } if actual == desc.size + 1),
            "{err}"
        );
        assert!(!t.layers.exists(&diff));
        assert!(!t.content.exists(&desc.digest));
    }

    #[tokio::test]
    async fn gzip_and_zstd_layers_unpack_whatever_the_media_type_says() {
        let tar = tar_with("hello", b"world");
        let diff = sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zst = zstd::encode_all(tar.as_slice(), 3).expect("zstd");
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar+gzip", gz.clone()),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", gz),
            // Docker types are sniffed: the bytes decide.
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                zst.clone(),
            ),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zst),
            ("application/vnd.oci.image.layer.v1.tar", tar.clone()),
            ("", tar),
        ];
        for (mt, blob) in cases {
            let root = tempfile::tempdir().expect("tempdir");
            let t = target(root.path());
            let desc = layer_desc(mt, &blob);
            let source: Arc<dyn Source> = Arc::new(OneBlob { bytes: Some(blob) });
            let rec = ensure_layer(source, &t, &desc, &diff, &diff)
                .await
                .unwrap_or_else(|e| panic!("{mt}: {e}"));
            assert_eq!(rec.diff_id, diff);
            let dir = t.layers.path(&diff).expect("path");
            assert_eq!(std::fs::read(dir.join("hello")).expect("file"), b"world");
        }
    }

    #[tokio::test]
    async fn oversized_small_blob_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let t = target(root.path());
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let mut desc = layer_desc("", &config);
        desc.size -= 1;
        let source = OneBlob {
            bytes: Some(config),
        };
        let err = fetch_verified(&source, &t, &desc)
            .await
            .expect_err("too long");
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        assert!(!t.content.exists(&desc.digest));
    }

    #[test]
    fn manifest_shapes() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_manifest("d", idx), Ok(Parsed::Index(_))));
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(
            parse_manifest("d", m),
            Ok(Parsed::Manifest { .. })
        ));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(parse_manifest("d", v1).is_err());
        assert!(parse_manifest("d", b"nope").is_err());
    }
}
