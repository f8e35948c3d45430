//! Serving CRI on a unix socket: recovery before serving, stale sockets, permissions,
//! clean shutdown on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::v1::image_service_server::ImageServiceServer;
use proto::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::image::{Images, ImagesConfig, install::Platform};
use crate::image_service::ImageService;
use crate::runtime::Runtime;
use crate::runtime_service::RuntimeService;
use crate::streaming::StreamingServer;

/// gRPC messages up to 16 MiB, as kubelet allows.
const MAX_MESSAGE: usize = 16 << 20;

/// Everything the server needs, built before the socket opens.
pub struct Cri {
    pub images: Arc<Images>,
    pub runtime: Arc<Runtime>,
    pub config: Config,
    /// Exclusive lock on the root for the life of the server.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Cri {
    /// Recovers state from disk (and preloads images) before anything is served.
    pub async fn open(config: Config) -> Result<Self> {
        let lock = lock_root(&config.root)?;
        let images = Images::open(ImagesConfig {
            root: config.root.clone(),
            registry: config.registry_config(),
            max_concurrent_downloads: config.max_concurrent_downloads,
            max_layer_bytes: config.max_layer_bytes,
            platform: Platform::host(),
        })
        .await?;
        if let Some(dir) = &config.image_preload_dir {
            let n = images.preload_dir(dir).await;
            tracing::info!(dir = %dir.display(), images = n, "preloaded images");
        }
        let images = Arc::new(images);
        let runtime = Runtime::open(config.runtime_config()?, images.clone()).await?;
        Ok(Self {
            images,
            runtime,
            config,
            _lock: lock,
        })
    }

    /// Serves until `shutdown` resolves; removes the socket afterwards.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let listener = bind(&self.config.socket)?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves on a socket bound with [`bind`] (so a caller knows the socket answers
    /// before it spawns the server); removes the socket afterwards.
    pub async fn serve_on(
        self,
        listener: UnixListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let socket = self.config.socket.clone();
        let streaming =
            StreamingServer::start(self.config.streaming_addr, self.runtime.clone()).await?;
        tracing::info!(socket = %socket.display(), "serving CRI");
        let runtime = RuntimeServiceServer::new(RuntimeService::new(
            self.runtime.clone(),
            Arc::new(streaming),
        ))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        let images =
            ImageServiceServer::new(ImageService::new(self.images.clone(), self.runtime.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
        let result = tonic::transport::Server::builder()
            .add_service(runtime)
            .add_service(images)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await;
        let _ = std::fs::remove_file(&socket);
        result.map_err(|e| Error::Io {
            what: "serving gRPC",
            path: socket,
            source: std::io::Error::other(e),
        })
    }
}

/// Takes `<root>/lock`, so a second server on the same root fails before its recovery
/// could touch the files of the one that is running.
fn lock_root(root: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(root).map_err(|source| Error::Io {
        what: "creating root",
        path: root.to_path_buf(),
        source,
    })?;
    let path = root.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io {
            what: "opening lock",
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                Error::AlreadyExists {
                    kind: "a cri server using root",
                    id: root.display().to_string(),
                }
            } else {
                Error::Io {
                    what: "locking root",
                    path,
                    source: errno.into(),
                }
            }
        },
    )
}

/// Binds the socket: creates its directory, replaces a stale socket (one nobody answers
/// on), refuses to steal a live one, and sets mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let io = |what: &'static str, path: &Path| {
        let path: PathBuf = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating socket directory", dir))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(Error::InvalidArgument(format!(
                "socket path {} exists and is not a socket",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::AlreadyExists {
                kind: "a server on socket",
                id: path.display().to_string(),
            });
        }
        tracing::info!(socket = %path.display(), "removing stale socket");
        std::fs::remove_file(path).map_err(io("removing stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io("binding socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io("setting socket mode", path))?;
    Ok(listener)
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
