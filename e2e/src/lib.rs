//! Harness for end-to-end tests: real registry, test images, the `cri` binary.
//!
//! - [`registry`]: Debian's `docker-registry` on a loopback port, and [`push`] via skopeo.
//! - [`image`]: OCI image layouts built in Rust (layers, config, indexes, archives).
//! - [`malicious`]: hostile layer tars and a decompression bomb.
//! - [`http`]: a tiny blocking HTTP client for reading the registry back.
//! - [`cri`]: the `cri` binary and gRPC clients to it.
//! - [`kubelet`]: the `kubelet` binary with static pods, its `/pods`, and its runtime.
//! - [`apiserver`]: a test Kubernetes API server (plain HTTP) for kubelets and kubectl.
//!
//! Errors are `anyhow`: the only callers are tests, which report them and never match.

pub mod apiserver;
pub mod bench;
pub mod cluster;
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

/// A loopback port that refuses connections for as long as this lives: the socket is
/// bound (so no other test, and no registry started in parallel, can take the port) but
/// never listens, so a connect gets ECONNREFUSED.
pub struct ClosedPort {
    _fd: std::os::fd::OwnedFd,
    addr: std::net::SocketAddr,
}

impl ClosedPort {
    pub fn new() -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: raw is a fresh fd nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        use std::os::fd::AsRawFd;
        // SAFETY: sin is a valid sockaddr_in of len bytes.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                len,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut out: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut out_len = len;
        // SAFETY: out is a writable sockaddr_in of out_len bytes.
        if unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut out as *mut libc::sockaddr_in).cast(),
                &mut out_len,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error().into());
        }
        let addr =
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(out.sin_port)));
        Ok(Self { _fd: fd, addr })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}
