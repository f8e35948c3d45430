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
    /// Whole bytes of a small blob (manifest, config); verification is the caller's job.
    async fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>>;
    /// A reader over a layer blob; it is read on a blocking thread.
    async fn open(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>>;
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
    let reader = source.open(desc).await?;
    let ingest = target.content.ingest()?;
    let dir = target.layers.begin()?;
    let desc2 = desc.clone();
    let limit = target.max_layer_bytes;
    let dir_path = dir.path().to_path_buf();
    let (ingest, actual_diff, stats) = tokio::task::spawn_blocking(move || {
        apply_blob(reader, ingest, &dir_path, &desc2.digest, limit)
    })
    .await??;
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

/// Reads a layer blob once: the compressed bytes go to the content store's ingest file and
/// its hash; the decompressed tar is hashed (diff id) and unpacked into `dir`.
fn apply_blob(
    reader: Box<dyn Read + Send>,
    ingest: Ingest,
    dir: &std::path::Path,
    digest: &str,
    limit: u64,
) -> Result<(Ingest, String, unpack::UnpackStats)> {
    let io_fail = |source: io::Error| {
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
    };
    let mut tee = BufReader::with_capacity(
        256 * 1024,
        Tee {
            inner: reader,
            sink: ingest,
        },
    );
    let magic = tee.fill_buf().map_err(io_fail)?.to_vec();
    let (diff_id, stats) = {
        let decompressed: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(&mut tee))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::with_buffer(&mut tee).map_err(io_fail)?)
        } else {
            Box::new(&mut tee)
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
        // The diff id covers the whole tar stream, including padding after the end
        // marker: read it to the end.
        if let Err(e) = io::copy(&mut counted, &mut io::sink()) {
            return Err(if counted.n > limit {
                too_large()
            } else {
                io_fail(e)
            });
        }
        (
            format!("sha256:{}", hex::encode(counted.hasher.finalize())),
            stats,
        )
    };
    // The blob digest covers every compressed byte, also those after the compressed end.
    io::copy(&mut tee, &mut io::sink()).map_err(io_fail)?;
    let Tee { sink, .. } = tee.into_inner();
    Ok((sink, diff_id, stats))
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
