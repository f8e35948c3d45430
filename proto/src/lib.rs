//! The CRI `runtime.v1` wire protocol.
//!
//! Generated from `proto/runtime/v1/api.proto`; package, service and method names and
//! field numbers match the API that kubelet 1.24+ and crictl speak.

/// `runtime.v1`: messages, the `RuntimeService` and `ImageService` clients and servers.
pub mod runtime {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;

/// The runtime API version we speak, as reported by `Version`.
pub const RUNTIME_API_VERSION: &str = "v1";
