//! The stored records of sandboxes and containers. States are derived from timestamps
//! and pids, never kept as a second flag that could disagree.

use std::path::PathBuf;

use proto::v1;
use serde::{Deserialize, Serialize};

use super::store::{Record, pb};
use super::{Namespaces, SandboxFiles};

/// A pod sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    #[serde(with = "pb")]
    pub config: v1::PodSandboxConfig,
    /// The runtime handler name (RuntimeClass).
    pub handler: String,
    pub created_at_ns: i64,
    /// The pinned network namespace; `None` with host networking.
    pub netns: Option<PathBuf>,
    /// Pod IPs from CNI, the first one primary.
    pub ips: Vec<String>,
    /// The infra container's process and its monitor; 0 until it runs.
    pub infra_pid: i32,
    pub monitor_pid: i32,
    /// cgroupfs parent of the pod's containers.
    pub cgroup_parent: String,
    pub files: SandboxFiles,
    /// The pod's namespaces: `Join` a pin, `New` one held by the infra container, or
    /// `Host`. Containers join them.
    pub namespaces: Namespaces,
    /// The pod has no infra process: its namespaces are pinned on files.
    #[serde(default)]
    pub pinned: bool,
    /// When RunPodSandbox finished setting up a pinned sandbox.
    #[serde(default)]
    pub ready_at_ns: Option<i64>,
    /// Set once the sandbox was stopped.
    pub stopped_at_ns: Option<i64>,
    /// Set when the infra process died on its own, or the pins were found gone (the
    /// sandbox is then not ready).
    #[serde(default)]
    pub infra_exited_at_ns: Option<i64>,
}

impl Sandbox {
    pub fn metadata(&self) -> v1::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub fn ready(&self) -> bool {
        let set_up = if self.pinned {
            self.ready_at_ns.is_some()
        } else {
            self.infra_pid > 0
        };
        self.stopped_at_ns.is_none() && self.infra_exited_at_ns.is_none() && set_up
    }

    pub fn state(&self) -> v1::PodSandboxState {
        if self.ready() {
            v1::PodSandboxState::SandboxReady
        } else {
            v1::PodSandboxState::SandboxNotready
        }
    }

    pub fn namespace_options(&self) -> v1::NamespaceOption {
        self.config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default()
    }
}

impl Record for Sandbox {
    const KIND: &'static str = "sandbox";
    const FILE: &'static str = "sandbox.json";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> String {
        let m = self.metadata();
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    }
}

/// A container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    /// Unique name of the sandbox, part of the container's name.
    pub sandbox_name: String,
    #[serde(with = "pb")]
    pub config: v1::ContainerConfig,
    pub handler: String,
    /// `sha256:` id of the image.
    pub image_id: String,
    /// A repo digest of the image (or its id when it has none).
    pub image_ref: String,
    pub created_at_ns: i64,
    pub started_at_ns: Option<i64>,
    pub finished_at_ns: Option<i64>,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: i32,
    pub monitor_pid: i32,
    /// Absolute log path, empty when the pod has no log directory.
    pub log_path: String,
    pub cgroups_path: String,
    /// Resources as last applied (create or update).
    #[serde(with = "pb")]
    pub resources: v1::LinuxContainerResources,
    /// Numeric user the process runs as.
    pub uid: i64,
    pub gid: i64,
    pub groups: Vec<i64>,
    /// Stop signal number: from the config, else the image, else SIGTERM.
    pub stop_signal: i32,
    /// Images mounted as volumes (kept from removal while the container exists).
    #[serde(default)]
    pub image_volumes: Vec<super::image_volume::ImageVolume>,
}

impl Container {
    pub fn metadata(&self) -> v1::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub fn state(&self) -> v1::ContainerState {
        match (self.started_at_ns, self.finished_at_ns) {
            (_, Some(_)) => v1::ContainerState::ContainerExited,
            (Some(_), None) => v1::ContainerState::ContainerRunning,
            (None, None) => v1::ContainerState::ContainerCreated,
        }
    }

    pub fn running(&self) -> bool {
        self.state() == v1::ContainerState::ContainerRunning
    }

    /// Not yet exited: created or running.
    pub fn alive(&self) -> bool {
        self.finished_at_ns.is_none()
    }

    /// Created, and the OCI runtime has not heard of it yet: no process, no monitor.
    pub fn unstarted(&self) -> bool {
        self.started_at_ns.is_none() && self.finished_at_ns.is_none() && self.monitor_pid == 0
    }
}

impl Record for Container {
    const KIND: &'static str = "container";
    const FILE: &'static str = "container.json";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> String {
        let m = self.metadata();
        format!("{}_{}_{}", m.name, self.sandbox_name, m.attempt)
    }
}
