//! Images: references, the content store, unpacked layers, image metadata, pulling from
//! registries and importing OCI archives.
//!
//! On-disk layout under the image root (`<root>/images`):
//! - `blobs/sha256/<hex>`: verified content (manifests, configs, layer blobs)
//! - `ingest/`: blobs being written; wiped at start, never trusted
//! - `layers/sha256/<chain-id>/`: one unpacked layer, an overlayfs lower directory
//! - `layers/tmp/`: layers being unpacked; wiped at start, never trusted
//! - `images.json`: image metadata, replaced atomically
//!
//! A blob or layer becomes visible only by an atomic rename after it was verified, and an
//! image record is written only after all its blobs and layers are committed, so a pull
//! killed at any point leaves nothing that a later pull would trust.

use std::path::PathBuf;

pub mod archive;
pub mod content;
pub mod install;
pub mod layers;
pub mod pull;
pub mod reference;
pub mod service;
pub mod store;
pub mod unpack;

pub use reference::ImageRef;
pub use service::{Images, ImagesConfig};
pub use store::{Image, LayerRecord};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {reference:?} not found")]
    NotFound { reference: String },
    #[error("registry {host} for {reference}: {message}")]
    Registry {
        host: String,
        reference: String,
        message: String,
    },
    #[error("registry {host} refused credentials for {reference}: {message}")]
    Unauthorized {
        host: String,
        reference: String,
        message: String,
    },
    #[error("image {reference} not found; tried {}", errors.join("; "))]
    NotFoundOnHosts {
        reference: String,
        errors: Vec<String>,
    },
    #[error("pulling {reference} failed on every host: {}", errors.join("; "))]
    AllHostsFailed {
        reference: String,
        errors: Vec<String>,
    },
    #[error("registry CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("building the registry client for host {host}: {reason}")]
    RegistryClient { host: String, reason: String },
    #[error("image {reference} has no manifest for platform {platform}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("unsupported media type {media_type:?} in {reference}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("blob {expected} content has digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} is corrupt: {reason}")]
    BadBlob { digest: String, reason: String },
    #[error("blob {digest} has {actual} bytes, descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer {digest} unpacks to diff id {actual}, image config says {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("bad manifest {digest}: {reason}")]
    BadManifest { digest: String, reason: String },
    #[error("bad image config {digest}: {reason}")]
    BadConfig { digest: String, reason: String },
    #[error("layer {digest} rejected: {source}")]
    Unpack {
        digest: String,
        #[source]
        source: unpack::Error,
    },
    #[error("layer {digest} unpacks to more than {limit} bytes")]
    TooLarge { digest: String, limit: u64 },
    #[error("bad image archive {path}: {reason}")]
    BadArchive { path: PathBuf, reason: String },
    #[error("image {id} is in use by {by}")]
    InUse { id: String, by: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was being done and on which path.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
