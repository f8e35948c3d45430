//! The Node object: registration (create, or reconcile one that exists) and its status,
//! as the upstream kubelet's node status setters fill it: addresses, capacity and
//! allocatable, node info, daemon endpoints, and the Ready / MemoryPressure /
//! DiskPressure / PIDPressure conditions. The status is posted when it changes and at
//! least every [`REPORT_EVERY`]; the Lease ([`super::lease`]) is the heartbeat.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::kube_client::status_code;

/// How often the status is computed and compared (upstream nodeStatusUpdateFrequency).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// The longest the status goes unposted (upstream nodeStatusReportFrequency).
pub const REPORT_EVERY: Duration = Duration::from_secs(300);

/// What the node says about itself, fixed at start.
#[derive(Debug, Clone, Default)]
pub struct NodeSpecConfig {
    pub name: String,
    /// `--node-labels` (the well-known ones are added).
    pub labels: BTreeMap<String, String>,
    /// `--register-with-taints`.
    pub taints: Vec<Taint>,
    /// `--node-ip` (or the host's first address) and the hostname.
    pub internal_ip: String,
    pub hostname: String,
    pub provider_id: Option<String>,
    /// The kubelet API port announced in `daemonEndpoints`.
    pub kubelet_port: i32,
    pub max_pods: i64,
    /// `<runtime>://<version>` of the container runtime.
    pub runtime_version: String,
    /// `--kube-reserved` + `--system-reserved`, by resource name.
    pub reserved: BTreeMap<String, Quantity>,
    /// Where the kubelet keeps pod data: its filesystem is ephemeral-storage.
    pub root_dir: PathBuf,
}

/// The health the Ready condition reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    pub runtime_ready: bool,
    pub network_ready: bool,
    /// Why not, as the runtime said.
    pub message: String,
}

/// Resources of the machine, read once (they do not change while the agent runs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineFacts {
    pub cpus: i64,
    pub memory_bytes: i64,
    pub ephemeral_bytes: i64,
    /// Page size as the resource suffix (`2Mi`) → bytes reserved for huge pages.
    pub hugepages: BTreeMap<String, i64>,
}

impl MachineFacts {
    pub fn read(root_dir: &std::path::Path) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as i64);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
            })
            .map_or(0, |kib| kib * 1024);
        let ephemeral_bytes = nix::sys::statvfs::statvfs(root_dir)
            .or_else(|_| nix::sys::statvfs::statvfs("/"))
            .map_or(0, |s| {
                (s.blocks() as i64).saturating_mul(s.fragment_size() as i64)
            });
        let mut hugepages = BTreeMap::new();
        for e in std::fs::read_dir("/sys/kernel/mm/hugepages")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(kb) = name
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse::<i64>().ok())
            else {
                continue;
            };
            let pages = std::fs::read_to_string(e.path().join("nr_hugepages"))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0);
            hugepages.insert(page_suffix(kb * 1024), pages * kb * 1024);
        }
        Self {
            cpus,
            memory_bytes,
            ephemeral_bytes,
            hugepages,
        }
    }
}

/// `2097152` → `2Mi`, `1073741824` → `1Gi` (the resource name suffix upstream uses).
fn page_suffix(bytes: i64) -> String {
    for (unit, div) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes % div == 0 {
            return format!("{}{unit}", bytes / div);
        }
    }
    bytes.to_string()
}

/// Eviction's hard defaults upstream: memory.available<100Mi, nodefs.available<10%.
const EVICTION_MEMORY: i64 = 100 << 20;
const EVICTION_NODEFS_PERCENT: i64 = 10;

/// Capacity and allocatable (capacity less reserved and the eviction thresholds).
pub fn resources(
    facts: &MachineFacts,
    max_pods: i64,
    reserved: &BTreeMap<String, Quantity>,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), Quantity(facts.cpus.to_string()));
    capacity.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", facts.memory_bytes / 1024)),
    );
    capacity.insert(
        "ephemeral-storage".to_string(),
        Quantity(format!("{}Ki", facts.ephemeral_bytes / 1024)),
    );
    capacity.insert("pods".to_string(), Quantity(max_pods.to_string()));
    for (size, bytes) in &facts.hugepages {
        capacity.insert(format!("hugepages-{size}"), Quantity(bytes.to_string()));
    }
    let reserved_of = |name: &str| -> i64 {
        reserved
            .get(name)
            .and_then(|q| {
                if name == "cpu" {
                    pods::translate::quantity_millis(q)
                } else {
                    pods::translate::quantity_value(q)
                }
            })
            .unwrap_or(0)
    };
    let hugepage_total: i64 = facts.hugepages.values().sum();
    let mut allocatable = capacity.clone();
    let cpu_millis = (facts.cpus * 1000 - reserved_of("cpu")).max(0);
    allocatable.insert("cpu".to_string(), Quantity(format!("{cpu_millis}m")));
    let memory =
        (facts.memory_bytes - reserved_of("memory") - EVICTION_MEMORY - hugepage_total).max(0);
    allocatable.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", memory / 1024)),
    );
    let eph = (facts.ephemeral_bytes
        - reserved_of("ephemeral-storage")
        - facts.ephemeral_bytes * EVICTION_NODEFS_PERCENT / 100)
        .max(0);
    allocatable.insert("ephemeral-storage".to_string(), Quantity(eph.to_string()));
    (capacity, allocatable)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Node info as upstream fills it from the machine and the runtime.
pub fn system_info(runtime_version: &str) -> NodeSystemInfo {
    let uname = nix::sys::utsname::uname().ok();
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    NodeSystemInfo {
        architecture: arch.into(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: runtime_version.into(),
        kernel_version: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        kube_proxy_version: String::new(),
        kubelet_version: crate::KUBELET_VERSION.into(),
        machine_id: read_trimmed("/etc/machine-id"),
        operating_system: "linux".into(),
        os_image,
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        ..Default::default()
    }
}

/// The labels every node carries, then `--node-labels`.
pub fn labels(cfg: &NodeSpecConfig) -> BTreeMap<String, String> {
    let arch = system_info("").architecture;
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.hostname.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch),
    ]);
    l.extend(cfg.labels.clone());
    l
}

fn condition(
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    previous: Option<&NodeCondition>,
    now: &Time,
) -> NodeCondition {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let transition = previous
        .filter(|p| p.status == status)
        .and_then(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(transition),
    }
}

/// The four conditions upstream reports. No eviction manager runs yet, so the pressure
/// conditions say there is none.
pub fn conditions(health: &Health, previous: &[NodeCondition], now: &Time) -> Vec<NodeCondition> {
    let prev = |t: &str| previous.iter().find(|c| c.type_ == t);
    let ready = health.runtime_ready && health.network_ready;
    let (reason, message) = if ready {
        (
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        )
    } else if !health.runtime_ready {
        (
            "KubeletNotReady",
            format!("container runtime is down: {}", health.message),
        )
    } else {
        (
            "KubeletNotReady",
            format!("container runtime network not ready: {}", health.message),
        )
    };
    vec![
        condition(
            "MemoryPressure",
            false,
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
            prev("MemoryPressure"),
            now,
        ),
        condition(
            "DiskPressure",
            false,
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
            prev("DiskPressure"),
            now,
        ),
        condition(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
            prev("PIDPressure"),
            now,
        ),
        condition("Ready", ready, reason, &message, prev("Ready"), now),
    ]
}

/// The whole status this node reports.
pub fn status(
    cfg: &NodeSpecConfig,
    facts: &MachineFacts,
    health: &Health,
    previous: &[NodeCondition],
    now: &Time,
) -> NodeStatus {
    let (capacity, allocatable) = resources(facts, cfg.max_pods, &cfg.reserved);
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.internal_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.hostname.clone(),
            },
        ]),
        allocatable: Some(allocatable),
        capacity: Some(capacity),
        conditions: Some(conditions(health, previous, now)),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: cfg.kubelet_port,
            }),
        }),
        node_info: Some(system_info(&cfg.runtime_version)),
        ..Default::default()
    }
}

/// The Node as first created.
pub fn new_node(cfg: &NodeSpecConfig) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels(cfg)),
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!cfg.taints.is_empty()).then(|| cfg.taints.clone()),
            provider_id: cfg.provider_id.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// Creates the Node, or reconciles the one that exists (a re-registration after a
/// restart or a reinstall): our labels are set again; taints and the spec others
/// manage are left alone, as upstream. Returns the Node as the API server has it.
pub async fn register(api: &Api<Node>, cfg: &NodeSpecConfig) -> Result<Node, kube::Error> {
    let node = new_node(cfg);
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => {
            tracing::info!(node = %cfg.name, "node registered");
            Ok(n)
        }
        Err(e) if status_code(&e) == Some(409) => {
            let patch = serde_json::json!({
                "metadata": { "labels": labels(cfg) },
            });
            let n = api
                .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(node = %cfg.name, "node exists; reconciled");
            Ok(n)
        }
        Err(e) => Err(e),
    }
}

/// `spec.podCIDRs` (or the older single `podCIDR`).
pub fn pod_cidrs_of(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
}

/// What changes between two posted statuses, heartbeat times aside.
fn comparable(s: &NodeStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    v
}

/// Posts the node status on change and at least every [`REPORT_EVERY`], checking every
/// [`CHECK_EVERY`] (or at once when `health` changes). Errors are logged and retried
/// at the next check: an API-server outage never stops the node.
pub async fn status_loop(
    api: Api<Node>,
    cfg: NodeSpecConfig,
    mut health: tokio::sync::watch::Receiver<Health>,
    pod_cidrs: tokio::sync::watch::Sender<Vec<String>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let facts = MachineFacts::read(&cfg.root_dir);
    let mut last: Option<(NodeStatus, Instant)> = None;
    loop {
        let h = health.borrow_and_update().clone();
        let now = Time(Timestamp::now());
        let previous = last
            .as_ref()
            .and_then(|(s, _)| s.conditions.clone())
            .unwrap_or_default();
        let next = status(&cfg, &facts, &h, &previous, &now);
        let due = match &last {
            None => true,
            Some((s, at)) => comparable(s) != comparable(&next) || at.elapsed() >= REPORT_EVERY,
        };
        if due {
            let patch = serde_json::json!({ "status": next });
            match api
                .patch_status(
                    &cfg.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(node) => {
                    tracing::debug!(node = %cfg.name, "node status posted");
                    last = Some((next, Instant::now()));
                    // The control plane's pod CIDRs come back with every write.
                    let cidrs = pod_cidrs_of(&node);
                    pod_cidrs.send_if_modified(|cur| {
                        let changed = *cur != cidrs;
                        *cur = cidrs;
                        changed
                    });
                }
                Err(e) => tracing::warn!(node = %cfg.name, err = %e, "posting node status"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            changed = health.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> MachineFacts {
        MachineFacts {
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_bytes: 100 << 30,
            hugepages: BTreeMap::from([("2Mi".to_string(), 64 << 20)]),
        }
    }

    #[test]
    fn allocatable_is_capacity_less_reserved_and_eviction() {
        let reserved = BTreeMap::from([
            ("cpu".to_string(), Quantity("250m".into())),
            ("memory".to_string(), Quantity("512Mi".into())),
        ]);
        let (cap, alloc) = resources(&facts(), 110, &reserved);
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["hugepages-2Mi"].0, (64 << 20).to_string());
        assert_eq!(alloc["cpu"].0, "1750m");
        // 4 GiB - 512 MiB reserved - 100 MiB eviction - 64 MiB huge pages.
        assert_eq!(
            alloc["memory"].0,
            format!(
                "{}Ki",
                ((4i64 << 30) - (512 << 20) - (100 << 20) - (64 << 20)) / 1024
            )
        );
        assert_eq!(alloc["ephemeral-storage"].0, (90i64 << 30).to_string());
        assert_eq!(page_suffix(2 << 20), "2Mi");
        assert_eq!(page_suffix(1 << 30), "1Gi");
    }

    #[test]
    fn ready_condition_says_why_and_keeps_its_transition_time() {
        let t0 = Time(Timestamp::from_second(1_000).expect("time"));
        let t1 = Time(Timestamp::from_second(2_000).expect("time"));
        let down = Health {
            runtime_ready: true,
            network_ready: false,
            message: "no cni config".into(),
        };
        let c0 = conditions(&down, &[], &t0);
        let ready = c0.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(ready.status, "False");
        assert!(
            ready
                .message
                .as_deref()
                .unwrap_or("")
                .contains("network not ready")
        );
        let up = Health {
            runtime_ready: true,
            network_ready: true,
            message: String::new(),
        };
        let c1 = conditions(&up, &c0, &t1);
        let ready = c1.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(ready.status, "True");
        assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
        assert_eq!(ready.last_transition_time.as_ref(), Some(&t1));
        let mem = c1
            .iter()
            .find(|c| c.type_ == "MemoryPressure")
            .expect("memory");
        assert_eq!(
            mem.last_transition_time.as_ref(),
            Some(&t0),
            "unchanged status"
        );
        assert_eq!(mem.last_heartbeat_time.as_ref(), Some(&t1));
    }

    #[test]
    fn node_carries_the_well_known_labels_and_taints() {
        let cfg = NodeSpecConfig {
            name: "edge-1".into(),
            hostname: "edge-1".into(),
            labels: BTreeMap::from([("role".to_string(), "edge".to_string())]),
            taints: vec![Taint {
                key: "dedicated".into(),
                value: Some("edge".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let n = new_node(&cfg);
        let l = n.metadata.labels.clone().unwrap_or_default();
        assert_eq!(l["kubernetes.io/hostname"], "edge-1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["role"], "edge");
        assert_eq!(n.spec.and_then(|s| s.taints).map(|t| t.len()), Some(1));
    }
}
