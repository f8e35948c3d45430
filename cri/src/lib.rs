//! CRI `runtime.v1` server: the image service with layered storage (pull from registries,
//! import OCI archives, content store + unpacked layers), and the runtime service.
//!
//! See ARCHITECTURE.md at the repository root for how this crate fits the workspace.

pub mod config;
pub mod error;
pub mod image;
pub mod image_service;
pub mod runtime;
pub mod runtime_service;
pub mod server;
pub mod streaming;
pub mod tls_roots;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Cri;

/// Name and version reported by `Version`.
pub const RUNTIME_NAME: &str = "nodelet";
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");
