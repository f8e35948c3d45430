//! The runtime half of CRI: pod sandboxes and containers.
//!
//! A sandbox is a pinned network namespace (configured through CNI) plus an infra
//! container that holds the pod's IPC, UTS and (optionally) PID namespaces. Containers
//! run through an OCI runtime binary (runc by default), each under a small monitor
//! process (`cri-monitor`) that owns its stdio, writes the CRI log and records its exit.
//!
//! Module map:
//! - `netns`, `cni`: the pod network (pinned netns, CNI 1.0 plugin chain)
//! - `spec`: CRI configs + image config → OCI runtime spec (bundle `config.json`)
//! - `monitor`: spawning and watching `cri-monitor`; the exit record it leaves
//! - `logfmt`: the CRI log line format the monitor writes
//! - `oci`: the OCI runtime binary (runc, crun) as named handlers

pub mod cni;
mod container_checkpoint;
mod image_volume;
pub mod logfmt;
pub mod metrics;
pub mod monitor;
pub mod netns;
pub mod oci;
mod sandbox_update;
pub mod spec;

use std::path::PathBuf;

/// How a container or the infra process gets one namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ns {
    /// The host's namespace (hostNetwork, hostIPC, hostPID).
    Host,
    /// A new namespace created by the OCI runtime for this container.
    New,
    /// Join the namespace at this path (a pin, `/proc/<infra pid>/ns/ipc`, …).
    Join(PathBuf),
}

/// The namespaces of one container (or of the infra container).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Namespaces {
    pub network: Ns,
    pub ipc: Ns,
    pub uts: Ns,
    pub pid: Ns,
}

/// Files the sandbox prepares once and every container of the pod bind-mounts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxFiles {
    /// `/etc/hostname`
    pub hostname: PathBuf,
    /// `/etc/hosts`
    pub hosts: PathBuf,
    /// `/etc/resolv.conf`
    pub resolv_conf: PathBuf,
    /// A per-pod tmpfs for `/dev/shm`; `None` with hostIPC (the host's /dev/shm).
    pub shm: Option<PathBuf>,
}

pub mod cgroups;
pub mod container_create;
pub mod container_exec;
pub mod container_start;
pub mod container_status;
pub mod container_stop;
pub mod container_stream;
pub mod container_update;
pub mod records;
pub mod recover;
pub mod rootfs;
pub mod sandbox_run;
pub mod sandbox_status;
pub mod sandbox_stop;
pub mod stats;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use proto::v1;
use tokio::sync::{broadcast, watch};

use crate::image::Images;
pub use records::{Container, Sandbox};
use store::Store;

/// Everything the runtime needs from configuration, resolved at start.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Persistent records and per-object directories.
    pub root: PathBuf,
    /// OCI runtime handlers by name, and the one used when a pod names none.
    pub handlers: BTreeMap<String, oci::Handler>,
    pub default_handler: String,
    /// Infra container image; empty: the built-in `cri-pause`.
    pub sandbox_image: String,
    /// Every pod gets an infra container, not only those sharing a PID namespace.
    pub infra_for_every_pod: bool,
    pub monitor: PathBuf,
    pub pause: PathBuf,
    pub netns_dir: PathBuf,
    /// CRIU, for CheckpointContainer.
    pub criu: PathBuf,
    pub cni: cni::CniConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Oci(#[from] oci::Error),
    #[error(transparent)]
    Monitor(#[from] monitor::Error),
    #[error(transparent)]
    Spec(#[from] spec::Error),
    #[error(transparent)]
    Cni(#[from] cni::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Rootfs(#[from] rootfs::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// Pod sandboxes and containers.
pub struct Runtime {
    cfg: RuntimeConfig,
    images: Arc<Images>,
    sandboxes: Arc<Store<Sandbox>>,
    containers: Arc<Store<Container>>,
    cni: cni::Cni,
    host: spec::HostLimits,
    events: broadcast::Sender<v1::ContainerEventResponse>,
    /// Per-object locks: RPCs on one sandbox or container run one at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per-container exit notifications: `true` once the exit is recorded.
    exits: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// The previous CPU sample per cgroup, for usage in nano cores.
    cpu_samples: Mutex<HashMap<String, stats::CpuSample>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cfg", &self.cfg).finish()
    }
}

impl Runtime {
    /// Opens the stores and recovers every sandbox and container (see `recover`)
    /// before returning: a client never sees a half-recovered runtime.
    pub async fn open(cfg: RuntimeConfig, images: Arc<Images>) -> Result<Arc<Self>> {
        let sandboxes = Store::open(&cfg.root.join("sandboxes"))?;
        let containers = Store::open(&cfg.root.join("containers"))?;
        let cni = cni::Cni::new(cfg.cni.clone());
        if let Err(e) = cni.ensure_default_conflist() {
            tracing::warn!(err = %e, "cannot write the default CNI network");
        }
        // A subscriber that falls this far behind loses its stream and relists.
        let (events, _) = broadcast::channel(256);
        let rt = Arc::new(Self {
            cfg,
            images,
            sandboxes,
            containers,
            cni,
            host: spec::HostLimits::detect(),
            events,
            locks: Mutex::default(),
            exits: Mutex::default(),
            cpu_samples: Mutex::default(),
        });
        rt.recover().await;
        Ok(rt)
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The node's pod CIDR, reported by the kubelet (see [`cni::Cni::set_pod_cidr`]).
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> Result<bool> {
        Ok(self.cni.set_pod_cidr(pod_cidr)?)
    }

    /// The lock of one object; hold it across a whole RPC on that object.
    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn handler(&self, name: &str) -> Result<&oci::Handler> {
        let name = if name.is_empty() {
            &self.cfg.default_handler
        } else {
            name
        };
        self.cfg.handlers.get(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "runtime handler {name:?} is not configured (have: {})",
                self.cfg
                    .handlers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// A receiver of container lifecycle events (`GetContainerEvents`).
    pub fn subscribe(&self) -> broadcast::Receiver<v1::ContainerEventResponse> {
        self.events.subscribe()
    }

    fn emit(&self, container: &Container, kind: v1::ContainerEventType) {
        let sandbox = self.sandboxes.get(&container.sandbox_id).ok();
        let event = v1::ContainerEventResponse {
            container_id: container.id.clone(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: sandbox.as_ref().map(|s| self.sandbox_status_of(s)),
            containers_statuses: vec![self.container_status_of(container)],
        };
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Status conditions for `Status`.
    pub fn conditions(&self) -> Vec<v1::RuntimeCondition> {
        let runtime = match self.handler("") {
            Ok(h) if h.path.is_file() => v1::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Ok(h) => v1::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: false,
                reason: "RuntimeBinaryMissing".into(),
                message: format!("OCI runtime {} not found", h.path.display()),
            },
            Err(e) => v1::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: false,
                reason: "NoDefaultHandler".into(),
                message: e.to_string(),
            },
        };
        let network = match self.cni.status() {
            Ok(()) => v1::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(e) => v1::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: e.to_string(),
            },
        };
        vec![runtime, network]
    }
}

/// The pod cgroup of a sandbox whose config names no parent (we create and remove it).
pub fn default_cgroup_parent(sandbox_id: &str) -> String {
    format!("/nodelet/{sandbox_id}")
}

/// Nanoseconds since the Unix epoch, as CRI timestamps are.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// A new 64-hex-digit id, like containerd's and CRI-O's.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        // Unreachable on Linux; fall back to time and a counter rather than fail.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&now_ns().to_le_bytes());
        bytes[8..16].copy_from_slice(&n.to_le_bytes());
        bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(bytes)
}

/// Whether a record's labels match a CRI label selector (all pairs equal).
pub fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
