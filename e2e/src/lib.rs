//! Harness for end-to-end tests: real registry, test images, the `cri` binary.
//!
//! - [`registry`]: Debian's `docker-registry` on a loopback port, and [`push`] via skopeo.
//! - [`image`]: OCI image layouts built in Rust (layers, config, indexes, archives).
//! - [`malicious`]: hostile layer tars and a decompression bomb.
//! - [`http`]: a tiny blocking HTTP client for reading the registry back.
//! - [`cri`]: the `cri` binary and gRPC clients to it.
//! - [`kubelet`]: the `kubelet` binary with static pods, its `/pods`, and its runtime.
//!
//! Errors are `anyhow`: the only callers are tests, which report them and never match.

pub mod bench;
pub mod cri;
pub mod http;
pub mod image;
pub mod kubelet;
pub mod malicious;
pub mod pods;
pub mod registry;

pub use image::{
    BuiltImage, CompressedLayer, Compression, Descriptor, Entry, ImageBuilder, IndexBuilder, Layer,
    LayerInfo, ManifestFormat, OciLayout, Platform, busybox_layer, two_platform_index,
    write_oci_archive,
};
pub use registry::{Credentials, Registry, RegistryOptions, push};
