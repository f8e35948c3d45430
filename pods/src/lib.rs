//! The pod lifecycle engine: Kubernetes `Pod`s (from any source) run through any CRI
//! runtime. No API-server code lives here.
//!
//! - `translate`: a `Pod` → CRI `PodSandboxConfig` and `ContainerConfig`s (pure).
//! - `plan`: desired pod + observed runtime state → actions (pure, table-tested).
//! - `status`: observed state → `PodStatus` as the upstream kubelet computes it (pure).
//! - `objects`: the seam through which API objects (config maps, secrets, tokens,
//!   services) reach the engine; the kubelet implements it over its API client.
//! - `events`: the seam through which the engine reports Kubernetes events (Pulled,
//!   Started, BackOff, Unhealthy…) with upstream's reasons; the kubelet records them
//!   through the API.
//!
//! The labels and annotations below are how a pod's sandbox and containers are found
//! again in the runtime: the same keys the upstream kubelet writes, so `crictl ps`
//! output reads the same and state survives an agent restart.

pub mod backoff;
pub mod cgroups;
pub mod credentials;
pub mod cri;
pub mod engine;
pub mod envvars;
pub mod events;
pub mod handlers;
pub mod objects;
pub mod plan;
pub mod probe;
pub mod status;
pub mod termination;
pub mod translate;
pub mod volumes;

use std::time::SystemTime;

use proto::v1;

/// Where a pod came from (`file`, `http`, `api`); any but `api` makes it a static pod.
pub const ANNOTATION_CONFIG_SOURCE: &str = "kubernetes.io/config.source";

/// CRI labels (sandbox and containers).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// CRI annotations (containers).
pub const ANNOTATION_CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const ANNOTATION_TERMINATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
/// The container's preStop handler as JSON, so that a kill after an agent restart (the
/// pod no longer known) still runs it (upstream's key).
pub const ANNOTATION_PRE_STOP_HANDLER: &str = "io.kubernetes.container.preStopHandler";
/// Where in the container its termination message is written (upstream's key).
pub const ANNOTATION_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";
/// `File` or `FallbackToLogsOnError` (upstream's key).
pub const ANNOTATION_TERMINATION_MESSAGE_POLICY: &str =
    "io.kubernetes.container.terminationMessagePolicy";

/// What the runtime reports about one pod: its sandboxes (newest first) and every
/// container of those sandboxes (any state).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub sandboxes: Vec<v1::PodSandboxStatus>,
    pub containers: Vec<v1::ContainerStatus>,
}

/// Crash-loop backoff of one container: when its last run finished and how long the
/// next start must wait after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub last_finish: SystemTime,
    pub delay: std::time::Duration,
}
