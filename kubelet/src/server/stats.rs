//! `/stats/summary` (upstream's Summary API, `stats/v1alpha1`, what metrics-server reads)
//! and `/metrics/resource` (its Prometheus form): the node from `/proc` and `statvfs`,
//! the pods and containers from the CRI's `ListPodSandboxStats`/`ListContainerStats`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use pods::engine::PodViews;
use proto::v1;
use serde::Serialize;

/// Upstream's `stats/v1alpha1.Summary`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimit: Option<RlimitStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RlimitStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxpid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curproc: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<u64>,
}

/// Upstream inlines the default interface's counters next to `interfaces`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    pub time: String,
    #[serde(flatten)]
    pub default: InterfaceStats,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<FsStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub containers: Vec<ContainerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    pub volume: Vec<serde_json::Value>,
    #[serde(rename = "ephemeral-storage", skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_stats: Option<ProcessStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u64>,
}

/// RFC 3339 of nanoseconds since the epoch.
pub fn rfc3339(ns: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn val(v: Option<&v1::UInt64Value>) -> Option<u64> {
    v.map(|v| v.value)
}

/// Nanoseconds to RFC 3339, the CRI's timestamp else `fallback`.
fn stamp(ns: i64, fallback: i64) -> String {
    rfc3339(if ns > 0 { ns } else { fallback })
}

fn cpu(c: &v1::CpuUsage, now: i64) -> CpuStats {
    CpuStats {
        time: stamp(c.timestamp, now),
        usage_nano_cores: val(c.usage_nano_cores.as_ref()),
        usage_core_nano_seconds: val(c.usage_core_nano_seconds.as_ref()),
    }
}

fn memory(m: &v1::MemoryUsage, now: i64) -> MemoryStats {
    MemoryStats {
        time: stamp(m.timestamp, now),
        available_bytes: val(m.available_bytes.as_ref()),
        usage_bytes: val(m.usage_bytes.as_ref()),
        working_set_bytes: val(m.working_set_bytes.as_ref()),
        rss_bytes: val(m.rss_bytes.as_ref()),
        page_faults: val(m.page_faults.as_ref()),
        major_page_faults: val(m.major_page_faults.as_ref()),
    }
}

fn fs_usage(f: &v1::FilesystemUsage, now: i64) -> FsStats {
    FsStats {
        time: stamp(f.timestamp, now),
        used_bytes: val(f.used_bytes.as_ref()),
        inodes_used: val(f.inodes_used.as_ref()),
        ..Default::default()
    }
}

fn interface(i: &v1::NetworkInterfaceUsage) -> InterfaceStats {
    InterfaceStats {
        name: i.name.clone(),
        rx_bytes: val(i.rx_bytes.as_ref()),
        rx_errors: val(i.rx_errors.as_ref()),
        tx_bytes: val(i.tx_bytes.as_ref()),
        tx_errors: val(i.tx_errors.as_ref()),
    }
}

fn network(n: &v1::NetworkUsage, now: i64) -> NetworkStats {
    NetworkStats {
        time: stamp(n.timestamp, now),
        default: n
            .default_interface
            .as_ref()
            .map(interface)
            .unwrap_or_default(),
        interfaces: n.interfaces.iter().map(interface).collect(),
    }
}

fn k8s_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.to_string()
}

/// When a pod's container last started, as the engine reported it.
fn container_started(pod: Option<&Pod>, name: &str) -> Option<String> {
    let st = pod?.status.as_ref()?;
    st.container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)?
        .state
        .as_ref()?
        .running
        .as_ref()?
        .started_at
        .as_ref()
        .map(k8s_time)
}

/// The pods' stats: each sandbox joined to its pod by the CRI labels, its containers
/// from `ListContainerStats` (else the sandbox's own list).
pub fn pod_stats(
    sandboxes: &[v1::PodSandboxStats],
    containers: &[v1::ContainerStats],
    views: &PodViews,
    now: i64,
) -> Vec<PodStats> {
    let by_uid: HashMap<&str, &Pod> = views
        .values()
        .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
        .collect();
    let mut out: BTreeMap<(String, String, String), PodStats> = BTreeMap::new();
    for sb in sandboxes {
        let Some(attrs) = &sb.attributes else {
            continue;
        };
        let label = |k: &str| attrs.labels.get(k).cloned();
        let meta = attrs.metadata.as_ref();
        let Some(uid) = label(pods::LABEL_POD_UID).or_else(|| meta.map(|m| m.uid.clone())) else {
            continue;
        };
        let name = label(pods::LABEL_POD_NAME)
            .or_else(|| meta.map(|m| m.name.clone()))
            .unwrap_or_default();
        let namespace = label(pods::LABEL_POD_NAMESPACE)
            .or_else(|| meta.map(|m| m.namespace.clone()))
            .unwrap_or_default();
        let pod = by_uid.get(uid.as_str()).copied();
        let linux = sb.linux.as_ref();
        let mut ours: Vec<&v1::ContainerStats> = containers
            .iter()
            .filter(|c| {
                c.attributes
                    .as_ref()
                    .is_some_and(|a| a.labels.get(pods::LABEL_POD_UID) == Some(&uid))
            })
            .collect();
        if ours.is_empty() {
            ours = linux
                .map(|l| l.containers.iter().collect())
                .unwrap_or_default();
        }
        let mut cs: Vec<ContainerStats> = ours
            .into_iter()
            .filter_map(|c| {
                let a = c.attributes.as_ref()?;
                let cname = a
                    .labels
                    .get(pods::LABEL_CONTAINER_NAME)
                    .cloned()
                    .or_else(|| a.metadata.as_ref().map(|m| m.name.clone()))?;
                Some(ContainerStats {
                    start_time: container_started(pod, &cname),
                    name: cname,
                    cpu: c.cpu.as_ref().map(|x| cpu(x, now)),
                    memory: c.memory.as_ref().map(|x| memory(x, now)),
                    rootfs: c.writable_layer.as_ref().map(|x| fs_usage(x, now)),
                    logs: None,
                })
            })
            .collect();
        cs.sort_by(|a, b| a.name.cmp(&b.name));
        let ephemeral = {
            let used: Option<u64> = cs
                .iter()
                .filter_map(|c| c.rootfs.as_ref()?.used_bytes)
                .reduce(|a, b| a.saturating_add(b));
            used.map(|u| FsStats {
                time: rfc3339(now),
                used_bytes: Some(u),
                ..Default::default()
            })
        };
        let stats = PodStats {
            pod_ref: PodReference {
                name: name.clone(),
                namespace: namespace.clone(),
                uid: uid.clone(),
            },
            start_time: pod
                .and_then(|p| p.status.as_ref()?.start_time.as_ref())
                .map(k8s_time),
            containers: cs,
            cpu: linux.and_then(|l| l.cpu.as_ref()).map(|x| cpu(x, now)),
            memory: linux
                .and_then(|l| l.memory.as_ref())
                .map(|x| memory(x, now)),
            network: linux
                .and_then(|l| l.network.as_ref())
                .map(|x| network(x, now)),
            volume: Vec::new(),
            ephemeral_storage: ephemeral,
            process_stats: linux
                .and_then(|l| l.process.as_ref())
                .map(|p| ProcessStats {
                    process_count: val(p.process_count.as_ref()),
                }),
        };
        // Of several sandboxes of one pod (an old one kept), the one with containers.
        let key = (namespace, name, uid);
        match out.get(&key) {
            Some(prev) if prev.containers.len() >= stats.containers.len() => {}
            _ => {
                out.insert(key, stats);
            }
        }
    }
    out.into_values().collect()
}

/// `/proc/stat`: cumulative busy CPU time (USER_HZ ticks) and the boot time (seconds).
pub fn parse_proc_stat(text: &str) -> (Option<u64>, Option<i64>) {
    let mut busy = None;
    let mut btime = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest is in user).
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                busy = Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7));
            }
            Some("btime") => btime = f.next().and_then(|x| x.parse().ok()),
            _ => {}
        }
    }
    (busy, btime)
}

/// `/proc/meminfo` → its fields in bytes.
pub fn parse_meminfo(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut f = v.split_whitespace();
            let n: u64 = f.next()?.parse().ok()?;
            let n = if f.next() == Some("kB") { n * 1024 } else { n };
            Some((k.trim().to_string(), n))
        })
        .collect()
}

/// The node's memory as upstream's root cgroup reading: usage = total - free, working
/// set = usage - inactive file, available = total - working set.
pub fn node_memory(meminfo: &HashMap<String, u64>, vmstat: &str, now: i64) -> MemoryStats {
    let get = |k: &str| meminfo.get(k).copied();
    let total = get("MemTotal");
    let usage = total.zip(get("MemFree")).map(|(t, f)| t.saturating_sub(f));
    let ws = usage.map(|u| u.saturating_sub(get("Inactive(file)").unwrap_or(0)));
    let counter = |name: &str| {
        vmstat.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    };
    MemoryStats {
        time: rfc3339(now),
        available_bytes: total.zip(ws).map(|(t, w)| t.saturating_sub(w)),
        usage_bytes: usage,
        working_set_bytes: ws,
        rss_bytes: get("AnonPages"),
        page_faults: counter("pgfault"),
        major_page_faults: counter("pgmajfault"),
    }
}

/// The last reading of the node's CPU, for its rate.
#[derive(Default)]
pub struct CpuSampler {
    last: Mutex<Option<(i64, u64)>>,
}

impl CpuSampler {
    /// Cumulative CPU nanoseconds at `now`, and the rate since the last reading.
    pub fn sample(&self, now: i64, total_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().ok()?;
        let rate = last.and_then(|(t, prev)| {
            let dt = u64::try_from(now - t).ok().filter(|d| *d > 0)?;
            let used = total_ns.checked_sub(prev)?;
            Some((u128::from(used) * 1_000_000_000 / u128::from(dt)) as u64)
        });
        *last = Some((now, total_ns));
        rate
    }
}

fn statvfs(path: &Path, now: i64) -> Option<FsStats> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size();
    let cap = (s.blocks() as u64).saturating_mul(frag);
    let avail = (s.blocks_available() as u64).saturating_mul(frag);
    let free = (s.blocks_free() as u64).saturating_mul(frag);
    Some(FsStats {
        time: rfc3339(now),
        available_bytes: Some(avail),
        capacity_bytes: Some(cap),
        used_bytes: Some(cap.saturating_sub(free)),
        inodes_free: Some(s.files_free() as u64),
        inodes: Some(s.files() as u64),
        inodes_used: Some((s.files() as u64).saturating_sub(s.files_free() as u64)),
    })
}

/// The node's own stats, read from this host.
pub fn node_stats(node_name: &str, fs_dir: &Path, sampler: &CpuSampler, now: i64) -> NodeStats {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let (busy, btime) = parse_proc_stat(&stat);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|h| u64::try_from(h).ok())
        .filter(|h| *h > 0)
        .unwrap_or(100);
    let cpu = busy.map(|ticks| {
        let ns = ticks.saturating_mul(1_000_000_000 / hz);
        CpuStats {
            time: rfc3339(now),
            usage_nano_cores: sampler.sample(now, ns),
            usage_core_nano_seconds: Some(ns),
        }
    });
    let meminfo = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    let curproc = std::fs::read_dir("/proc").ok().map(|d| {
        d.flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .count() as u64
    });
    let maxpid = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    NodeStats {
        node_name: node_name.to_string(),
        start_time: btime.map(|s| rfc3339(s.saturating_mul(1_000_000_000))),
        cpu,
        memory: (!meminfo.is_empty()).then(|| node_memory(&meminfo, &vmstat, now)),
        fs: statvfs(fs_dir, now),
        runtime: None,
        rlimit: Some(RlimitStats {
            time: rfc3339(now),
            maxpid,
            curproc,
        }),
    }
}

/// The image filesystem the runtime reports (the first one).
pub fn image_fs(r: &v1::ImageFsInfoResponse, now: i64) -> Option<FsStats> {
    r.image_filesystems.first().map(|f| fs_usage(f, now))
}

/// What the runtime has: (sandboxes, containers, image filesystem).
pub async fn from_runtime(
    cri: &pods::cri::Cri,
) -> Result<
    (
        Vec<v1::PodSandboxStats>,
        Vec<v1::ContainerStats>,
        Option<v1::ImageFsInfoResponse>,
    ),
    tonic::Status,
> {
    let mut rt = cri.runtime.clone();
    let sandboxes = rt
        .list_pod_sandbox_stats(v1::ListPodSandboxStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    let containers = rt
        .list_container_stats(v1::ListContainerStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    let images = cri
        .images
        .clone()
        .image_fs_info(v1::ImageFsInfoRequest {})
        .await
        .ok()
        .map(|r| r.into_inner());
    Ok((sandboxes, containers, images))
}

fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

fn ms(rfc: &str, fallback: i64) -> i64 {
    rfc.parse::<k8s_openapi::jiff::Timestamp>()
        .map_or(fallback / 1_000_000, |t| t.as_millisecond())
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Upstream's `/metrics/resource`: metric families sorted by name, each sample with its
/// millisecond timestamp.
pub fn resource_metrics(s: &Summary, scrape_error: bool, now: i64) -> String {
    let mut fams: Vec<(&str, &str, &str, Vec<String>)> = Vec::new();
    let mut ccpu = Vec::new();
    let mut cmem = Vec::new();
    let mut cstart = Vec::new();
    let mut pcpu = Vec::new();
    let mut pmem = Vec::new();
    for p in &s.pods {
        let (pod, ns) = (esc(&p.pod_ref.name), esc(&p.pod_ref.namespace));
        for c in &p.containers {
            let l = format!(
                "{{container=\"{}\",namespace=\"{ns}\",pod=\"{pod}\"}}",
                esc(&c.name)
            );
            if let Some(x) = &c.cpu
                && let Some(v) = x.usage_core_nano_seconds
            {
                ccpu.push(format!("{l} {} {}", seconds(v), ms(&x.time, now)));
            }
            if let Some(x) = &c.memory
                && let Some(v) = x.working_set_bytes
            {
                cmem.push(format!("{l} {v} {}", ms(&x.time, now)));
            }
            if let Some(t) = &c.start_time
                && let Ok(ts) = t.parse::<k8s_openapi::jiff::Timestamp>()
            {
                cstart.push(format!(
                    "{l} {} {}",
                    ts.as_nanosecond() as f64 / 1e9,
                    ms(t, now)
                ));
            }
        }
        let l = format!("{{namespace=\"{ns}\",pod=\"{pod}\"}}");
        if let Some(x) = &p.cpu
            && let Some(v) = x.usage_core_nano_seconds
        {
            pcpu.push(format!("{l} {} {}", seconds(v), ms(&x.time, now)));
        }
        if let Some(x) = &p.memory
            && let Some(v) = x.working_set_bytes
        {
            pmem.push(format!("{l} {v} {}", ms(&x.time, now)));
        }
    }
    let mut ncpu = Vec::new();
    let mut nmem = Vec::new();
    if let Some(x) = &s.node.cpu
        && let Some(v) = x.usage_core_nano_seconds
    {
        ncpu.push(format!(" {} {}", seconds(v), ms(&x.time, now)));
    }
    if let Some(x) = &s.node.memory
        && let Some(v) = x.working_set_bytes
    {
        nmem.push(format!(" {v} {}", ms(&x.time, now)));
    }
    fams.push((
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
        ccpu,
    ));
    fams.push((
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        "gauge",
        cmem,
    ));
    fams.push((
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
        cstart,
    ));
    fams.push((
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
        ncpu,
    ));
    fams.push((
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        "gauge",
        nmem,
    ));
    fams.push((
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
        pcpu,
    ));
    fams.push((
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        "gauge",
        pmem,
    ));
    fams.push((
        "scrape_error",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
        vec![format!(" {}", u8::from(scrape_error))],
    ));
    let mut out = String::new();
    for (name, help, kind, mut samples) in fams {
        if samples.is_empty() {
            continue;
        }
        samples.sort();
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in samples {
            let _ = writeln!(out, "{name}{s}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(v: u64) -> Option<v1::UInt64Value> {
        Some(v1::UInt64Value { value: v })
    }

    const T: i64 = 1_700_000_000_000_000_000;

    fn sample() -> (Vec<v1::PodSandboxStats>, Vec<v1::ContainerStats>) {
        let labels: HashMap<String, String> = [
            (pods::LABEL_POD_UID, "uid-1"),
            (pods::LABEL_POD_NAME, "web"),
            (pods::LABEL_POD_NAMESPACE, "default"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut clabels = labels.clone();
        clabels.insert(pods::LABEL_CONTAINER_NAME.into(), "app".into());
        let cpu_u = v1::CpuUsage {
            timestamp: T,
            usage_core_nano_seconds: u(1_500_000_000),
            usage_nano_cores: u(2_000_000),
            psi: None,
        };
        let mem_u = v1::MemoryUsage {
            timestamp: T,
            working_set_bytes: u(4096),
            usage_bytes: u(8192),
            ..Default::default()
        };
        let sb = v1::PodSandboxStats {
            attributes: Some(v1::PodSandboxAttributes {
                id: "sb1".into(),
                labels,
                ..Default::default()
            }),
            linux: Some(v1::LinuxPodSandboxStats {
                cpu: Some(cpu_u),
                memory: Some(mem_u),
                network: Some(v1::NetworkUsage {
                    timestamp: T,
                    default_interface: Some(v1::NetworkInterfaceUsage {
                        name: "eth0".into(),
                        rx_bytes: u(10),
                        tx_bytes: u(20),
                        ..Default::default()
                    }),
                    interfaces: vec![],
                }),
                ..Default::default()
            }),
            windows: None,
        };
        let c = v1::ContainerStats {
            attributes: Some(v1::ContainerAttributes {
                id: "c1".into(),
                labels: clabels,
                ..Default::default()
            }),
            cpu: Some(cpu_u),
            memory: Some(mem_u),
            writable_layer: Some(v1::FilesystemUsage {
                timestamp: T,
                used_bytes: u(100),
                inodes_used: u(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        (vec![sb], vec![c])
    }

    #[test]
    fn summary_json_shape() {
        let (sb, cs) = sample();
        let summary = Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: Some(CpuStats {
                    time: rfc3339(T),
                    usage_nano_cores: Some(5),
                    usage_core_nano_seconds: Some(7_000_000_000),
                }),
                memory: Some(MemoryStats {
                    time: rfc3339(T),
                    working_set_bytes: Some(1024),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pods: pod_stats(&sb, &cs, &PodViews::default(), T),
        };
        let v = serde_json::to_value(&summary).expect("json");
        assert_eq!(v["node"]["nodeName"], "n1");
        assert_eq!(v["node"]["cpu"]["usageCoreNanoSeconds"], 7_000_000_000u64);
        assert_eq!(v["node"]["cpu"]["time"], "2023-11-14T22:13:20Z");
        let p = &v["pods"][0];
        assert_eq!(
            p["podRef"],
            serde_json::json!({"name": "web", "namespace": "default", "uid": "uid-1"})
        );
        assert_eq!(p["cpu"]["usageNanoCores"], 2_000_000);
        assert_eq!(p["memory"]["workingSetBytes"], 4096);
        assert_eq!(p["network"]["name"], "eth0");
        assert_eq!(p["network"]["rxBytes"], 10);
        assert_eq!(p["network"]["txBytes"], 20);
        assert_eq!(p["volume"], serde_json::json!([]));
        assert_eq!(p["ephemeral-storage"]["usedBytes"], 100);
        let c = &p["containers"][0];
        assert_eq!(c["name"], "app");
        assert_eq!(c["cpu"]["usageCoreNanoSeconds"], 1_500_000_000u64);
        assert_eq!(c["memory"]["workingSetBytes"], 4096);
        assert_eq!(c["memory"]["usageBytes"], 8192);
        assert_eq!(
            c["rootfs"],
            serde_json::json!({"time": "2023-11-14T22:13:20Z", "usedBytes": 100, "inodesUsed": 3})
        );
    }

    #[test]
    fn prometheus_text() {
        let (sb, cs) = sample();
        let summary = Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: Some(CpuStats {
                    time: rfc3339(T),
                    usage_nano_cores: None,
                    usage_core_nano_seconds: Some(7_500_000_000),
                }),
                memory: Some(MemoryStats {
                    time: rfc3339(T),
                    working_set_bytes: Some(1024),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pods: pod_stats(&sb, &cs, &PodViews::default(), T),
        };
        let text = resource_metrics(&summary, false, T);
        let want = "\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1.5 1700000000000
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 4096 1700000000000
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 7.5 1700000000000
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1024 1700000000000
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 1.5 1700000000000
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 4096 1700000000000
# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE scrape_error gauge
scrape_error 0
";
        assert_eq!(text, want);
    }

    #[test]
    fn proc_parsing() {
        let (busy, btime) =
            parse_proc_stat("cpu  10 2 3 100 5 1 1 1 0 0\ncpu0 1 1 1 1\nbtime 1700000000\n");
        assert_eq!(busy, Some(18));
        assert_eq!(btime, Some(1_700_000_000));
        let m = parse_meminfo(
            "MemTotal: 1000 kB\nMemFree: 200 kB\nInactive(file): 300 kB\nAnonPages: 100 kB\n",
        );
        let mem = node_memory(&m, "pgfault 9\npgmajfault 2\n", T);
        assert_eq!(mem.usage_bytes, Some(800 * 1024));
        assert_eq!(mem.working_set_bytes, Some(500 * 1024));
        assert_eq!(mem.available_bytes, Some(500 * 1024));
        assert_eq!(mem.rss_bytes, Some(100 * 1024));
        assert_eq!((mem.page_faults, mem.major_page_faults), (Some(9), Some(2)));
        let s = CpuSampler::default();
        assert_eq!(s.sample(0, 0), None);
        assert_eq!(s.sample(1_000_000_000, 500_000_000), Some(500_000_000));
    }
}
