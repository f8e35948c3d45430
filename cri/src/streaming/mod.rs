//! The streaming server behind CRI `Exec`, `Attach` and `PortForward`: those RPCs only
//! return a URL here, and the client (kubelet's proxy, crictl, kubectl) connects to it
//! and upgrades to WebSocket or SPDY/3.1 (see [`protocol`] for what travels).
//!
//! - [`cache`]: the pending requests, by single-use token that expires after a minute
//! - [`http`]: the HTTP/1.1 server (hyper), routes and the two upgrades
//! - [`remotecommand`]: exec and attach sessions over either transport
//! - [`portforward`]: port-forward sessions over either transport
//! - [`spdy`]: SPDY/3.1 framing and connections, our own (no maintained crate)
//! - [`status`]: how an exec ended, as the error channel reports it
//!
//! The server reaches containers through [`Backend`] (implemented by
//! [`crate::runtime::Runtime`]), so it can be tested with a fake.

pub mod cache;
pub mod http;
pub mod portforward;
pub mod protocol;
pub mod remotecommand;
pub mod spdy;
pub mod status;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use proto::v1;
use tokio::io::{AsyncRead, AsyncWrite};

pub use crate::runtime::container_stream::{StreamIo, TermSize};
use crate::runtime::{self, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The container or sandbox cannot be streamed to now (not found, not running).
    #[error(transparent)]
    Backend(#[from] runtime::Error),
    #[error(transparent)]
    TooManyPending(#[from] cache::Full),
    #[error("binding the streaming server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A byte stream both ways (a TCP connection into a pod, or a test's pipe).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// What the streaming server needs from the runtime.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Fails unless an exec in `container_id` can start now.
    fn check_container(&self, container_id: &str) -> runtime::Result<()>;
    /// Fails unless an attach to `container_id` with these options can start now: the
    /// container runs, was created with stdin if `stdin`, and has a TTY iff `tty`.
    fn check_attach(&self, container_id: &str, stdin: bool, tty: bool) -> runtime::Result<()>;
    /// Fails unless ports of `sandbox_id` can be reached now.
    fn check_sandbox(&self, sandbox_id: &str) -> runtime::Result<()>;
    /// Runs `cmd` in the container wired to `io`; returns its exit code.
    async fn exec(&self, container_id: &str, cmd: &[String], io: StreamIo) -> runtime::Result<i32>;
    /// Wires `io` to the container's own stdio until it exits or the client leaves.
    async fn attach(&self, container_id: &str, io: StreamIo) -> runtime::Result<()>;
    /// A connection to `port` on the pod's loopback.
    async fn port_forward(&self, sandbox_id: &str, port: u16) -> runtime::Result<Box<dyn Duplex>>;
}

#[async_trait::async_trait]
impl Backend for Runtime {
    fn check_container(&self, container_id: &str) -> runtime::Result<()> {
        self.check_exec(container_id)
    }

    fn check_attach(&self, container_id: &str, stdin: bool, tty: bool) -> runtime::Result<()> {
        self.attachable(container_id, stdin, tty).map(drop)
    }

    fn check_sandbox(&self, sandbox_id: &str) -> runtime::Result<()> {
        self.check_port_forward(sandbox_id)
    }

    async fn exec(&self, container_id: &str, cmd: &[String], io: StreamIo) -> runtime::Result<i32> {
        self.exec_stream(container_id, cmd, io).await
    }

    async fn attach(&self, container_id: &str, io: StreamIo) -> runtime::Result<()> {
        self.attach_stream(container_id, io).await
    }

    async fn port_forward(&self, sandbox_id: &str, port: u16) -> runtime::Result<Box<dyn Duplex>> {
        let conn = self.port_forward_connect(sandbox_id, port).await?;
        Ok(Box::new(conn))
    }
}

/// Shared by the server's connections.
pub(crate) struct State {
    pub(crate) cache: cache::Cache,
    pub(crate) backend: Arc<dyn Backend>,
}

/// The running server. Dropping it stops accepting connections; sessions already
/// running carry on to their end.
pub struct StreamingServer {
    addr: SocketAddr,
    base_url: String,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StreamingServer {
    /// Binds `addr` (port 0: any free port) and serves in the background.
    pub async fn start(addr: SocketAddr, backend: Arc<dyn Backend>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        // A wildcard bind is reached through loopback from this host.
        let mut reachable = bound;
        if reachable.ip().is_unspecified() {
            reachable.set_ip(if bound.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let state = Arc::new(State {
            cache: cache::Cache::default(),
            backend,
        });
        let accept = tokio::spawn(http::serve(listener, state.clone()));
        tracing::info!(addr = %bound, "serving streaming (exec, attach, port-forward)");
        Ok(Self {
            addr: bound,
            base_url: format!("http://{reachable}"),
            state,
            accept,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Validates an `Exec` request as containerd does and returns its URL.
    pub fn exec_url(&self, req: v1::ExecRequest) -> Result<String> {
        if req.container_id.is_empty() {
            return Err(Error::InvalidArgument(
                "missing required container id".into(),
            ));
        }
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.state.backend.check_container(&req.container_id)?;
        let token = self.state.cache.insert(cache::Pending::Exec(req))?;
        Ok(format!("{}/exec/{token}", self.base_url))
    }

    /// Validates an `Attach` request (as for exec, and against the container's own
    /// stdin and TTY) and returns its URL.
    pub fn attach_url(&self, req: v1::AttachRequest) -> Result<String> {
        if req.container_id.is_empty() {
            return Err(Error::InvalidArgument(
                "missing required container id".into(),
            ));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.state
            .backend
            .check_attach(&req.container_id, req.stdin, req.tty)?;
        let token = self.state.cache.insert(cache::Pending::Attach(req))?;
        Ok(format!("{}/attach/{token}", self.base_url))
    }

    /// Validates a `PortForward` request and returns its URL.
    pub fn port_forward_url(&self, req: v1::PortForwardRequest) -> Result<String> {
        if req.pod_sandbox_id.is_empty() {
            return Err(Error::InvalidArgument(
                "missing required pod sandbox id".into(),
            ));
        }
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::InvalidArgument(format!("port {p} out of range")));
        }
        self.state.backend.check_sandbox(&req.pod_sandbox_id)?;
        let token = self.state.cache.insert(cache::Pending::PortForward(req))?;
        Ok(format!("{}/portforward/{token}", self.base_url))
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
