//! A `Pod` → the CRI configs that run it: one `PodSandboxConfig` per sandbox attempt and
//! one `ContainerConfig` per container attempt.
//!
//! Pure functions of the pod, what the node tells about itself ([`NodeInfo`]) and the API
//! objects fetched for it ([`PodObjects`]: config maps, secrets, service variables); no
//! I/O. The rules are the upstream kubelet's (kuberuntime sandbox/container config, QoS,
//! downward API, DNS, `$(VAR)` expansion, env and envFrom), including the API server's defaulting that a
//! pod from a manifest never went through (requests default to limits, hostPort to
//! containerPort on the host network, the 30 s grace period).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Container, PodSpec, ResourceFieldSelector, SeccompProfile, SecurityContext,
};
use k8s_openapi::api::core::v1::{Pod, PodSecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proto::v1;

use crate::objects::{Lookup, PodObjects};
use crate::{
    ANNOTATION_CONTAINER_HASH, ANNOTATION_PRE_STOP_HANDLER, ANNOTATION_RESTART_COUNT,
    ANNOTATION_TERMINATION_GRACE, ANNOTATION_TERMINATION_MESSAGE_PATH,
    ANNOTATION_TERMINATION_MESSAGE_POLICY, LABEL_CONTAINER_NAME, LABEL_POD_NAME,
    LABEL_POD_NAMESPACE, LABEL_POD_UID,
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a pod cannot be turned into CRI configs. `pod` is `namespace/name`; `field` is a
/// path into the pod such as `spec.containers[web].env[PORT].valueFrom.fieldRef`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("pod {pod}: {field}: {reason}")]
    InvalidPod {
        pod: String,
        field: String,
        reason: String,
    },
    #[error("pod {pod}: {field} is not supported: {reason}")]
    Unsupported {
        pod: String,
        field: String,
        reason: String,
    },
    /// An object the environment names does not exist (upstream's words:
    /// `configmap "x" not found`).
    #[error("{kind} \"{name}\" not found")]
    ObjectNotFound { kind: &'static str, name: String },
    /// A key the environment names is not in its object (upstream's words).
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    /// The object could not be read: the reason names it.
    #[error("{reason}")]
    ObjectUnavailable {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// What the node knows about itself that shapes a pod's configs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    pub node_name: String,
    pub host_ip: String,
    /// Allocatable CPU in millicores: the value of an unset `limits.cpu` for the downward API.
    pub cpu_millis: i64,
    /// Allocatable memory in bytes: the value of an unset `limits.memory`, the ceiling of a
    /// memory-backed emptyDir, and the base of the Burstable OOM score.
    pub memory_bytes: i64,
    /// cgroupfs path under which the QoS tiers live, e.g. `/kubepods`.
    pub cgroup_root: String,
    /// Cluster DNS servers; empty means `ClusterFirst` falls back to `Default`.
    pub cluster_dns: Vec<String>,
    /// Cluster domain, e.g. `cluster.local`; empty adds no cluster search domains.
    pub cluster_domain: String,
    /// The node's resolver (see [`parse_resolv_conf`]). `None` leaves `Default`-policy
    /// pods without a `DNSConfig`, so the runtime copies the host's resolv.conf itself.
    pub host_dns: Option<v1::DnsConfig>,
    /// Directory that `Localhost` seccomp profiles are relative to (`<root>/seccomp`).
    pub seccomp_profile_root: String,
    /// `--seccomp-default`: `RuntimeDefault` instead of `Unconfined` when a pod names none.
    pub seccomp_default: bool,
    /// Huge page sizes the node has and can limit (`2MB`, `1GB`): a container gets 0 of
    /// each size it does not request, as upstream.
    pub hugepage_sizes: Vec<String>,
    /// How containers are kept off swap (upstream's default NoSwap behaviour).
    pub swap: SwapControl,
    /// `--cgroups-per-qos=false`: pods sit directly in `cgroup_root`, with no QoS tier
    /// or pod cgroup of their own.
    pub no_qos_cgroups: bool,
}

/// How the node's cgroups limit swap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SwapControl {
    /// No swap accounting: nothing to set.
    #[default]
    Unavailable,
    /// cgroup v1 with `memory.memsw.*`: memory+swap capped at the memory limit.
    V1,
    /// cgroup v2: `memory.swap.max` 0.
    V2,
}

/// The three QoS tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Where a container sits in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Init,
    Regular,
    /// A restartable init container (`restartPolicy: Always`).
    Sidecar,
}

/// Every container of a pod with its kind: init containers (and sidecars) in order, then
/// the regular ones.
pub fn containers(pod: &Pod) -> Vec<(ContainerKind, &Container)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let init = spec.init_containers.iter().flatten().map(|c| {
        let kind = if c.restart_policy.as_deref() == Some("Always") {
            ContainerKind::Sidecar
        } else {
            ContainerKind::Init
        };
        (kind, c)
    });
    init.chain(spec.containers.iter().map(|c| (ContainerKind::Regular, c)))
        .collect()
}

/// The upstream static pod name: `<name>-<nodeName>`.
pub fn static_pod_name(name: &str, node_name: &str) -> String {
    format!("{name}-{node_name}")
}

// ---------------------------------------------------------------------------------------
// Pod identity

/// `namespace/name` for messages.
pub(crate) fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod_namespace(pod),
        pod.metadata.name.as_deref().unwrap_or("<unnamed>")
    )
}

fn pod_namespace(pod: &Pod) -> &str {
    match pod.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => "default",
    }
}

fn invalid(pod: &Pod, field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidPod {
        pod: pod_ref(pod),
        field: field.into(),
        reason: reason.into(),
    }
}

fn unsupported(pod: &Pod, field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        pod: pod_ref(pod),
        field: field.into(),
        reason: reason.into(),
    }
}

struct Meta<'a> {
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
}

fn meta(pod: &Pod) -> Result<Meta<'_>> {
    let name = match pod.metadata.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => return Err(invalid(pod, "metadata.name", "must be set")),
    };
    let uid = match pod.metadata.uid.as_deref() {
        Some(u) if !u.is_empty() => u,
        _ => return Err(invalid(pod, "metadata.uid", "must be set")),
    };
    Ok(Meta {
        name,
        namespace: pod_namespace(pod),
        uid,
    })
}

fn spec(pod: &Pod) -> Result<&PodSpec> {
    pod.spec
        .as_ref()
        .ok_or_else(|| invalid(pod, "spec", "must be set"))
}

fn container_path(kind: ContainerKind, c: &Container) -> String {
    let list = match kind {
        ContainerKind::Regular => "containers",
        ContainerKind::Init | ContainerKind::Sidecar => "initContainers",
    };
    format!("spec.{list}[{}]", c.name)
}

fn container_field(kind: ContainerKind, c: &Container, rest: &str) -> String {
    format!("{}.{rest}", container_path(kind, c))
}

/// [`container_path`] of a container found by name.
fn container_path_in(pod: &Pod, c: &Container) -> String {
    let kind = containers(pod)
        .into_iter()
        .find(|(_, x)| x.name == c.name)
        .map_or(ContainerKind::Regular, |(k, _)| k);
    container_path(kind, c)
}

// ---------------------------------------------------------------------------------------
// Quantities

/// A quantity in thousandths (CPU in millicores), rounded up; `None` if unparsable.
pub fn quantity_millis(q: &Quantity) -> Option<i64> {
    i64::try_from(ceil_div(parse_quantity(&q.0)?, 1_000_000)).ok()
}

/// A quantity's value (bytes, counts), rounded up; `None` if unparsable.
pub fn quantity_value(q: &Quantity) -> Option<i64> {
    i64::try_from(ceil_div(parse_quantity(&q.0)?, 1_000_000_000)).ok()
}

/// A quantity in units of 10⁻⁹, rounded up: exact for every suffix k8s accepts.
pub(crate) fn parse_quantity(text: &str) -> Option<i128> {
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if frac_part.contains('.') {
        return None;
    }
    let mut mantissa: i128 = 0;
    for d in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(d - b'0'))?;
    }
    // value = mantissa / 10^frac * num / den
    let mut num: i128 = 1_000_000_000;
    let mut den: i128 = 10i128.checked_pow(u32::try_from(frac_part.len()).ok()?)?;
    let pow10 = |e: u32| 10i128.checked_pow(e);
    match suffix {
        "" => {}
        "n" => den = den.checked_mul(pow10(9)?)?,
        "u" => den = den.checked_mul(pow10(6)?)?,
        "m" => den = den.checked_mul(pow10(3)?)?,
        "k" => num = num.checked_mul(pow10(3)?)?,
        "M" => num = num.checked_mul(pow10(6)?)?,
        "G" => num = num.checked_mul(pow10(9)?)?,
        "T" => num = num.checked_mul(pow10(12)?)?,
        "P" => num = num.checked_mul(pow10(15)?)?,
        "E" => num = num.checked_mul(pow10(18)?)?,
        "Ki" => num = num.checked_mul(1 << 10)?,
        "Mi" => num = num.checked_mul(1 << 20)?,
        "Gi" => num = num.checked_mul(1 << 30)?,
        "Ti" => num = num.checked_mul(1 << 40)?,
        "Pi" => num = num.checked_mul(1 << 50)?,
        "Ei" => num = num.checked_mul(1 << 60)?,
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if e >= 0 {
                num = num.checked_mul(pow10(e.unsigned_abs())?)?;
            } else {
                den = den.checked_mul(pow10(e.unsigned_abs())?)?;
            }
        }
        _ => return None,
    }
    let scaled = mantissa.checked_mul(num)?;
    let nanos = scaled / den + i128::from(scaled % den != 0);
    Some(if negative { -nanos } else { nanos })
}

pub(crate) fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && ((a < 0) == (b < 0)) {
        q + 1
    } else {
        q
    }
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Parsed, non-negative resource amounts of one container, with the API server's
/// defaulting applied: an unset request takes the limit's value.
#[derive(Debug, Clone, Default)]
struct Resources {
    requests: BTreeMap<String, i128>,
    limits: BTreeMap<String, i128>,
}

impl Resources {
    fn of(pod: &Pod, field: &str, c: &Container) -> Result<Self> {
        let mut out = Resources::default();
        let Some(r) = c.resources.as_ref() else {
            return Ok(out);
        };
        let parse = |kind: &str, map: &Option<BTreeMap<String, Quantity>>| {
            let mut parsed = BTreeMap::new();
            for (name, q) in map.iter().flatten() {
                match parse_quantity(&q.0) {
                    Some(v) if v >= 0 => {
                        parsed.insert(name.clone(), v);
                    }
                    _ => {
                        return Err(invalid(
                            pod,
                            format!("{field}.resources.{kind}.{name}"),
                            format!("invalid quantity {:?}", q.0),
                        ));
                    }
                }
            }
            Ok(parsed)
        };
        out.limits = parse("limits", &r.limits)?;
        out.requests = parse("requests", &r.requests)?;
        for (name, v) in &out.limits {
            out.requests.entry(name.clone()).or_insert(*v);
        }
        Ok(out)
    }

    fn request(&self, name: &str) -> i128 {
        self.requests.get(name).copied().unwrap_or(0)
    }

    fn limit(&self, name: &str) -> i128 {
        self.limits.get(name).copied().unwrap_or(0)
    }
}

pub(crate) const NANO: i128 = 1_000_000_000;
const MILLI_NANO: i128 = 1_000_000;

// ---------------------------------------------------------------------------------------
// QoS and cgroups

/// The pod's QoS class by the upstream rules: cpu and memory of every container (init
/// included); Guaranteed when each declares both limits and the summed requests equal the
/// summed limits, BestEffort when nothing is declared, else Burstable. Unparseable
/// quantities count as unset here; [`sandbox_config`] reports them.
pub fn qos_class(pod: &Pod) -> QosClass {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for (_, c) in containers(pod) {
        let r = Resources::of(pod, "", c).unwrap_or_default();
        for name in ["cpu", "memory"] {
            let req = r.request(name);
            if req > 0 {
                *requests.entry(name).or_default() += req;
            }
            let lim = r.limit(name);
            if lim > 0 {
                *limits.entry(name).or_default() += lim;
            } else {
                guaranteed = false;
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed && requests == limits {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The pod's cgroup (cgroupfs driver): `<root>/pod<uid>` for Guaranteed,
/// `<root>/burstable/pod<uid>`, `<root>/besteffort/pod<uid>`; the root itself when the
/// node keeps no per-QoS cgroups (`--cgroups-per-qos=false`).
pub fn pod_cgroup_parent(pod: &Pod, node: &NodeInfo) -> String {
    let root = node.cgroup_root.trim_end_matches('/');
    if node.no_qos_cgroups {
        return if root.is_empty() {
            "/".into()
        } else {
            root.into()
        };
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    format!("{}/pod{uid}", qos_cgroup(root, qos_class(pod)))
}

/// The cgroup the pods of a QoS class sit in (cgroupfs): the root itself for
/// Guaranteed, `<root>/burstable`, `<root>/besteffort`.
pub fn qos_cgroup(root: &str, class: QosClass) -> String {
    let root = root.trim_end_matches('/');
    match class {
        QosClass::Guaranteed => root.to_string(),
        QosClass::Burstable => format!("{root}/burstable"),
        QosClass::BestEffort => format!("{root}/besteffort"),
    }
}

/// The limits of a pod's own cgroup, as the upstream kubelet's `ResourceConfigForPod`
/// computes them from the pod's effective requests and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodResources {
    pub cpu_shares: u64,
    /// CFS quota per [`PodResources::CPU_PERIOD`] µs: Guaranteed pods, and Burstable pods
    /// whose every container limits cpu.
    pub cpu_quota: Option<i64>,
    /// Guaranteed pods, and Burstable pods whose every container limits memory.
    pub memory_limit: Option<i64>,
    /// Page size (`2MB`) → bytes: what the pod requests, 0 for every other size the node has.
    pub hugepage_limits: BTreeMap<String, i64>,
}

impl PodResources {
    pub const CPU_PERIOD: u64 = CPU_PERIOD as u64;
}

/// How a pod's overhead counts in [`effective_resources`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overhead {
    /// Added to every resource (requests).
    Add,
    /// Added where the resource is set (limits).
    AddToSet,
    Exclude,
}

/// A pod's effective requests or limits by resource name, as upstream `PodRequests` /
/// `PodLimits`: the larger of the long-running containers' sum (regular containers and
/// sidecars) and the peak of any init container (with the sidecars started before it),
/// and the pod overhead.
fn effective_resources(
    pod: &Pod,
    pick: impl Fn(&Resources) -> &BTreeMap<String, i128>,
    overhead: Overhead,
) -> Result<BTreeMap<String, i128>> {
    let add = |into: &mut BTreeMap<String, i128>, from: &BTreeMap<String, i128>| {
        for (k, v) in from {
            *into.entry(k.clone()).or_default() += v;
        }
    };
    let max = |into: &mut BTreeMap<String, i128>, from: &BTreeMap<String, i128>| {
        for (k, v) in from {
            let e = into.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    };
    let mut sum = BTreeMap::new();
    let mut sidecars = BTreeMap::new();
    let mut init_peak = BTreeMap::new();
    for (kind, c) in containers(pod) {
        let r = Resources::of(pod, &container_path(kind, c), c)?;
        let own = pick(&r);
        match kind {
            ContainerKind::Regular => add(&mut sum, own),
            ContainerKind::Sidecar => {
                add(&mut sum, own);
                add(&mut sidecars, own);
                max(&mut init_peak, &sidecars);
            }
            ContainerKind::Init => {
                let mut with = own.clone();
                add(&mut with, &sidecars);
                max(&mut init_peak, &with);
            }
        }
    }
    max(&mut sum, &init_peak);
    for (name, v) in pod_overhead(pod)? {
        if overhead == Overhead::Add || (overhead == Overhead::AddToSet && sum.contains_key(&name))
        {
            *sum.entry(name).or_default() += v;
        }
    }
    Ok(sum)
}

/// `spec.overhead` (set by RuntimeClass admission, or in a static pod's manifest).
fn pod_overhead(pod: &Pod) -> Result<BTreeMap<String, i128>> {
    let overhead = pod.spec.as_ref().and_then(|s| s.overhead.as_ref());
    let mut out = BTreeMap::new();
    for (name, q) in overhead.into_iter().flatten() {
        let v = parse_quantity(&q.0).filter(|v| *v >= 0).ok_or_else(|| {
            invalid(
                pod,
                format!("spec.overhead.{name}"),
                format!("invalid quantity {:?}", q.0),
            )
        })?;
        out.insert(name.clone(), v);
    }
    Ok(out)
}

/// cpu shares, CFS quota and memory limit from a cpu request (`None`: unset, then the
/// limit stands in), a cpu limit and a memory limit, as upstream
/// `calculateLinuxResources`; the period is always set.
fn linux_resources_of(
    cpu_request: Option<i128>,
    cpu_limit: i128,
    memory_limit: i128,
) -> v1::LinuxContainerResources {
    let shares = match cpu_request {
        None if cpu_limit > 0 => milli_cpu_to_shares(to_milli(cpu_limit)),
        r => milli_cpu_to_shares(to_milli(r.unwrap_or(0))),
    };
    v1::LinuxContainerResources {
        cpu_shares: shares,
        cpu_period: CPU_PERIOD,
        cpu_quota: milli_cpu_to_quota(to_milli(cpu_limit)),
        memory_limit_in_bytes: saturate(ceil_div(memory_limit, NANO)),
        ..Default::default()
    }
}

/// The sandbox's `resources` (the pod's summed requests and limits, overhead excluded)
/// and `overhead`, as the upstream kubelet fills them for runtimes that size the sandbox
/// (VM-based ones) or report them (NRI).
fn sandbox_resources(
    pod: &Pod,
) -> Result<(v1::LinuxContainerResources, v1::LinuxContainerResources)> {
    let requests = effective_resources(pod, |r| &r.requests, Overhead::Exclude)?;
    let limits = effective_resources(pod, |r| &r.limits, Overhead::Exclude)?;
    let resources = linux_resources_of(
        requests.get("cpu").copied(),
        amount(&limits, "cpu"),
        amount(&limits, "memory"),
    );
    let overhead = pod_overhead(pod)?;
    let overhead = if overhead.is_empty() {
        v1::LinuxContainerResources::default()
    } else {
        let cpu = amount(&overhead, "cpu");
        linux_resources_of(Some(cpu), cpu, amount(&overhead, "memory"))
    };
    Ok((resources, overhead))
}

/// The pod's effective requests (init peak vs sum, sidecars, overhead) as the scheduler
/// and the kubelet's admission count them: cpu in millicores, everything else in whole
/// units (bytes, counts), rounded up. Unparsable quantities are left out.
pub fn pod_requests(pod: &Pod) -> BTreeMap<String, i64> {
    effective_resources(pod, |r| &r.requests, Overhead::Add)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let n = if k == "cpu" {
                to_milli(v)
            } else {
                saturate(ceil_div(v, NANO))
            };
            (k, n)
        })
        .collect()
}

/// The pod's effective cpu request in millicores (what its QoS tier is sized by); 0 when
/// a quantity does not parse ([`sandbox_config`] reports it).
pub fn pod_cpu_request_millis(pod: &Pod) -> i64 {
    let requests = effective_resources(pod, |r| &r.requests, Overhead::Add).unwrap_or_default();
    to_milli(amount(&requests, "cpu"))
}

/// The pod cgroup's limits (see [`PodResources`]); `node` gives the huge page sizes.
pub fn pod_resources(pod: &Pod, node: &NodeInfo) -> Result<PodResources> {
    let requests = effective_resources(pod, |r| &r.requests, Overhead::Add)?;
    let limits = effective_resources(pod, |r| &r.limits, Overhead::AddToSet)?;
    let (mut cpu_limited, mut memory_limited) = (true, true);
    for (kind, c) in containers(pod) {
        let r = Resources::of(pod, &container_path(kind, c), c)?;
        cpu_limited &= r.limit("cpu") > 0;
        memory_limited &= r.limit("memory") > 0;
    }
    let cpu_shares = milli_cpu_to_shares(to_milli(amount(&requests, "cpu"))) as u64;
    let cpu_quota = Some(milli_cpu_to_quota(to_milli(amount(&limits, "cpu"))));
    let memory_limit = Some(saturate(ceil_div(amount(&limits, "memory"), NANO)));
    let mut out = PodResources {
        cpu_shares,
        ..Default::default()
    };
    match qos_class(pod) {
        QosClass::Guaranteed => {
            out.cpu_quota = cpu_quota;
            out.memory_limit = memory_limit;
        }
        QosClass::Burstable => {
            out.cpu_quota = cpu_quota.filter(|_| cpu_limited);
            out.memory_limit = memory_limit.filter(|_| memory_limited);
        }
        QosClass::BestEffort => out.cpu_shares = MIN_SHARES as u64,
    }
    for size in &node.hugepage_sizes {
        out.hugepage_limits.insert(size.clone(), 0);
    }
    for (name, v) in &requests {
        match hugepage_resource(name) {
            None => {}
            Some(Ok(page_size)) => {
                out.hugepage_limits
                    .insert(page_size, saturate(ceil_div(*v, NANO)));
            }
            Some(Err(())) => {
                return Err(invalid(
                    pod,
                    format!("spec.containers[*].resources.{name}"),
                    "unknown page size",
                ));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Sandbox

/// The sandbox of one attempt of the pod.
pub fn sandbox_config(
    pod: &Pod,
    node: &NodeInfo,
    attempt: u32,
    log_root: &Path,
) -> Result<v1::PodSandboxConfig> {
    let m = meta(pod)?;
    let spec = spec(pod)?;
    // Surface bad quantities here rather than letting them count as unset.
    for (kind, c) in containers(pod) {
        Resources::of(pod, &container_path(kind, c), c)?;
    }
    let (resources, overhead) = sandbox_resources(pod)?;
    let host_network = spec.host_network == Some(true);
    let hostname = if host_network {
        String::new()
    } else {
        pod_hostname(pod, spec, &m, node)?
    };
    let log_directory = log_root
        .join(format!("{}_{}_{}", m.namespace, m.name, m.uid))
        .to_string_lossy()
        .into_owned();

    let mut labels: std::collections::HashMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_POD_NAME.into(), m.name.into());
    labels.insert(LABEL_POD_NAMESPACE.into(), m.namespace.into());
    labels.insert(LABEL_POD_UID.into(), m.uid.into());
    let annotations = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let psc = spec.security_context.as_ref();
    let mut sysctls = std::collections::HashMap::new();
    for s in psc.and_then(|p| p.sysctls.as_ref()).into_iter().flatten() {
        sysctls.insert(sysctl_dots(&s.name), s.value.clone());
    }

    Ok(v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: m.name.into(),
            uid: m.uid.into(),
            namespace: m.namespace.into(),
            attempt,
        }),
        hostname,
        log_directory,
        dns_config: dns_config(pod, node)?,
        port_mappings: port_mappings(pod, spec)?,
        labels,
        annotations,
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup_parent(pod, node),
            security_context: Some(sandbox_security_context(pod, spec, node)?),
            sysctls,
            overhead: Some(overhead),
            resources: Some(resources),
        }),
        windows: None,
    })
}

/// The hostname a pod's UTS namespace gets: `spec.hostname` or the pod name cut to 63
/// characters; with `setHostnameAsFQDN` and a subdomain, the FQDN (at most 64).
fn pod_hostname(pod: &Pod, spec: &PodSpec, m: &Meta<'_>, node: &NodeInfo) -> Result<String> {
    let hostname = short_hostname(pod, spec, m)?;
    let subdomain = spec.subdomain.as_deref().unwrap_or_default();
    if spec.set_hostname_as_fqdn == Some(true)
        && !subdomain.is_empty()
        && !node.cluster_domain.is_empty()
    {
        let fqdn = format!(
            "{hostname}.{subdomain}.{}.svc.{}",
            m.namespace, node.cluster_domain
        );
        if fqdn.len() > 64 {
            return Err(invalid(
                pod,
                "spec.setHostnameAsFQDN",
                format!("fqdn {fqdn:?} is longer than 64 characters"),
            ));
        }
        return Ok(fqdn);
    }
    Ok(hostname)
}

/// `spec.hostname`, or the pod name cut to 63 characters.
fn short_hostname(pod: &Pod, spec: &PodSpec, m: &Meta<'_>) -> Result<String> {
    let hostname = match spec.hostname.as_deref() {
        Some(h) if !h.is_empty() => {
            if !is_dns_label(h) {
                return Err(invalid(pod, "spec.hostname", "must be a DNS label"));
            }
            h.to_string()
        }
        _ => {
            let mut h = m.name.to_string();
            if h.len() > 63 {
                h.truncate(63);
                let trimmed = h.trim_end_matches(['-', '.']).len();
                h.truncate(trimmed);
            }
            if h.is_empty() {
                return Err(invalid(pod, "metadata.name", "no valid hostname remains"));
            }
            h
        }
    };
    Ok(hostname)
}

/// The pod's `/etc/hosts` as the upstream kubelet writes it (and mounts into every
/// container): on the pod network, localhost entries and the pod's own name for each of
/// its IPs (`<ip> <host>.<subdomain>.<ns>.svc.<domain> <host>` with a subdomain); on the
/// host network, the node's file. `hostAliases` are appended to both.
pub fn etc_hosts(
    pod: &Pod,
    node: &NodeInfo,
    pod_ips: &[String],
    node_hosts: &[u8],
) -> Result<Vec<u8>> {
    let spec = spec(pod)?;
    let m = meta(pod)?;
    let mut out: Vec<u8> = Vec::new();
    if spec.host_network == Some(true) {
        out.extend_from_slice(b"# Kubernetes-managed hosts file (host network).\n");
        out.extend_from_slice(node_hosts);
        if !node_hosts.is_empty() && !node_hosts.ends_with(b"\n") {
            out.push(b'\n');
        }
    } else {
        let host = short_hostname(pod, spec, &m)?;
        let subdomain = spec.subdomain.as_deref().unwrap_or_default();
        let mut text = String::from(
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n",
        );
        for ip in pod_ips.iter().filter(|ip| !ip.is_empty()) {
            if !subdomain.is_empty() && !node.cluster_domain.is_empty() {
                let domain = format!("{subdomain}.{}.svc.{}", m.namespace, node.cluster_domain);
                text.push_str(&format!("{ip}\t{host}.{domain}\t{host}\n"));
            } else {
                text.push_str(&format!("{ip}\t{host}\n"));
            }
        }
        out.extend_from_slice(text.as_bytes());
    }
    let aliases = spec.host_aliases.as_deref().unwrap_or_default();
    if !aliases.is_empty() {
        let mut text = String::from("\n# Entries added by HostAliases.\n");
        for (i, a) in aliases.iter().enumerate() {
            let names = a.hostnames.as_deref().unwrap_or_default();
            let bad = |why: &str| invalid(pod, format!("spec.hostAliases[{i}]"), why);
            if a.ip.parse::<std::net::IpAddr>().is_err() {
                return Err(bad("ip must be an IP address"));
            }
            if names
                .iter()
                .any(|n| n.is_empty() || n.contains(char::is_whitespace))
            {
                return Err(bad("hostnames must be names without spaces"));
            }
            text.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
        }
        out.extend_from_slice(text.as_bytes());
    }
    Ok(out)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A sysctl name with `/` separators in dotted form (`net/ipv4/ip_forward` →
/// `net.ipv4.ip_forward`; a `.` inside a `/`-separated name becomes `/`).
fn sysctl_dots(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|ch| match ch {
                '/' => '.',
                '.' => '/',
                other => other,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// The first host port of each `(port, protocol, hostIP)` of the regular and sidecar
/// containers; ports without a host port need no mapping.
fn port_mappings(pod: &Pod, spec: &PodSpec) -> Result<Vec<v1::PortMapping>> {
    let host_network = spec.host_network == Some(true);
    let mut out: Vec<v1::PortMapping> = Vec::new();
    for (kind, c) in containers(pod) {
        if kind == ContainerKind::Init {
            continue;
        }
        for p in c.ports.iter().flatten() {
            let host_port = match p.host_port {
                Some(hp) if hp != 0 => hp,
                _ if host_network => p.container_port,
                _ => continue,
            };
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => v1::Protocol::Tcp,
                "UDP" => v1::Protocol::Udp,
                "SCTP" => v1::Protocol::Sctp,
                other => {
                    return Err(invalid(
                        pod,
                        container_field(kind, c, "ports"),
                        format!("unknown protocol {other:?}"),
                    ));
                }
            };
            let pm = v1::PortMapping {
                protocol: protocol as i32,
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            };
            if !out.contains(&pm) {
                out.push(pm);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// DNS

/// Search paths and their total length as the resolver libraries cap them.
const MAX_DNS_SEARCH_PATHS: usize = 32;
const MAX_DNS_SEARCH_CHARS: usize = 2048;
/// glibc reads at most three nameservers (upstream MaxDNSNameservers).
const MAX_DNS_NAMESERVERS: usize = 3;

/// A resolv.conf as a `DNSConfig` (nameserver, search/domain, options lines).
pub fn parse_resolv_conf(text: &str) -> v1::DnsConfig {
    let mut out = v1::DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => out.servers.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => {
                out.searches = words.map(str::to_string).collect();
            }
            Some("options") => out.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    out
}

/// The pod's resolver per `dnsPolicy`; `None` means the runtime's copy of the host's.
fn dns_config(pod: &Pod, node: &NodeInfo) -> Result<Option<v1::DnsConfig>> {
    enum Kind {
        Cluster,
        Host,
        Nothing,
    }
    let spec = spec(pod)?;
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let mut kind = match policy {
        "ClusterFirstWithHostNet" => Kind::Cluster,
        "ClusterFirst" if host_network => Kind::Host,
        "ClusterFirst" => Kind::Cluster,
        "Default" => Kind::Host,
        "None" => Kind::Nothing,
        other => {
            return Err(invalid(
                pod,
                "spec.dnsPolicy",
                format!("unknown policy {other:?}"),
            ));
        }
    };
    if matches!(kind, Kind::Cluster) && node.cluster_dns.is_empty() {
        tracing::debug!(
            pod = %pod_ref(pod),
            "no cluster DNS configured, falling back to the node's resolver"
        );
        kind = Kind::Host;
    }
    let mut config = match kind {
        Kind::Host => node.host_dns.clone(),
        Kind::Nothing => Some(v1::DnsConfig::default()),
        Kind::Cluster => {
            let host_searches = node
                .host_dns
                .as_ref()
                .map(|d| d.searches.clone())
                .unwrap_or_default();
            let mut searches = Vec::new();
            if !node.cluster_domain.is_empty() {
                let d = &node.cluster_domain;
                searches.push(format!("{}.svc.{d}", pod_namespace(pod)));
                searches.push(format!("svc.{d}"));
                searches.push(d.clone());
            }
            for h in host_searches {
                if !searches.contains(&h) {
                    searches.push(h);
                }
            }
            Some(v1::DnsConfig {
                servers: node.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".into()],
            })
        }
    };
    match spec.dns_config.as_ref() {
        Some(pc) => {
            let c = config.get_or_insert_with(v1::DnsConfig::default);
            for s in pc.nameservers.iter().flatten() {
                if !c.servers.contains(s) {
                    c.servers.push(s.clone());
                }
            }
            for s in pc.searches.iter().flatten() {
                if !c.searches.contains(s) {
                    c.searches.push(s.clone());
                }
            }
            merge_dns_options(&mut c.options, pc.options.iter().flatten());
        }
        None if matches!(kind, Kind::Nothing) => {
            return Err(invalid(
                pod,
                "spec.dnsConfig",
                "must be set when dnsPolicy is None",
            ));
        }
        None => {}
    }
    if let Some(c) = config.as_mut() {
        fit_search_limits(&mut c.searches);
        if c.servers.len() > MAX_DNS_NAMESERVERS {
            tracing::warn!(
                pod = %pod_ref(pod),
                dropped = ?&c.servers[MAX_DNS_NAMESERVERS..],
                "more than {MAX_DNS_NAMESERVERS} nameservers: the resolver uses the first {MAX_DNS_NAMESERVERS}"
            );
            c.servers.truncate(MAX_DNS_NAMESERVERS);
        }
    }
    Ok(config)
}

/// Options by name, the pod's overriding the base's; `name:value` or bare `name`.
fn merge_dns_options<'a>(
    options: &mut Vec<String>,
    pod: impl Iterator<Item = &'a k8s_openapi::api::core::v1::PodDNSConfigOption>,
) {
    let mut merged: Vec<(String, String)> = options
        .iter()
        .map(|o| match o.split_once(':') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (o.clone(), String::new()),
        })
        .collect();
    for o in pod {
        let Some(name) = o.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let value = o.value.clone().unwrap_or_default();
        match merged.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => merged.push((name.to_string(), value)),
        }
    }
    *options = merged
        .into_iter()
        .map(|(n, v)| if v.is_empty() { n } else { format!("{n}:{v}") })
        .collect();
}

fn fit_search_limits(searches: &mut Vec<String>) {
    searches.truncate(MAX_DNS_SEARCH_PATHS);
    while !searches.is_empty()
        && searches.iter().map(String::len).sum::<usize>() + searches.len() - 1
            > MAX_DNS_SEARCH_CHARS
    {
        searches.pop();
    }
}

// ---------------------------------------------------------------------------------------
// Security contexts

fn namespace_options(pod: &Pod, spec: &PodSpec) -> Result<v1::NamespaceOption> {
    if spec.host_users == Some(false) {
        return Err(unsupported(
            pod,
            "spec.hostUsers",
            "user namespaces are not supported",
        ));
    }
    let node_or_pod = |host: Option<bool>| {
        if host == Some(true) {
            v1::NamespaceMode::Node
        } else {
            v1::NamespaceMode::Pod
        }
    };
    let pid = if spec.host_pid == Some(true) {
        v1::NamespaceMode::Node
    } else if spec.share_process_namespace == Some(true) {
        v1::NamespaceMode::Pod
    } else {
        v1::NamespaceMode::Container
    };
    Ok(v1::NamespaceOption {
        network: node_or_pod(spec.host_network) as i32,
        pid: pid as i32,
        ipc: node_or_pod(spec.host_ipc) as i32,
        target_id: String::new(),
        userns_options: None,
    })
}

fn selinux(o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>) -> Option<v1::SeLinuxOption> {
    o.map(|o| v1::SeLinuxOption {
        user: o.user.clone().unwrap_or_default(),
        role: o.role.clone().unwrap_or_default(),
        r#type: o.type_.clone().unwrap_or_default(),
        level: o.level.clone().unwrap_or_default(),
    })
}

fn seccomp(
    pod: &Pod,
    field: &str,
    profile: Option<&SeccompProfile>,
    node: &NodeInfo,
) -> Result<v1::SecurityProfile> {
    use v1::security_profile::ProfileType;
    let Some(p) = profile else {
        let t = if node.seccomp_default {
            ProfileType::RuntimeDefault
        } else {
            ProfileType::Unconfined
        };
        return Ok(v1::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: String::new(),
        });
    };
    let (t, localhost_ref) = match p.type_.as_str() {
        "RuntimeDefault" => (ProfileType::RuntimeDefault, String::new()),
        "Unconfined" => (ProfileType::Unconfined, String::new()),
        "Localhost" => match p.localhost_profile.as_deref() {
            Some(lp) if !lp.is_empty() && !lp.starts_with('/') && !has_dot_dot(lp) => (
                ProfileType::Localhost,
                Path::new(&node.seccomp_profile_root)
                    .join(lp)
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => {
                return Err(invalid(
                    pod,
                    format!("{field}.seccompProfile.localhostProfile"),
                    "must be a relative path without '..'",
                ));
            }
        },
        other => {
            return Err(invalid(
                pod,
                format!("{field}.seccompProfile.type"),
                format!("unknown type {other:?}"),
            ));
        }
    };
    Ok(v1::SecurityProfile {
        profile_type: t as i32,
        localhost_ref,
    })
}

fn apparmor(
    pod: &Pod,
    field: &str,
    profile: Option<&AppArmorProfile>,
) -> Result<Option<v1::SecurityProfile>> {
    use v1::security_profile::ProfileType;
    let Some(p) = profile else {
        return Ok(None);
    };
    let (t, localhost_ref) = match p.type_.as_str() {
        "RuntimeDefault" => (ProfileType::RuntimeDefault, String::new()),
        "Unconfined" => (ProfileType::Unconfined, String::new()),
        "Localhost" => match p.localhost_profile.as_deref() {
            Some(lp) if !lp.is_empty() => (ProfileType::Localhost, lp.to_string()),
            _ => {
                return Err(invalid(
                    pod,
                    format!("{field}.appArmorProfile.localhostProfile"),
                    "must be set for type Localhost",
                ));
            }
        },
        other => {
            return Err(invalid(
                pod,
                format!("{field}.appArmorProfile.type"),
                format!("unknown type {other:?}"),
            ));
        }
    };
    Ok(Some(v1::SecurityProfile {
        profile_type: t as i32,
        localhost_ref,
    }))
}

fn has_dot_dot(p: &str) -> bool {
    p.split('/').any(|c| c == "..")
}

fn supplemental_groups(psc: Option<&PodSecurityContext>) -> Vec<i64> {
    let mut groups: Vec<i64> = psc
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs_group) = psc.and_then(|p| p.fs_group)
        && !groups.contains(&fs_group)
    {
        groups.push(fs_group);
    }
    groups
}

fn groups_policy(pod: &Pod, psc: Option<&PodSecurityContext>) -> Result<i32> {
    match psc.and_then(|p| p.supplemental_groups_policy.as_deref()) {
        None | Some("Merge") => Ok(v1::SupplementalGroupsPolicy::Merge as i32),
        Some("Strict") => Ok(v1::SupplementalGroupsPolicy::Strict as i32),
        Some(other) => Err(invalid(
            pod,
            "spec.securityContext.supplementalGroupsPolicy",
            format!("unknown policy {other:?}"),
        )),
    }
}

fn sandbox_security_context(
    pod: &Pod,
    spec: &PodSpec,
    node: &NodeInfo,
) -> Result<v1::LinuxSandboxSecurityContext> {
    let psc = spec.security_context.as_ref();
    let field = "spec.securityContext";
    let privileged = containers(pod).iter().any(|(_, c)| {
        c.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    });
    Ok(v1::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options(pod, spec)?),
        selinux_options: selinux(psc.and_then(|p| p.se_linux_options.as_ref())),
        run_as_user: psc
            .and_then(|p| p.run_as_user)
            .map(|value| v1::Int64Value { value }),
        run_as_group: psc
            .and_then(|p| p.run_as_group)
            .map(|value| v1::Int64Value { value }),
        readonly_rootfs: false,
        supplemental_groups: supplemental_groups(psc),
        supplemental_groups_policy: groups_policy(pod, psc)?,
        privileged,
        seccomp: Some(seccomp(
            pod,
            field,
            psc.and_then(|p| p.seccomp_profile.as_ref()),
            node,
        )?),
        apparmor: apparmor(pod, field, psc.and_then(|p| p.app_armor_profile.as_ref()))?,
        ..Default::default()
    })
}

/// A container's security context with the pod-level defaults filled in.
fn effective_security_context(spec: &PodSpec, c: &Container) -> SecurityContext {
    let mut sc = c.security_context.clone().unwrap_or_default();
    if let Some(p) = spec.security_context.as_ref() {
        sc.run_as_user = sc.run_as_user.or(p.run_as_user);
        sc.run_as_group = sc.run_as_group.or(p.run_as_group);
        sc.run_as_non_root = sc.run_as_non_root.or(p.run_as_non_root);
        if sc.se_linux_options.is_none() {
            sc.se_linux_options = p.se_linux_options.clone();
        }
        if sc.seccomp_profile.is_none() {
            sc.seccomp_profile = p.seccomp_profile.clone();
        }
        if sc.app_armor_profile.is_none() {
            sc.app_armor_profile = p.app_armor_profile.clone();
        }
    }
    sc
}

/// The `runAsNonRoot` check that needs the image's user (from `ImageStatus`): with no
/// explicit `runAsUser`, the image's uid must be known and non-zero.
pub fn verify_run_as_non_root(
    pod: &Pod,
    c: &Container,
    image_uid: Option<i64>,
    image_username: &str,
) -> Result<()> {
    let spec = spec(pod)?;
    let sc = effective_security_context(spec, c);
    if sc.run_as_non_root != Some(true) {
        return Ok(());
    }
    let field = format!("container {}: securityContext.runAsNonRoot", c.name);
    match (sc.run_as_user, image_uid) {
        (Some(0), _) => Err(invalid(pod, field, "runAsUser is 0 (root)")),
        (Some(_), _) => Ok(()),
        (None, Some(0)) => Err(invalid(pod, field, "the image runs as root")),
        (None, Some(_)) => Ok(()),
        (None, None) if !image_username.is_empty() => Err(invalid(
            pod,
            field,
            format!(
                "the image has the non-numeric user {image_username:?}; cannot verify it is not root"
            ),
        )),
        (None, None) => Err(invalid(pod, field, "the image runs as root")),
    }
}

/// Where the container writes its termination message ("" for none); upstream's default
/// is `/dev/termination-log`.
pub fn termination_message_path(c: &Container) -> &str {
    c.termination_message_path
        .as_deref()
        .unwrap_or("/dev/termination-log")
}

/// Fills the user the container runs as from its image when the pod sets `runAsGroup`
/// but no user (upstream determineEffectiveSecurityContext): the image's uid, else its
/// user name. Runtimes reject a group without a user. Unlike upstream this is not done
/// without `runAsGroup`: the runtime then takes the image's `user:group` whole, where a
/// bare uid would drop the image's group.
pub fn apply_image_user(
    config: &mut v1::ContainerConfig,
    image_uid: Option<i64>,
    image_username: &str,
) {
    let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    else {
        return;
    };
    if sc.run_as_group.is_none() || sc.run_as_user.is_some() || !sc.run_as_username.is_empty() {
        return;
    }
    match image_uid {
        Some(value) => sc.run_as_user = Some(v1::Int64Value { value }),
        None => sc.run_as_username = image_username.to_owned(),
    }
}

// The deprecated `apparmor_profile` string is still filled in for older runtimes.
#[allow(deprecated)]
fn container_security_context(
    pod: &Pod,
    spec: &PodSpec,
    kind: ContainerKind,
    c: &Container,
    node: &NodeInfo,
) -> Result<v1::LinuxContainerSecurityContext> {
    let sc = effective_security_context(spec, c);
    let field = container_field(kind, c, "securityContext");
    // As upstream apparmor.GetProfile: the container's field, then the legacy
    // annotation (static pods still use it), then the pod's field.
    let own = c
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.clone());
    let profile = match own {
        Some(p) => Some(p),
        None => annotated_apparmor(pod, c)?.or_else(|| {
            spec.security_context
                .as_ref()
                .and_then(|p| p.app_armor_profile.clone())
        }),
    };
    let container_apparmor = apparmor(pod, &field, profile.as_ref())?;
    let privileged = sc.privileged.unwrap_or(false);
    if privileged && sc.allow_privilege_escalation == Some(false) {
        return Err(invalid(
            pod,
            format!("{field}.allowPrivilegeEscalation"),
            "cannot be false for a privileged container",
        ));
    }
    if sc.run_as_non_root == Some(true) && sc.run_as_user == Some(0) {
        return Err(invalid(
            pod,
            format!("{field}.runAsNonRoot"),
            "runAsUser is 0 (root)",
        ));
    }
    match sc.proc_mount.as_deref() {
        None | Some("Default") => {}
        Some("Unmasked") => {
            return Err(unsupported(
                pod,
                format!("{field}.procMount"),
                "Unmasked needs user namespaces",
            ));
        }
        Some(other) => {
            return Err(invalid(
                pod,
                format!("{field}.procMount"),
                format!("unknown type {other:?}"),
            ));
        }
    }
    let psc = spec.security_context.as_ref();
    Ok(v1::LinuxContainerSecurityContext {
        capabilities: sc.capabilities.as_ref().map(|caps| v1::Capability {
            add_capabilities: caps.add.clone().unwrap_or_default(),
            drop_capabilities: caps.drop.clone().unwrap_or_default(),
            add_ambient_capabilities: Vec::new(),
        }),
        privileged,
        namespace_options: Some(namespace_options(pod, spec)?),
        selinux_options: selinux(sc.se_linux_options.as_ref()),
        run_as_user: sc.run_as_user.map(|value| v1::Int64Value { value }),
        run_as_group: sc.run_as_group.map(|value| v1::Int64Value { value }),
        run_as_username: String::new(),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: supplemental_groups(psc),
        supplemental_groups_policy: groups_policy(pod, psc)?,
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        // Empty: the runtime's default masked and read-only /proc and /sys paths.
        masked_paths: Vec::new(),
        readonly_paths: Vec::new(),
        seccomp: Some(seccomp(pod, &field, sc.seccomp_profile.as_ref(), node)?),
        apparmor: container_apparmor.clone(),
        // The deprecated string form, for runtimes that read only it.
        apparmor_profile: container_apparmor
            .as_ref()
            .map(deprecated_apparmor_name)
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// The legacy `container.apparmor.security.beta.kubernetes.io/<container>` annotation
/// (`runtime/default`, `localhost/<profile>`, `unconfined`).
fn annotated_apparmor(pod: &Pod, c: &Container) -> Result<Option<AppArmorProfile>> {
    let key = format!("container.apparmor.security.beta.kubernetes.io/{}", c.name);
    let Some(value) = pod.metadata.annotations.as_ref().and_then(|a| a.get(&key)) else {
        return Ok(None);
    };
    let (type_, localhost_profile) = match value.as_str() {
        "runtime/default" => ("RuntimeDefault", None),
        "unconfined" => ("Unconfined", None),
        v => match v.strip_prefix("localhost/") {
            Some(name) if !name.is_empty() => ("Localhost", Some(name.to_string())),
            _ => {
                return Err(invalid(
                    pod,
                    format!("metadata.annotations[{key:?}]"),
                    format!(
                        "unknown AppArmor profile {v:?}: runtime/default, localhost/<name> or unconfined"
                    ),
                ));
            }
        },
    };
    Ok(Some(AppArmorProfile {
        type_: type_.into(),
        localhost_profile,
    }))
}

fn deprecated_apparmor_name(p: &v1::SecurityProfile) -> String {
    use v1::security_profile::ProfileType;
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => "runtime/default".into(),
        Ok(ProfileType::Localhost) => format!("localhost/{}", p.localhost_ref),
        _ => "unconfined".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Resources

/// Least and most `cpu.shares` the kernel takes; least CFS quota kubelet sets.
pub(crate) const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
const CPU_PERIOD: i64 = 100_000;
const MIN_QUOTA: i64 = 1_000;

/// A quantity in 10⁻⁹ units as whole millis, rounded up.
fn to_milli(nanos: i128) -> i64 {
    saturate(ceil_div(nanos, MILLI_NANO))
}

/// One resource of a map of effective requests or limits; 0 when unset.
fn amount(m: &BTreeMap<String, i128>, name: &str) -> i128 {
    m.get(name).copied().unwrap_or(0)
}

pub(crate) fn milli_cpu_to_shares(milli: i64) -> i64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    (milli.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

fn milli_cpu_to_quota(milli: i64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    (milli.saturating_mul(CPU_PERIOD) / 1000).max(MIN_QUOTA)
}

/// `priorityClassName: system-node-critical` pods are protected like the node's own
/// daemons.
fn is_node_critical(spec: &PodSpec) -> bool {
    spec.priority_class_name.as_deref() == Some("system-node-critical")
}

fn oom_score_adj(
    pod: &Pod,
    spec: &PodSpec,
    kind: ContainerKind,
    r: &Resources,
    node: &NodeInfo,
) -> i64 {
    const GUARANTEED: i64 = -997;
    const BEST_EFFORT: i64 = 1000;
    if is_node_critical(spec) {
        return GUARANTEED;
    }
    match qos_class(pod) {
        QosClass::Guaranteed => return GUARANTEED,
        QosClass::BestEffort => return BEST_EFFORT,
        QosClass::Burstable => {}
    }
    let capacity = i128::from(node.memory_bytes.max(1));
    let score_for = |mem_nanos: i128| saturate(1000 - (1000 * (mem_nanos / NANO)) / capacity);
    let mut score = score_for(r.request("memory"));
    if kind == ContainerKind::Sidecar {
        // A sidecar must not outlive the containers it serves under memory pressure.
        let min_regular = spec
            .containers
            .iter()
            .map(|c| {
                Resources::of(pod, "", c)
                    .map(|r| r.request("memory"))
                    .unwrap_or(0)
            })
            .min();
        if let Some(m) = min_regular {
            score = score.min(score_for(m));
        }
    }
    if score < 1000 + GUARANTEED {
        return 1000 + GUARANTEED;
    }
    if score == BEST_EFFORT {
        return BEST_EFFORT - 1;
    }
    score
}

fn linux_resources(
    pod: &Pod,
    spec: &PodSpec,
    kind: ContainerKind,
    c: &Container,
    node: &NodeInfo,
) -> Result<v1::LinuxContainerResources> {
    let r = Resources::of(pod, &container_path(kind, c), c)?;
    let cpu_request = to_milli(r.request("cpu"));
    let cpu_limit = to_milli(r.limit("cpu"));
    let mut out = v1::LinuxContainerResources {
        cpu_shares: milli_cpu_to_shares(cpu_request),
        memory_limit_in_bytes: saturate(ceil_div(r.limit("memory"), NANO)),
        oom_score_adj: oom_score_adj(pod, spec, kind, &r, node),
        ..Default::default()
    };
    if cpu_limit > 0 {
        out.cpu_period = CPU_PERIOD;
        out.cpu_quota = milli_cpu_to_quota(cpu_limit);
    }
    match node.swap {
        SwapControl::Unavailable => {}
        // No memory limit: the swap limit would be ignored anyway.
        SwapControl::V1 if out.memory_limit_in_bytes > 0 => {
            out.memory_swap_limit_in_bytes = out.memory_limit_in_bytes;
        }
        SwapControl::V1 => {}
        SwapControl::V2 => {
            out.unified.insert("memory.swap.max".into(), "0".into());
        }
    }
    // Every size the node has at 0, then what the container asks for.
    for size in &node.hugepage_sizes {
        out.hugepage_limits.push(v1::HugepageLimit {
            page_size: size.clone(),
            limit: 0,
        });
    }
    for (name, v) in &r.limits {
        let page_size = match hugepage_resource(name) {
            None => continue,
            Some(Ok(page_size)) => page_size,
            Some(Err(())) => {
                return Err(invalid(
                    pod,
                    container_field(kind, c, &format!("resources.limits.{name}")),
                    "unknown page size",
                ));
            }
        };
        let limit = u64::try_from(ceil_div(*v, NANO)).unwrap_or(0);
        match out
            .hugepage_limits
            .iter_mut()
            .find(|h| h.page_size == page_size)
        {
            Some(h) => h.limit = limit,
            None => out
                .hugepage_limits
                .push(v1::HugepageLimit { page_size, limit }),
        }
    }
    Ok(out)
}

/// `hugepages-2Mi` → its page size as the cgroup files spell it (`2MB`); `None` for other
/// resources, `Err` for a size that is no quantity.
fn hugepage_resource(name: &str) -> Option<std::result::Result<String, ()>> {
    let size = name.strip_prefix("hugepages-")?;
    let bytes = parse_quantity(size).map(|n| ceil_div(n, NANO)).unwrap_or(0);
    Some(if bytes > 0 {
        Ok(hugepage_size_name(bytes))
    } else {
        Err(())
    })
}

/// `2097152` → `2MB`, the page-size spelling of the hugetlb cgroup files.
pub fn hugepage_size_name(bytes: i128) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024 && v % 1024 == 0 && i + 1 < units.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", units[i])
}

// ---------------------------------------------------------------------------------------
// Downward API values (shared with the downwardAPI volume)

/// Where a field value is wanted: environment variables and volume files accept
/// different paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldUse {
    Env,
    Volume,
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`).
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let (base, key) = inner.split_once("['")?;
    (!base.is_empty()).then_some((base, key))
}

/// Labels or annotations as `key="value"` lines, sorted, values quoted as Go's `%q`.
pub(crate) fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    // In key order (the map's), as upstream FormatMap: not the formatted lines' order,
    // which differs for keys where one is a prefix of the other ("a" and "a.b").
    let lines: Vec<String> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    lines.join("\n")
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of a `fieldRef` (`field` names it in errors).
pub(crate) fn field_ref_value(
    pod: &Pod,
    field: &str,
    sel: &k8s_openapi::api::core::v1::ObjectFieldSelector,
    used: FieldUse,
    node: &NodeInfo,
    pod_ip: &str,
) -> Result<String> {
    if let Some(v) = sel.api_version.as_deref()
        && !v.is_empty()
        && v != "v1"
    {
        return Err(invalid(
            pod,
            format!("{field}.apiVersion"),
            format!("unsupported version {v:?}"),
        ));
    }
    let path = sel.field_path.as_str();
    let md = &pod.metadata;
    if let Some((base, key)) = split_subscript(path) {
        let map = match base {
            "metadata.labels" => md.labels.as_ref(),
            "metadata.annotations" => md.annotations.as_ref(),
            _ => {
                return Err(invalid(
                    pod,
                    format!("{field}.fieldPath"),
                    format!("unsupported path {path:?}"),
                ));
            }
        };
        return Ok(map.and_then(|m| m.get(key)).cloned().unwrap_or_default());
    }
    let spec = spec(pod)?;
    let value = match (path, used) {
        ("metadata.name", _) => md.name.clone().unwrap_or_default(),
        ("metadata.namespace", _) => pod_namespace(pod).to_string(),
        ("metadata.uid", _) => md.uid.clone().unwrap_or_default(),
        ("metadata.labels", FieldUse::Volume) => format_map(md.labels.as_ref()),
        ("metadata.annotations", FieldUse::Volume) => format_map(md.annotations.as_ref()),
        ("spec.nodeName", FieldUse::Env) => match spec.node_name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => node.node_name.clone(),
        },
        ("spec.serviceAccountName", FieldUse::Env) => {
            spec.service_account_name.clone().unwrap_or_default()
        }
        ("status.hostIP" | "status.hostIPs", FieldUse::Env) => node.host_ip.clone(),
        ("status.podIP" | "status.podIPs", FieldUse::Env) => {
            if pod_ip.is_empty() && spec.host_network == Some(true) {
                node.host_ip.clone()
            } else {
                pod_ip.to_string()
            }
        }
        _ => {
            return Err(invalid(
                pod,
                format!("{field}.fieldPath"),
                format!("unsupported path {path:?}"),
            ));
        }
    };
    Ok(value)
}

/// The value of a `resourceFieldRef` of container `c`, divided by the divisor and
/// rounded up; unset cpu/memory limits read as the node's allocatable.
pub(crate) fn resource_field_value(
    pod: &Pod,
    field: &str,
    c: &Container,
    sel: &ResourceFieldSelector,
    node: &NodeInfo,
) -> Result<String> {
    let r = Resources::of(pod, &container_path_in(pod, c), c)?;
    let divisor = match sel.divisor.as_ref() {
        None => NANO,
        Some(q) => match parse_quantity(&q.0) {
            Some(0) => NANO,
            Some(d) if d > 0 => d,
            _ => {
                return Err(invalid(
                    pod,
                    format!("{field}.divisor"),
                    format!("invalid quantity {:?}", q.0),
                ));
            }
        },
    };
    let (kind, name) = sel.resource.split_once('.').unwrap_or(("", ""));
    let value = match (kind, name) {
        ("limits", "cpu") => match r.limit("cpu") {
            0 => i128::from(node.cpu_millis) * MILLI_NANO,
            v => v,
        },
        ("limits", "memory") => match r.limit("memory") {
            0 => i128::from(node.memory_bytes) * NANO,
            v => v,
        },
        ("requests", "cpu" | "memory") => r.request(name),
        ("limits", "ephemeral-storage") => match r.limit(name) {
            0 => {
                return Err(unsupported(
                    pod,
                    format!("{field}.resource"),
                    "limits.ephemeral-storage without a limit (node storage is unknown)",
                ));
            }
            v => v,
        },
        ("requests", "ephemeral-storage") => r.request(name),
        ("limits", n) if n.starts_with("hugepages-") => r.limit(n),
        ("requests", n) if n.starts_with("hugepages-") => r.request(n),
        _ => {
            return Err(invalid(
                pod,
                format!("{field}.resource"),
                format!("unsupported resource {:?}", sel.resource),
            ));
        }
    };
    let result = if name == "cpu" {
        // Whole millicores over the divisor in millicores, as upstream.
        let milli = ceil_div(value, MILLI_NANO);
        let div = ceil_div(divisor, MILLI_NANO).max(1);
        ceil_div(milli, div)
    } else {
        let v = ceil_div(value, NANO);
        let div = ceil_div(divisor, NANO).max(1);
        ceil_div(v, div)
    };
    Ok(result.to_string())
}

// ---------------------------------------------------------------------------------------
// Environment

/// `$(VAR)` expansion as in Kubernetes: a known name is replaced, an unknown one stays
/// as written, `$$` is a literal `$`, any other `$` is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match after.chars().next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after[1..].find(')') {
                Some(end) => {
                    let name = &after[1..1 + end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[end + 2..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(ch) => {
                out.push('$');
                out.push(ch);
                rest = &after[ch.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment without API objects (a static pod, no API server):
/// [`container_env_with`] with nothing fetched.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    kind: ContainerKind,
    node: &NodeInfo,
    pod_ip: &str,
) -> Result<Vec<v1::KeyValue>> {
    container_env_with(pod, c, kind, node, pod_ip, &PodObjects::default())
}

/// One key of a config map or secret, as upstream resolves `configMapKeyRef` and
/// `secretKeyRef`: None when an optional object or key is missing (the variable is
/// then not set).
fn object_key(
    pod: &Pod,
    field: String,
    kind: ObjectKind,
    name: &str,
    key: &str,
    optional: bool,
    objects: &PodObjects,
) -> Result<Option<String>> {
    let data = match kind.lookup(objects, name) {
        None => return Err(unsupported(pod, field, kind.needs_api())),
        Some(Lookup::NotFound) if optional => return Ok(None),
        Some(Lookup::NotFound) => {
            return Err(Error::ObjectNotFound {
                kind: kind.singular(),
                name: name.to_string(),
            });
        }
        Some(Lookup::Failed(reason)) => {
            return Err(Error::ObjectUnavailable {
                kind: kind.singular(),
                name: name.to_string(),
                reason,
            });
        }
        Some(Lookup::Found(data)) => data,
    };
    match data.into_iter().find(|(k, _)| k == key) {
        Some((_, v)) => Ok(Some(v)),
        None if optional => Ok(None),
        None => Err(Error::MissingKey {
            kind: kind.title(),
            namespace: pod_namespace(pod).to_string(),
            name: name.to_string(),
            key: key.to_string(),
        }),
    }
}

/// A config map or a secret, as the environment reads them (strings; a secret's bytes
/// as UTF-8, lossily).
#[derive(Debug, Clone, Copy)]
enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    fn singular(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "configmap",
            ObjectKind::Secret => "secret",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "ConfigMap",
            ObjectKind::Secret => "Secret",
        }
    }

    fn needs_api(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "config maps need an API server",
            ObjectKind::Secret => "secrets need an API server",
        }
    }

    /// None: not fetched.
    fn lookup(self, objects: &PodObjects, name: &str) -> Option<Lookup<Vec<(String, String)>>> {
        fn convert<T>(
            l: &Lookup<T>,
            f: impl Fn(&T) -> Vec<(String, String)>,
        ) -> Lookup<Vec<(String, String)>> {
            match l {
                Lookup::Found(o) => Lookup::Found(f(o)),
                Lookup::NotFound => Lookup::NotFound,
                Lookup::Failed(m) => Lookup::Failed(m.clone()),
            }
        }
        match self {
            ObjectKind::ConfigMap => objects.config_maps.get(name).map(|l| {
                convert(l, |cm| {
                    cm.data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
            }),
            ObjectKind::Secret => objects.secrets.get(name).map(|l| {
                convert(l, |s| {
                    crate::objects::secret_data(s)
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                        .collect()
                })
            }),
        }
    }
}

fn set_var(env: &mut Vec<v1::KeyValue>, key: String, value: String) {
    match env.iter_mut().find(|kv| kv.key == key) {
        Some(kv) => kv.value = value,
        None => env.push(v1::KeyValue { key, value }),
    }
}

/// The container's environment as upstream builds it: `envFrom` sources in order (keys
/// with their prefix; a later source wins), then `env` in order (a later duplicate
/// replaces the value in place; `$(VAR)` expanded against the variables defined before
/// and the service variables; `configMapKeyRef`/`secretKeyRef` read from `objects`),
/// then the service variables (`objects.service_env`) no other variable set.
pub fn container_env_with(
    pod: &Pod,
    c: &Container,
    kind: ContainerKind,
    node: &NodeInfo,
    pod_ip: &str,
    objects: &PodObjects,
) -> Result<Vec<v1::KeyValue>> {
    let mut env: Vec<v1::KeyValue> = Vec::new();
    for (i, from) in c.env_from.iter().flatten().enumerate() {
        let field = container_field(kind, c, &format!("envFrom[{i}]"));
        let (source, (name, optional)) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), None) => (
                ObjectKind::ConfigMap,
                (r.name.as_str(), r.optional.unwrap_or(false)),
            ),
            (None, Some(r)) => (
                ObjectKind::Secret,
                (r.name.as_str(), r.optional.unwrap_or(false)),
            ),
            _ => {
                return Err(invalid(
                    pod,
                    field,
                    "needs exactly one of configMapRef and secretRef",
                ));
            }
        };
        let data = match source.lookup(objects, name) {
            None => {
                return Err(unsupported(
                    pod,
                    field,
                    "config maps and secrets need an API server",
                ));
            }
            Some(Lookup::Found(data)) => data,
            Some(Lookup::NotFound) if optional => continue,
            Some(Lookup::NotFound) => {
                return Err(Error::ObjectNotFound {
                    kind: source.singular(),
                    name: name.to_string(),
                });
            }
            Some(Lookup::Failed(reason)) => {
                return Err(Error::ObjectUnavailable {
                    kind: source.singular(),
                    name: name.to_string(),
                    reason,
                });
            }
        };
        let prefix = from.prefix.as_deref().unwrap_or_default();
        for (k, v) in data {
            set_var(&mut env, format!("{prefix}{k}"), v);
        }
    }
    let service_env = objects.service_env.as_ref();
    for var in c.env.iter().flatten() {
        let field = container_field(kind, c, &format!("env[{}]", var.name));
        let value = match var.value_from.as_ref() {
            None => {
                let raw = var.value.as_deref().unwrap_or_default();
                expand(raw, |name| {
                    env.iter()
                        .find(|kv| kv.key == name)
                        .map(|kv| kv.value.clone())
                        .or_else(|| service_env.and_then(|s| s.get(name).cloned()))
                })
            }
            Some(from) => {
                let field = format!("{field}.valueFrom");
                if let Some(r) = from.config_map_key_ref.as_ref() {
                    match object_key(
                        pod,
                        format!("{field}.configMapKeyRef"),
                        ObjectKind::ConfigMap,
                        &r.name,
                        &r.key,
                        r.optional.unwrap_or(false),
                        objects,
                    )? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = from.secret_key_ref.as_ref() {
                    match object_key(
                        pod,
                        format!("{field}.secretKeyRef"),
                        ObjectKind::Secret,
                        &r.name,
                        &r.key,
                        r.optional.unwrap_or(false),
                        objects,
                    )? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(sel) = from.field_ref.as_ref() {
                    field_ref_value(
                        pod,
                        &format!("{field}.fieldRef"),
                        sel,
                        FieldUse::Env,
                        node,
                        pod_ip,
                    )?
                } else if let Some(sel) = from.resource_field_ref.as_ref() {
                    let field = format!("{field}.resourceFieldRef");
                    let target = match sel.container_name.as_deref() {
                        None | Some("") => c,
                        Some(name) => find_container(pod, name).ok_or_else(|| {
                            invalid(
                                pod,
                                format!("{field}.containerName"),
                                format!("no container {name:?}"),
                            )
                        })?,
                    };
                    resource_field_value(pod, &field, target, sel, node)?
                } else {
                    return Err(invalid(pod, field, "names no source"));
                }
            }
        };
        set_var(&mut env, var.name.clone(), value);
    }
    for (k, v) in service_env.into_iter().flatten() {
        if !env.iter().any(|kv| &kv.key == k) {
            env.push(v1::KeyValue {
                key: k.clone(),
                value: v.clone(),
            });
        }
    }
    Ok(env)
}

pub(crate) fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    containers(pod)
        .into_iter()
        .map(|(_, c)| c)
        .find(|c| c.name == name)
}

// ---------------------------------------------------------------------------------------
// Containers

/// Seconds a pod gets between the stop signal and SIGKILL when it names none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The config of one attempt of container `c` (its environment without API objects).
#[allow(clippy::too_many_arguments)]
pub fn container_config(
    pod: &Pod,
    c: &Container,
    kind: ContainerKind,
    attempt: u32,
    image_ref: &str,
    mounts: Vec<v1::Mount>,
    node: &NodeInfo,
    pod_ip: &str,
) -> Result<v1::ContainerConfig> {
    container_config_with(
        pod,
        c,
        kind,
        attempt,
        image_ref,
        mounts,
        node,
        pod_ip,
        &PodObjects::default(),
    )
}

/// The config of one attempt of container `c`, its environment from
/// [`container_env_with`] and `objects`.
#[allow(clippy::too_many_arguments)]
pub fn container_config_with(
    pod: &Pod,
    c: &Container,
    kind: ContainerKind,
    attempt: u32,
    image_ref: &str,
    mounts: Vec<v1::Mount>,
    node: &NodeInfo,
    pod_ip: &str,
    objects: &PodObjects,
) -> Result<v1::ContainerConfig> {
    let m = meta(pod)?;
    let spec = spec(pod)?;
    let envs = container_env_with(pod, c, kind, node, pod_ip, objects)?;
    let lookup = |name: &str| {
        envs.iter()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.clone())
    };
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| expand(s, lookup)).collect()
    };

    let mut labels = std::collections::HashMap::new();
    labels.insert(LABEL_POD_NAME.to_string(), m.name.to_string());
    labels.insert(LABEL_POD_NAMESPACE.to_string(), m.namespace.to_string());
    labels.insert(LABEL_POD_UID.to_string(), m.uid.to_string());
    labels.insert(LABEL_CONTAINER_NAME.to_string(), c.name.clone());

    let mut annotations = std::collections::HashMap::new();
    annotations.insert(ANNOTATION_CONTAINER_HASH.to_string(), container_hash(c));
    annotations.insert(ANNOTATION_RESTART_COUNT.to_string(), attempt.to_string());
    annotations.insert(
        ANNOTATION_TERMINATION_GRACE.to_string(),
        spec.termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS)
            .to_string(),
    );
    if let Some(pre_stop) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
        && let Ok(json) = serde_json::to_string(pre_stop)
    {
        annotations.insert(ANNOTATION_PRE_STOP_HANDLER.to_string(), json);
    }
    annotations.insert(
        ANNOTATION_TERMINATION_MESSAGE_PATH.to_string(),
        termination_message_path(c).to_string(),
    );
    annotations.insert(
        ANNOTATION_TERMINATION_MESSAGE_POLICY.to_string(),
        c.termination_message_policy
            .clone()
            .unwrap_or_else(|| "File".into()),
    );

    Ok(v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(v1::ImageSpec {
            image: image_ref.to_string(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: envs.clone(),
        mounts,
        devices: Vec::new(),
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(linux_resources(pod, spec, kind, c, node)?),
            security_context: Some(container_security_context(pod, spec, kind, c, node)?),
        }),
        windows: None,
        cdi_devices: Vec::new(),
        stop_signal: stop_signal(pod, kind, c)? as i32,
    })
}

/// `lifecycle.stopSignal` (`SIGUSR1`, `SIGRTMIN+3`, `SIGRTMAX-2`) as the CRI enum.
fn stop_signal(pod: &Pod, kind: ContainerKind, c: &Container) -> Result<v1::Signal> {
    let Some(name) = c.lifecycle.as_ref().and_then(|l| l.stop_signal.as_deref()) else {
        return Ok(v1::Signal::RuntimeDefault);
    };
    let wire = name.replace('+', "PLUS").replace('-', "MINUS");
    match v1::Signal::from_str_name(&wire) {
        Some(s) if s != v1::Signal::RuntimeDefault => Ok(s),
        _ => Err(invalid(
            pod,
            container_field(kind, c, "lifecycle.stopSignal"),
            format!("unknown signal {name:?}"),
        )),
    }
}

/// A stable hash of everything in the container spec that needs a new container when it
/// changes (all of it but `resources` and `resizePolicy`, which resize in place):
/// FNV-1a 64 of the canonical JSON (sorted keys, empty values dropped), lowercase hex.
pub fn container_hash(c: &Container) -> String {
    let mut c = c.clone();
    c.resources = None;
    c.resize_policy = None;
    // Serializing a k8s-openapi type to a Value cannot fail (string keys only).
    let value = serde_json::to_value(&c).unwrap_or(serde_json::Value::Null);
    let mut canonical = String::new();
    write_canonical(&value, &mut canonical);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn is_empty_json(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.values().all(is_empty_json),
        _ => false,
    }
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(o) => {
            let mut keys: Vec<&String> = o
                .iter()
                .filter(|(_, v)| !is_empty_json(v))
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(child) = o.get(k) {
                    write_canonical(child, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, child) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(child, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod_from(v: Value) -> Pod {
        serde_json::from_value(v).expect("test pod parses")
    }

    /// A pod `default/web` (uid `u1`) with `spec` and a container per entry of
    /// `containers`.
    fn pod_with(spec: Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "app", "image": "busybox"}]);
        }
        pod_from(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                          "labels": {"app": "web"}, "annotations": {"note": "a\"b"}},
            "spec": spec,
        }))
    }

    fn node() -> NodeInfo {
        NodeInfo {
            node_name: "n1".into(),
            host_ip: "10.0.0.5".into(),
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            cgroup_root: "/kubepods".into(),
            seccomp_profile_root: "/var/lib/nodelet/seccomp".into(),
            ..Default::default()
        }
    }

    fn resources(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Value {
        let map = |kv: &[(&str, &str)]| -> Value {
            kv.iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let mut r = json!({});
        if !req.is_empty() {
            r["requests"] = map(req);
        }
        if !lim.is_empty() {
            r["limits"] = map(lim);
        }
        r
    }

    fn first(pod: &Pod) -> &Container {
        &pod.spec.as_ref().expect("spec").containers[0]
    }

    #[test]
    fn quantities() {
        let cases: &[(&str, Option<i128>)] = &[
            ("1", Some(NANO)),
            ("100m", Some(100 * MILLI_NANO)),
            ("0.5", Some(NANO / 2)),
            (".5", Some(NANO / 2)),
            ("1.5k", Some(1500 * NANO)),
            ("128Mi", Some(128 * (1 << 20) * NANO)),
            ("1Gi", Some((1 << 30) * NANO)),
            ("1G", Some(1_000_000_000 * NANO)),
            ("1e3", Some(1000 * NANO)),
            ("1E3", Some(1000 * NANO)),
            ("1E", Some(1_000_000_000_000_000_000 * NANO)),
            ("2e-3", Some(2 * MILLI_NANO)),
            ("1n", Some(1)),
            ("1u", Some(1000)),
            ("0.1n", Some(1)),
            ("-1", Some(-NANO)),
            ("", None),
            ("Mi", None),
            ("1.2.3", None),
            ("12x", None),
            ("1 Mi", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity(text), *want, "{text:?}");
        }
    }

    #[test]
    fn qos_tiers() {
        let c = |name: &str, r: Value| json!({"name": name, "image": "x", "resources": r});
        let both = resources(
            &[("cpu", "1"), ("memory", "1Gi")],
            &[("cpu", "1"), ("memory", "1Gi")],
        );
        let cases = vec![
            (
                "nothing",
                json!({"containers": [c("a", json!({}))]}),
                QosClass::BestEffort,
            ),
            (
                "zero requests are nothing",
                json!({"containers": [c("a", resources(&[("cpu", "0")], &[]))]}),
                QosClass::BestEffort,
            ),
            (
                "other resources do not count",
                json!({"containers": [c("a", resources(&[("ephemeral-storage", "1Gi")], &[]))]}),
                QosClass::BestEffort,
            ),
            (
                "requests equal limits",
                json!({"containers": [c("a", both.clone())]}),
                QosClass::Guaranteed,
            ),
            (
                "limits only: requests default to them",
                json!({"containers": [c("a", resources(&[], &[("cpu", "500m"), ("memory", "64Mi")]))]}),
                QosClass::Guaranteed,
            ),
            (
                "requests below limits",
                json!({"containers": [c("a", resources(&[("cpu", "100m"), ("memory", "1Gi")], &[("cpu", "1"), ("memory", "1Gi")]))]}),
                QosClass::Burstable,
            ),
            (
                "cpu limit only",
                json!({"containers": [c("a", resources(&[], &[("cpu", "1")]))]}),
                QosClass::Burstable,
            ),
            (
                "requests only",
                json!({"containers": [c("a", resources(&[("memory", "1Gi")], &[]))]}),
                QosClass::Burstable,
            ),
            (
                "one container without limits",
                json!({"containers": [c("a", both.clone()), c("b", json!({}))]}),
                QosClass::Burstable,
            ),
            (
                "init container without limits",
                json!({"initContainers": [c("i", json!({}))], "containers": [c("a", both.clone())]}),
                QosClass::Burstable,
            ),
            (
                "init container guaranteed too",
                json!({"initContainers": [c("i", both.clone())], "containers": [c("a", both.clone())]}),
                QosClass::Guaranteed,
            ),
            (
                "equal in different spelling",
                json!({"containers": [c("a", resources(&[("cpu", "1000m"), ("memory", "1024Mi")], &[("cpu", "1"), ("memory", "1Gi")]))]}),
                QosClass::Guaranteed,
            ),
        ];
        for (name, spec, want) in cases {
            assert_eq!(qos_class(&pod_with(spec)), want, "{name}");
        }
    }

    #[test]
    fn cgroup_parents() {
        let c = |r: Value| json!({"containers": [{"name": "a", "image": "x", "resources": r}]});
        let cases = vec![
            (c(json!({})), "/kubepods/besteffort/podu1"),
            (
                c(resources(&[("cpu", "1")], &[])),
                "/kubepods/burstable/podu1",
            ),
            (
                c(resources(&[], &[("cpu", "1"), ("memory", "1Gi")])),
                "/kubepods/podu1",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(pod_cgroup_parent(&pod_with(spec), &node()), want);
        }
        let mut n = node();
        n.cgroup_root = "/nodelet/".into();
        assert_eq!(
            pod_cgroup_parent(&pod_with(json!({})), &n),
            "/nodelet/besteffort/podu1"
        );
        n.no_qos_cgroups = true;
        assert_eq!(pod_cgroup_parent(&pod_with(json!({})), &n), "/nodelet");
    }

    #[test]
    fn pod_cgroup_limits() {
        let ctr = |name: &str, r: Value| json!({"name": name, "image": "x", "resources": r});
        let sidecar = |name: &str, r: Value| json!({"name": name, "image": "x", "restartPolicy": "Always", "resources": r});
        let no_hugepages = NodeInfo {
            hugepage_sizes: vec![],
            ..node()
        };
        let want = |shares: u64, quota: Option<i64>, memory: Option<i64>| PodResources {
            cpu_shares: shares,
            cpu_quota: quota,
            memory_limit: memory,
            hugepage_limits: BTreeMap::new(),
        };
        let cases = vec![
            (
                "best effort",
                json!({"containers": [ctr("a", json!({}))]}),
                want(2, None, None),
            ),
            (
                "guaranteed sums its containers",
                json!({"containers": [
                    ctr("a", resources(&[], &[("cpu", "500m"), ("memory", "64Mi")])),
                    ctr("b", resources(&[], &[("cpu", "250m"), ("memory", "32Mi")])),
                ]}),
                want(768, Some(75_000), Some(96 << 20)),
            ),
            (
                "burstable without every limit gets shares only",
                json!({"containers": [
                    ctr("a", resources(&[("cpu", "100m")], &[("cpu", "1"), ("memory", "1Gi")])),
                    ctr("b", resources(&[("memory", "1Mi")], &[])),
                ]}),
                want(102, None, None),
            ),
            (
                "burstable with every limit is capped",
                json!({"containers": [
                    ctr("a", resources(&[("cpu", "100m")], &[("cpu", "1"), ("memory", "1Gi")])),
                ]}),
                want(102, Some(100_000), Some(1 << 30)),
            ),
            (
                "an init container's peak wins over the sum",
                json!({
                    "initContainers": [ctr("i", resources(&[], &[("cpu", "2"), ("memory", "2Gi")]))],
                    "containers": [ctr("a", resources(&[], &[("cpu", "1"), ("memory", "1Gi")]))],
                }),
                want(2048, Some(200_000), Some(2 << 30)),
            ),
            (
                "sidecars add to the sum and to later init containers",
                json!({
                    "initContainers": [
                        sidecar("s", resources(&[], &[("cpu", "1"), ("memory", "1Gi")])),
                        ctr("i", resources(&[], &[("cpu", "1500m"), ("memory", "1Gi")])),
                    ],
                    "containers": [ctr("a", resources(&[], &[("cpu", "1"), ("memory", "1Gi")]))],
                }),
                want(2560, Some(250_000), Some(2 << 30)),
            ),
            (
                "overhead adds to requests, and to limits that are set",
                json!({
                    "overhead": {"cpu": "250m", "memory": "10Mi"},
                    "containers": [ctr("a", resources(&[("memory", "1Mi")], &[("cpu", "1")]))],
                }),
                // cpu: 1 (the request defaults to the limit) + 250m, limited; memory unlimited.
                want(1280, Some(125_000), None),
            ),
        ];
        for (name, spec, want) in cases {
            let got = pod_resources(&pod_with(spec), &no_hugepages).expect(name);
            assert_eq!(got, want, "{name}");
        }

        let huge = NodeInfo {
            hugepage_sizes: vec!["2MB".into(), "1GB".into()],
            ..node()
        };
        let pod = pod_with(json!({"containers": [ctr(
            "a",
            resources(&[], &[("cpu", "1"), ("memory", "1Gi"), ("hugepages-2Mi", "4Mi")]),
        )]}));
        let got = pod_resources(&pod, &huge).expect("valid").hugepage_limits;
        let want: BTreeMap<String, i64> = [("2MB".into(), 4 << 20), ("1GB".into(), 0)].into();
        assert_eq!(got, want, "requested sizes get their limit, the others 0");

        let bad =
            pod_with(json!({"overhead": {"cpu": "lots"}, "containers": [ctr("a", json!({}))]}));
        let err = pod_resources(&bad, &huge)
            .expect_err("bad overhead")
            .to_string();
        assert!(err.contains("spec.overhead.cpu"), "{err}");
    }

    #[test]
    fn sandbox_resources_as_upstream() {
        let ctr = |r: Value| json!({"name": "a", "image": "x", "resources": r});
        let cfg = |spec: Value| {
            let linux = sandbox_config(&pod_with(spec), &node(), 0, Path::new("/logs"))
                .expect("valid")
                .linux
                .expect("linux");
            (
                linux.resources.expect("resources"),
                linux.overhead.expect("overhead"),
            )
        };
        let want = |shares: i64, quota: i64, memory: i64| v1::LinuxContainerResources {
            cpu_shares: shares,
            cpu_period: 100_000,
            cpu_quota: quota,
            memory_limit_in_bytes: memory,
            ..Default::default()
        };
        let (r, o) = cfg(json!({"containers": [ctr(json!({}))]}));
        assert_eq!(r, want(2, 0, 0), "nothing declared");
        assert_eq!(o, v1::LinuxContainerResources::default(), "no overhead");
        let (r, o) = cfg(json!({
            "overhead": {"cpu": "100m", "memory": "8Mi"},
            "containers": [ctr(resources(&[("cpu", "250m")], &[("cpu", "500m"), ("memory", "64Mi")]))],
        }));
        assert_eq!(
            r,
            want(256, 50_000, 64 << 20),
            "the pod's own, overhead excluded"
        );
        assert_eq!(
            o,
            want(102, 10_000, 8 << 20),
            "overhead as requests = limits"
        );
    }

    #[test]
    fn expansion() {
        let vars = |name: &str| match name {
            "A" => Some("a".to_string()),
            "B" => Some("$(A)".to_string()),
            _ => None,
        };
        let cases = [
            ("$(A)", "a"),
            ("x$(A)y", "xay"),
            ("$(A)$(A)", "aa"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$a"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$x", "$x"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$()", "$()"),
            ("$(A", "$(A"),
            ("$(A$(A)", "$(A$(A)"),
            ("$(B)", "$(A)"),
            ("ü$ü$(A)", "ü$üa"),
            ("no vars", "no vars"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, vars), want, "{input:?}");
        }
    }

    fn env_of(pod: &Pod, pod_ip: &str) -> Result<Vec<(String, String)>> {
        Ok(
            container_env(pod, first(pod), ContainerKind::Regular, &node(), pod_ip)?
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
        )
    }

    #[test]
    fn env_values_and_expansion() -> Result<()> {
        let pod = pod_with(json!({"containers": [{"name": "app", "image": "x", "env": [
            {"name": "LATER", "value": "$(A)-early"},
            {"name": "A", "value": "alpha"},
            {"name": "B", "value": "$(A)/$(MISSING)/$$(A)"},
            {"name": "A", "value": "again-$(A)"},
            {"name": "EMPTY"},
        ]}]}));
        let env = env_of(&pod, "")?;
        let want = vec![
            ("LATER".to_string(), "$(A)-early".to_string()),
            ("A".to_string(), "again-alpha".to_string()),
            ("B".to_string(), "alpha/$(MISSING)/$(A)".to_string()),
            ("EMPTY".to_string(), String::new()),
        ];
        assert_eq!(env, want);
        Ok(())
    }

    #[test]
    fn env_field_refs() -> Result<()> {
        let cases = [
            ("metadata.name", "web"),
            ("metadata.namespace", "default"),
            ("metadata.uid", "u1"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['note']", "a\"b"),
            ("spec.nodeName", "n1"),
            ("spec.serviceAccountName", "sa"),
            ("status.hostIP", "10.0.0.5"),
            ("status.hostIPs", "10.0.0.5"),
            ("status.podIP", "10.88.0.7"),
            ("status.podIPs", "10.88.0.7"),
        ];
        for (path, want) in cases {
            let pod = pod_with(
                json!({"serviceAccountName": "sa", "containers": [{"name": "app", "image": "x", "env": [
                    {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": path}}},
                ]}]}),
            );
            let env = env_of(&pod, "10.88.0.7")?;
            assert_eq!(env[0].1, want, "{path}");
        }
        for bad in ["metadata.labels", "status.phase", "spec.containers"] {
            let pod = pod_with(json!({"containers": [{"name": "app", "image": "x", "env": [
                {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": bad}}},
            ]}]}));
            let err = env_of(&pod, "").expect_err(bad);
            assert!(matches!(err, Error::InvalidPod { .. }), "{bad}: {err}");
        }
        // A host-network pod's IP is the node's.
        let pod = pod_with(
            json!({"hostNetwork": true, "containers": [{"name": "app", "image": "x", "env": [
                {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ]}]}),
        );
        assert_eq!(env_of(&pod, "")?[0].1, "10.0.0.5");
        Ok(())
    }

    #[test]
    fn env_resource_field_refs() -> Result<()> {
        let cases: &[(&str, Option<&str>, Value, &str)] = &[
            ("limits.cpu", None, resources(&[], &[("cpu", "500m")]), "1"),
            (
                "limits.cpu",
                Some("1m"),
                resources(&[], &[("cpu", "500m")]),
                "500",
            ),
            (
                "limits.cpu",
                Some("100m"),
                resources(&[], &[("cpu", "250m")]),
                "3",
            ),
            ("limits.cpu", None, json!({}), "2"),
            ("limits.cpu", Some("1m"), json!({}), "2000"),
            (
                "requests.cpu",
                Some("1m"),
                resources(&[("cpu", "250m")], &[]),
                "250",
            ),
            (
                "requests.cpu",
                Some("1m"),
                resources(&[], &[("cpu", "750m")]),
                "750",
            ),
            ("requests.cpu", None, json!({}), "0"),
            (
                "limits.memory",
                None,
                resources(&[], &[("memory", "64Mi")]),
                "67108864",
            ),
            (
                "limits.memory",
                Some("1Mi"),
                resources(&[], &[("memory", "64Mi")]),
                "64",
            ),
            (
                "limits.memory",
                Some("1Mi"),
                resources(&[], &[("memory", "1500Ki")]),
                "2",
            ),
            ("limits.memory", Some("1Gi"), json!({}), "4"),
            (
                "requests.memory",
                Some("1k"),
                resources(&[("memory", "1M")], &[]),
                "1000",
            ),
        ];
        for (res, divisor, r, want) in cases {
            let mut sel = json!({"resource": res});
            if let Some(d) = divisor {
                sel["divisor"] = json!(d);
            }
            let pod = pod_with(
                json!({"containers": [{"name": "app", "image": "x", "resources": r, "env": [
                    {"name": "V", "valueFrom": {"resourceFieldRef": sel}},
                ]}]}),
            );
            assert_eq!(env_of(&pod, "")?[0].1, *want, "{res} / {divisor:?} of {r}");
        }
        // Another container's value, by name.
        let pod = pod_with(json!({"containers": [
            {"name": "app", "image": "x", "env": [
                {"name": "V", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}}]},
            {"name": "side", "image": "x", "resources": resources(&[], &[("memory", "32Mi")])},
        ]}));
        assert_eq!(env_of(&pod, "")?[0].1, "32");
        Ok(())
    }

    fn api_objects() -> PodObjects {
        let mut o = PodObjects::default();
        let cm = |v: Value| Lookup::Found(serde_json::from_value(v).expect("configmap"));
        let secret = |v: Value| Lookup::Found(serde_json::from_value(v).expect("secret"));
        o.config_maps.insert(
            "cfg".into(),
            cm(json!({"metadata": {"name": "cfg"}, "data": {"MODE": "fast", "LEVEL": "3", "bad key": "x"}})),
        );
        o.config_maps.insert("gone".into(), Lookup::NotFound);
        o.config_maps.insert(
            "broken".into(),
            Lookup::Failed("getting configmap ns/broken: connection refused".into()),
        );
        o.secrets.insert(
            "db".into(),
            // "s3cr3t", "admin"
            secret(json!({"metadata": {"name": "db"}, "data": {"PASSWORD": "czNjcjN0", "USER": "YWRtaW4="}})),
        );
        o.secrets.insert("nosecret".into(), Lookup::NotFound);
        o.service_env = Some(
            [
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
                ("LEVEL", "from-service"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        o
    }

    fn api_env_of(container: Value) -> Result<Vec<(String, String)>> {
        let pod = pod_with(json!({"containers": [container]}));
        Ok(container_env_with(
            &pod,
            first(&pod),
            ContainerKind::Regular,
            &node(),
            "",
            &api_objects(),
        )?
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect())
    }

    #[test]
    fn env_from_config_maps_secrets_and_services() -> Result<()> {
        let env = api_env_of(json!({"name": "app", "image": "x",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}},
            {"prefix": "DB_", "secretRef": {"name": "db"}},
            {"configMapRef": {"name": "gone", "optional": true}}
        ],
        "env": [
            {"name": "MODE", "value": "slow"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "PASSWORD"}}},
            {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
            {"name": "ALSO", "valueFrom": {"secretKeyRef": {"name": "nosecret", "key": "k", "optional": true}}},
            {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)/$(DB_USER)"}
        ]}))?;
        let want: Vec<(String, String)> = [
            // envFrom first (keys in order, prefixed), `env` replacing in place…
            ("LEVEL", "3"),
            ("MODE", "slow"),
            ("bad key", "x"),
            ("DB_PASSWORD", "s3cr3t"),
            ("DB_USER", "admin"),
            ("PW", "s3cr3t"),
            ("LVL", "3"),
            ("URL", "https://10.96.0.1:443/admin"),
            // …then the service variables nothing else set.
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
        Ok(())
    }

    #[test]
    fn missing_env_objects_fail_with_upstream_messages() {
        let cases = [
            (
                json!({"envFrom": [{"configMapRef": {"name": "gone"}}]}),
                r#"configmap "gone" not found"#,
            ),
            (
                json!({"envFrom": [{"secretRef": {"name": "nosecret"}}]}),
                r#"secret "nosecret" not found"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]}),
                r#"configmap "gone" not found"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}),
                "couldn't find key k in ConfigMap default/cfg",
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}]}),
                "couldn't find key k in Secret default/db",
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "broken", "key": "k", "optional": true}}}]}),
                "getting configmap ns/broken: connection refused",
            ),
        ];
        for (extra, want) in cases {
            let mut c = json!({"name": "app", "image": "x"});
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            let err = api_env_of(c).expect_err(want);
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn container_config_carries_the_api_environment() -> Result<()> {
        let pod = pod_with(json!({"containers": [{"name": "app", "image": "x",
            "command": ["echo", "$(PW)"],
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "PASSWORD"}}}]}]}));
        let cfg = container_config_with(
            &pod,
            first(&pod),
            ContainerKind::Regular,
            0,
            "img",
            vec![],
            &node(),
            "",
            &api_objects(),
        )?;
        assert_eq!(cfg.command, ["echo", "s3cr3t"]);
        assert!(
            cfg.envs
                .iter()
                .any(|kv| kv.key == "KUBERNETES_SERVICE_HOST")
        );
        Ok(())
    }

    #[test]
    fn env_sources_needing_an_api_server_are_unsupported() {
        let cases = [
            (
                json!({"envFrom": [{"configMapRef": {"name": "cm"}}]}),
                "envFrom",
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}),
                "configMapKeyRef",
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
                "secretKeyRef",
            ),
        ];
        for (extra, field) in cases {
            let mut c = json!({"name": "app", "image": "x"});
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            let pod = pod_with(json!({"containers": [c]}));
            let err = env_of(&pod, "").expect_err(field);
            let text = err.to_string();
            assert!(matches!(err, Error::Unsupported { .. }), "{text}");
            assert!(
                text.contains("containers[app]") && text.contains(field),
                "{text}"
            );
        }
    }

    #[test]
    fn cpu_and_memory_math() {
        let cases = [
            (0, 2),
            (1, 2),
            (2, 2),
            (100, 102),
            (250, 256),
            (1000, 1024),
            (1_000_000, 262_144),
        ];
        for (milli, shares) in cases {
            assert_eq!(milli_cpu_to_shares(milli), shares, "shares of {milli}m");
        }
        let cases = [
            (0, 0),
            (1, 1000),
            (5, 1000),
            (10, 1000),
            (100, 10_000),
            (1500, 150_000),
        ];
        for (milli, quota) in cases {
            assert_eq!(milli_cpu_to_quota(milli), quota, "quota of {milli}m");
        }
    }

    fn linux(pod: &Pod, kind: ContainerKind, c: &Container) -> Result<v1::LinuxContainerResources> {
        let cfg = container_config(
            pod,
            c,
            kind,
            0,
            "sha256:img",
            Vec::new(),
            &node(),
            "10.88.0.7",
        )?;
        Ok(cfg.linux.and_then(|l| l.resources).unwrap_or_default())
    }

    #[test]
    fn container_resources() -> Result<()> {
        // (requests, limits) → (shares, period, quota, memory limit)
        let cases: Vec<(Value, (i64, i64, i64, i64))> = vec![
            (json!({}), (2, 0, 0, 0)),
            (resources(&[("cpu", "250m")], &[]), (256, 0, 0, 0)),
            (
                resources(&[], &[("cpu", "500m")]),
                (512, 100_000, 50_000, 0),
            ),
            (
                resources(&[("cpu", "100m")], &[("cpu", "2")]),
                (102, 100_000, 200_000, 0),
            ),
            (resources(&[], &[("cpu", "1m")]), (2, 100_000, 1000, 0)),
            (resources(&[], &[("memory", "128Mi")]), (2, 0, 0, 128 << 20)),
        ];
        for (r, (shares, period, quota, mem)) in cases {
            let pod =
                pod_with(json!({"containers": [{"name": "app", "image": "x", "resources": r}]}));
            let l = linux(&pod, ContainerKind::Regular, first(&pod))?;
            assert_eq!(
                (
                    l.cpu_shares,
                    l.cpu_period,
                    l.cpu_quota,
                    l.memory_limit_in_bytes
                ),
                (shares, period, quota, mem),
                "{r}"
            );
        }
        let pod = pod_with(json!({"containers": [{"name": "app", "image": "x",
            "resources": resources(&[], &[("hugepages-2Mi", "4Mi"), ("cpu", "1"), ("memory", "1Gi")])}]}));
        let l = linux(&pod, ContainerKind::Regular, first(&pod))?;
        assert_eq!(
            l.hugepage_limits,
            vec![v1::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20
            }]
        );
        // A node with 2 MB and 1 GB pages: the size not asked for is 0. Swap: off.
        let mut n = node();
        n.hugepage_sizes = vec!["2MB".into(), "1GB".into()];
        n.swap = SwapControl::V1;
        let resources_on = |n: &NodeInfo| -> Result<v1::LinuxContainerResources> {
            let cfg = container_config(
                &pod,
                first(&pod),
                ContainerKind::Regular,
                0,
                "img",
                vec![],
                n,
                "",
            )?;
            Ok(cfg.linux.and_then(|l| l.resources).unwrap_or_default())
        };
        let l = resources_on(&n)?;
        let pages: Vec<(String, u64)> = l
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect();
        assert_eq!(
            pages,
            [("2MB".to_string(), 4 << 20), ("1GB".to_string(), 0)]
        );
        assert_eq!(
            l.memory_swap_limit_in_bytes,
            1 << 30,
            "no swap beyond the memory limit"
        );
        n.swap = SwapControl::V2;
        let l = resources_on(&n)?;
        assert_eq!(
            l.unified.get("memory.swap.max").map(String::as_str),
            Some("0")
        );
        assert_eq!(l.memory_swap_limit_in_bytes, 0);
        Ok(())
    }

    #[test]
    fn oom_score_per_qos() -> Result<()> {
        // node memory 4Gi
        let c = |name: &str, r: Value| json!({"name": name, "image": "x", "resources": r});
        let cases = vec![
            (
                "best effort",
                json!({"containers": [c("a", json!({}))]}),
                1000,
            ),
            (
                "guaranteed",
                json!({"containers": [c("a", resources(&[], &[("cpu", "1"), ("memory", "1Gi")]))]}),
                -997,
            ),
            (
                "node critical",
                json!({"priorityClassName": "system-node-critical", "containers": [c("a", json!({}))]}),
                -997,
            ),
            (
                "burstable quarter",
                json!({"containers": [c("a", resources(&[("memory", "1Gi")], &[]))]}),
                750,
            ),
            (
                "burstable without memory request",
                json!({"containers": [c("a", resources(&[("cpu", "1")], &[]))]}),
                999,
            ),
            (
                "burstable everything",
                json!({"containers": [c("a", resources(&[("memory", "4Gi")], &[]))]}),
                3,
            ),
            (
                "burstable over the node",
                json!({"containers": [c("a", resources(&[("memory", "8Gi")], &[]))]}),
                3,
            ),
        ];
        for (name, spec, want) in cases {
            let pod = pod_with(spec);
            let l = linux(&pod, ContainerKind::Regular, first(&pod))?;
            assert_eq!(l.oom_score_adj, want, "{name}");
        }
        // A sidecar scores no higher than the smallest regular container.
        let pod = pod_with(json!({
            "initContainers": [{"name": "side", "image": "x", "restartPolicy": "Always"}],
            "containers": [c("a", resources(&[("memory", "2Gi")], &[])), c("b", resources(&[("memory", "1Gi")], &[]))],
        }));
        let side = &pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .expect("init")[0];
        assert_eq!(
            linux(&pod, ContainerKind::Sidecar, side)?.oom_score_adj,
            750
        );
        Ok(())
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let base: Container = serde_json::from_value(json!({
            "name": "app", "image": "busybox:1.36", "command": ["sh", "-c"], "args": ["sleep 1"],
            "env": [{"name": "A", "value": "1"}],
            "resources": {"limits": {"cpu": "1"}},
        }))
        .expect("container");
        let h = container_hash(&base);
        assert_eq!(h.len(), 16);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, container_hash(&base.clone()), "deterministic");

        let variant = |f: &dyn Fn(&mut Container)| {
            let mut c = base.clone();
            f(&mut c);
            container_hash(&c)
        };
        let same: Vec<(&str, String)> = vec![
            ("resources", variant(&|c| c.resources = None)),
            (
                "resize policy",
                variant(&|c| c.resize_policy = Some(Vec::new())),
            ),
            (
                "empty volumeMounts",
                variant(&|c| c.volume_mounts = Some(Vec::new())),
            ),
        ];
        for (what, got) in same {
            assert_eq!(got, h, "{what} must not change the hash");
        }
        let different: Vec<(&str, String)> = vec![
            ("image", variant(&|c| c.image = Some("busybox:1.37".into()))),
            ("args", variant(&|c| c.args = Some(vec!["sleep 2".into()]))),
            ("command", variant(&|c| c.command = None)),
            ("env", variant(&|c| c.env = None)),
            ("name", variant(&|c| c.name = "other".into())),
            ("tty", variant(&|c| c.tty = Some(true))),
        ];
        for (what, got) in different {
            assert_ne!(got, h, "{what} must change the hash");
        }
    }

    #[test]
    fn static_pod_names() {
        assert_eq!(static_pod_name("web", "node-1"), "web-node-1");
        assert_eq!(static_pod_name("etcd", "a.b.c"), "etcd-a.b.c");
    }

    fn dns(spec: Value, n: &NodeInfo) -> Result<Option<v1::DnsConfig>> {
        Ok(sandbox_config(&pod_with(spec), n, 0, Path::new("/var/log/pods"))?.dns_config)
    }

    #[test]
    fn dns_policies() -> Result<()> {
        let host = v1::DnsConfig {
            servers: vec!["192.168.1.1".into()],
            searches: vec!["lan".into()],
            options: vec!["edns0".into()],
        };
        let mut cluster = node();
        cluster.cluster_dns = vec!["10.96.0.10".into()];
        cluster.cluster_domain = "cluster.local".into();
        cluster.host_dns = Some(host.clone());
        let mut plain = node();
        plain.host_dns = None;
        let cluster_cfg = v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
                "lan".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        let pod_dns = json!({"nameservers": ["1.1.1.1"], "searches": ["x.example"],
                             "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]});
        let cases: Vec<(&str, Value, &NodeInfo, Option<v1::DnsConfig>)> = vec![
            (
                "ClusterFirst default",
                json!({}),
                &cluster,
                Some(cluster_cfg.clone()),
            ),
            ("ClusterFirst without cluster DNS", json!({}), &plain, None),
            (
                "ClusterFirst on the host network is Default",
                json!({"hostNetwork": true}),
                &cluster,
                Some(host.clone()),
            ),
            (
                "ClusterFirstWithHostNet",
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
                &cluster,
                Some(cluster_cfg.clone()),
            ),
            (
                "Default with host resolver",
                json!({"dnsPolicy": "Default"}),
                &cluster,
                Some(host.clone()),
            ),
            (
                "Default without host resolver",
                json!({"dnsPolicy": "Default"}),
                &plain,
                None,
            ),
            (
                "None uses dnsConfig",
                json!({"dnsPolicy": "None", "dnsConfig": pod_dns.clone()}),
                &cluster,
                Some(v1::DnsConfig {
                    servers: vec!["1.1.1.1".into()],
                    searches: vec!["x.example".into()],
                    options: vec!["ndots:2".into(), "rotate".into()],
                }),
            ),
            (
                "ClusterFirst merges dnsConfig",
                json!({"dnsConfig": pod_dns.clone()}),
                &cluster,
                Some(v1::DnsConfig {
                    servers: vec!["10.96.0.10".into(), "1.1.1.1".into()],
                    searches: [cluster_cfg.searches.clone(), vec!["x.example".into()]].concat(),
                    options: vec!["ndots:2".into(), "rotate".into()],
                }),
            ),
            (
                "Default merges dnsConfig",
                json!({"dnsPolicy": "Default", "dnsConfig": {"searches": ["lan", "y"]}}),
                &cluster,
                Some(v1::DnsConfig {
                    servers: host.servers.clone(),
                    searches: vec!["lan".into(), "y".into()],
                    options: host.options.clone(),
                }),
            ),
        ];
        for (name, spec, n, want) in cases {
            assert_eq!(dns(spec, n)?, want, "{name}");
        }
        // The node's search list repeating the cluster's: once; more than 3 servers: 3.
        let mut repeats = cluster.clone();
        repeats.host_dns = Some(v1::DnsConfig {
            searches: vec!["cluster.local".into(), "lan".into()],
            ..host.clone()
        });
        let cfg = dns(
            json!({"dnsConfig": {"nameservers": ["1.1.1.1", "8.8.8.8", "9.9.9.9"]}}),
            &repeats,
        )?
        .unwrap_or_default();
        assert_eq!(cfg.searches, cluster_cfg.searches);
        assert_eq!(cfg.servers, ["10.96.0.10", "1.1.1.1", "8.8.8.8"]);
        let err = dns(json!({"dnsPolicy": "None"}), &cluster).expect_err("None needs dnsConfig");
        assert!(err.to_string().contains("dnsConfig"), "{err}");
        assert!(dns(json!({"dnsPolicy": "Bogus"}), &cluster).is_err());

        let many: Vec<String> = (0..40).map(|i| format!("s{i}.example")).collect();
        let cfg = dns(
            json!({"dnsPolicy": "None", "dnsConfig": {"searches": many}}),
            &cluster,
        )?;
        assert_eq!(cfg.map(|c| c.searches.len()), Some(MAX_DNS_SEARCH_PATHS));
        Ok(())
    }

    #[test]
    fn resolv_conf_parsing() {
        let got = parse_resolv_conf(
            "# comment\nnameserver 1.1.1.1\nnameserver 8.8.8.8 ; trailing\nsearch a b\noptions ndots:2 edns0\n",
        );
        assert_eq!(got.servers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(got.searches, ["a", "b"]);
        assert_eq!(got.options, ["ndots:2", "edns0"]);
    }

    #[test]
    fn port_mappings_from_host_ports() -> Result<()> {
        let pod = pod_with(json!({"containers": [
            {"name": "a", "image": "x", "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 81},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
            ]},
            {"name": "b", "image": "x", "ports": [{"containerPort": 9000, "hostPort": 9000, "protocol": "SCTP"}]},
        ], "initContainers": [
            {"name": "init", "image": "x", "ports": [{"containerPort": 1, "hostPort": 1}]},
            {"name": "side", "image": "x", "restartPolicy": "Always", "ports": [{"containerPort": 2, "hostPort": 2}]},
        ]}));
        let cfg = sandbox_config(&pod, &node(), 0, Path::new("/var/log/pods"))?;
        let got: Vec<(i32, i32, i32, String)> = cfg
            .port_mappings
            .iter()
            .map(|p| (p.protocol, p.container_port, p.host_port, p.host_ip.clone()))
            .collect();
        let tcp = v1::Protocol::Tcp as i32;
        assert_eq!(
            got,
            vec![
                (tcp, 2, 2, String::new()),
                (tcp, 80, 8080, String::new()),
                (v1::Protocol::Udp as i32, 53, 5353, "127.0.0.1".into()),
                (v1::Protocol::Sctp as i32, 9000, 9000, String::new()),
            ]
        );
        // On the host network hostPort defaults to containerPort.
        let pod = pod_with(json!({"hostNetwork": true, "containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 80}]}]}));
        let cfg = sandbox_config(&pod, &node(), 0, Path::new("/var/log/pods"))?;
        assert_eq!(cfg.port_mappings.first().map(|p| p.host_port), Some(80));
        let pod = pod_with(json!({"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 80, "protocol": "ICMP"}]}]}));
        assert!(sandbox_config(&pod, &node(), 0, Path::new("/var/log/pods")).is_err());
        Ok(())
    }

    #[test]
    fn sandbox_basics() -> Result<()> {
        let pod = pod_with(json!({
            "subdomain": "sub", "shareProcessNamespace": true, "hostIPC": true,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000,
                                "supplementalGroups": [4000],
                                "sysctls": [{"name": "net.core.somaxconn", "value": "1024"},
                                            {"name": "net/ipv4/ip_local_port_range", "value": "1 2"}],
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "a", "image": "x", "securityContext": {"privileged": true}}],
        }));
        let cfg = sandbox_config(&pod, &node(), 2, Path::new("/var/log/pods"))?;
        let md = cfg.metadata.clone().unwrap_or_default();
        assert_eq!(
            (
                md.name.as_str(),
                md.namespace.as_str(),
                md.uid.as_str(),
                md.attempt
            ),
            ("web", "default", "u1", 2)
        );
        assert_eq!(cfg.hostname, "web", "subdomain is not part of the hostname");
        assert_eq!(cfg.log_directory, "/var/log/pods/default_web_u1");
        assert_eq!(cfg.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            cfg.labels.get(LABEL_POD_UID).map(String::as_str),
            Some("u1")
        );
        assert_eq!(
            cfg.labels.get(LABEL_POD_NAME).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            cfg.annotations.get("note").map(String::as_str),
            Some("a\"b")
        );
        let linux = cfg.linux.unwrap_or_default();
        assert_eq!(linux.cgroup_parent, "/kubepods/besteffort/podu1");
        assert_eq!(
            linux.sysctls.get("net.core.somaxconn").map(String::as_str),
            Some("1024")
        );
        assert_eq!(
            linux
                .sysctls
                .get("net.ipv4.ip_local_port_range")
                .map(String::as_str),
            Some("1 2")
        );
        let sc = linux.security_context.unwrap_or_default();
        assert!(sc.privileged);
        assert_eq!(sc.run_as_user.map(|v| v.value), Some(1000));
        assert_eq!(sc.run_as_group.map(|v| v.value), Some(2000));
        assert_eq!(sc.supplemental_groups, [4000, 3000]);
        assert_eq!(
            sc.seccomp.map(|s| s.profile_type),
            Some(v1::security_profile::ProfileType::RuntimeDefault as i32)
        );
        let ns = sc.namespace_options.unwrap_or_default();
        assert_eq!(
            (ns.network, ns.pid, ns.ipc),
            (
                v1::NamespaceMode::Pod as i32,
                v1::NamespaceMode::Pod as i32,
                v1::NamespaceMode::Node as i32
            )
        );
        Ok(())
    }

    #[test]
    fn etc_hosts_files() -> Result<()> {
        let mut n = node();
        n.cluster_domain = "cluster.local".into();
        let ips = ["10.0.0.2".to_string(), "fd00::2".to_string()];
        let hosts = |spec: serde_json::Value| -> Result<String> {
            let pod = pod_with(spec);
            Ok(String::from_utf8(etc_hosts(&pod, &n, &ips, b"1.2.3.4 node\n")?).expect("utf-8"))
        };
        let base = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
            ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
            fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";
        let name = pod_with(json!({}))
            .metadata
            .name
            .clone()
            .unwrap_or_default();
        assert_eq!(
            hosts(json!({}))?,
            format!("{base}10.0.0.2\t{name}\nfd00::2\t{name}\n")
        );
        assert_eq!(
            hosts(json!({"hostname": "h", "subdomain": "s"}))?,
            format!(
                "{base}10.0.0.2\th.s.default.svc.cluster.local\th\nfd00::2\th.s.default.svc.cluster.local\th\n"
            )
        );
        assert_eq!(
            hosts(json!({"hostname": "h", "hostAliases": [
                {"ip": "127.0.0.1", "hostnames": ["foo.local", "bar.local"]},
                {"ip": "10.1.2.3", "hostnames": ["baz"]}]}))?,
            format!(
                "{base}10.0.0.2\th\nfd00::2\th\n\n# Entries added by HostAliases.\n\
                 127.0.0.1\tfoo.local\tbar.local\n10.1.2.3\tbaz\n"
            )
        );
        assert_eq!(
            hosts(
                json!({"hostNetwork": true, "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["baz"]}]})
            )?,
            "# Kubernetes-managed hosts file (host network).\n1.2.3.4 node\n\n\
             # Entries added by HostAliases.\n10.1.2.3\tbaz\n"
        );
        assert!(hosts(json!({"hostAliases": [{"ip": "nope", "hostnames": ["x"]}]})).is_err());
        assert!(hosts(json!({"hostAliases": [{"ip": "1.2.3.4", "hostnames": ["a b"]}]})).is_err());
        Ok(())
    }

    #[test]
    fn hostnames() -> Result<()> {
        let long = "a".repeat(60) + "-.-bbbb";
        let cut = "a".repeat(60);
        let mut fqdn_node = node();
        fqdn_node.cluster_domain = "cluster.local".into();
        let cases: Vec<(Value, Value, &NodeInfo, &str)> = vec![
            (json!("web"), json!({}), &fqdn_node, "web"),
            (
                json!("web"),
                json!({"hostname": "h1", "subdomain": "s"}),
                &fqdn_node,
                "h1",
            ),
            (json!(long), json!({}), &fqdn_node, &cut),
            (json!("web"), json!({"hostNetwork": true}), &fqdn_node, ""),
            (
                json!("web"),
                json!({"hostname": "h1", "subdomain": "s", "setHostnameAsFQDN": true}),
                &fqdn_node,
                "h1.s.default.svc.cluster.local",
            ),
        ];
        for (name, spec, n, want) in cases {
            let mut spec = spec;
            spec["containers"] = json!([{"name": "a", "image": "x"}]);
            let pod = pod_from(json!({"metadata": {"name": name, "uid": "u"}, "spec": spec}));
            assert_eq!(
                sandbox_config(&pod, n, 0, Path::new("/l"))?.hostname,
                want,
                "{name} {spec}"
            );
        }
        let pod = pod_with(json!({"hostname": "Bad_Name"}));
        assert!(sandbox_config(&pod, &node(), 0, Path::new("/l")).is_err());
        Ok(())
    }

    #[test]
    fn pid_namespace_modes() -> Result<()> {
        let cases = [
            (json!({}), v1::NamespaceMode::Container),
            (
                json!({"shareProcessNamespace": true}),
                v1::NamespaceMode::Pod,
            ),
            (json!({"hostPID": true}), v1::NamespaceMode::Node),
        ];
        for (spec, want) in cases {
            let pod = pod_with(spec.clone());
            let cfg = container_config(
                &pod,
                first(&pod),
                ContainerKind::Regular,
                0,
                "img",
                Vec::new(),
                &node(),
                "",
            )?;
            let ns = cfg
                .linux
                .and_then(|l| l.security_context)
                .and_then(|s| s.namespace_options)
                .unwrap_or_default();
            assert_eq!(ns.pid, want as i32, "{spec}");
        }
        let pod = pod_with(json!({"hostUsers": false}));
        let err = sandbox_config(&pod, &node(), 0, Path::new("/l")).expect_err("user namespaces");
        assert!(matches!(err, Error::Unsupported { .. }));
        Ok(())
    }

    #[test]
    fn container_config_basics() -> Result<()> {
        let pod = pod_with(json!({
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app", "image": "busybox", "command": ["sh", "-c", "echo $(GREETING) $$(GREETING)"],
                "args": ["$(NOPE)"], "workingDir": "/w", "stdin": true, "tty": true,
                "env": [{"name": "GREETING", "value": "hi"}],
                "lifecycle": {"stopSignal": "SIGUSR1"},
            }],
        }));
        let mounts = vec![v1::Mount {
            container_path: "/data".into(),
            host_path: "/h".into(),
            ..Default::default()
        }];
        let cfg = container_config(
            &pod,
            first(&pod),
            ContainerKind::Regular,
            3,
            "sha256:abc",
            mounts.clone(),
            &node(),
            "",
        )?;
        assert_eq!(
            cfg.metadata,
            Some(v1::ContainerMetadata {
                name: "app".into(),
                attempt: 3
            })
        );
        let image = cfg.image.clone().unwrap_or_default();
        assert_eq!(
            (image.image.as_str(), image.user_specified_image.as_str()),
            ("sha256:abc", "busybox")
        );
        assert_eq!(cfg.command, ["sh", "-c", "echo hi $(GREETING)"]);
        assert_eq!(cfg.args, ["$(NOPE)"]);
        assert_eq!(cfg.working_dir, "/w");
        assert_eq!(cfg.log_path, "app/3.log");
        assert!(cfg.stdin && cfg.tty && !cfg.stdin_once);
        assert_eq!(cfg.mounts, mounts);
        assert_eq!(cfg.stop_signal, v1::Signal::Sigusr1 as i32);
        assert_eq!(
            cfg.labels.get(LABEL_CONTAINER_NAME).map(String::as_str),
            Some("app")
        );
        assert_eq!(
            cfg.labels.get(LABEL_POD_NAMESPACE).map(String::as_str),
            Some("default")
        );
        assert!(
            !cfg.labels.contains_key("app"),
            "pod labels stay on the sandbox"
        );
        assert_eq!(
            cfg.annotations
                .get(ANNOTATION_RESTART_COUNT)
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(
            cfg.annotations
                .get(ANNOTATION_TERMINATION_GRACE)
                .map(String::as_str),
            Some("5")
        );
        assert_eq!(
            cfg.annotations.get(ANNOTATION_CONTAINER_HASH),
            Some(&container_hash(first(&pod)))
        );
        Ok(())
    }

    #[test]
    fn stop_signals() -> Result<()> {
        let cases = [
            (None, Some(v1::Signal::RuntimeDefault)),
            (Some("SIGTERM"), Some(v1::Signal::Sigterm)),
            (Some("SIGRTMIN+3"), Some(v1::Signal::Sigrtminplus3)),
            (Some("SIGRTMAX-2"), Some(v1::Signal::Sigrtmaxminus2)),
            (Some("SIGBOGUS"), None),
            (Some("RUNTIME_DEFAULT"), None),
        ];
        for (name, want) in cases {
            let mut c = json!({"name": "app", "image": "x"});
            if let Some(n) = name {
                c["lifecycle"] = json!({"stopSignal": n});
            }
            let pod = pod_with(json!({"containers": [c]}));
            let got = container_config(
                &pod,
                first(&pod),
                ContainerKind::Regular,
                0,
                "i",
                Vec::new(),
                &node(),
                "",
            )
            .ok()
            .map(|c| c.stop_signal);
            assert_eq!(got, want.map(|s| s as i32), "{name:?}");
        }
        Ok(())
    }

    fn container_sc(spec: Value) -> Result<v1::LinuxContainerSecurityContext> {
        let pod = pod_with(spec);
        let cfg = container_config(
            &pod,
            first(&pod),
            ContainerKind::Regular,
            0,
            "i",
            Vec::new(),
            &node(),
            "",
        )?;
        Ok(cfg
            .linux
            .and_then(|l| l.security_context)
            .unwrap_or_default())
    }

    #[test]
    fn container_security_contexts() -> Result<()> {
        use v1::security_profile::ProfileType;
        let sc = container_sc(json!({
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": true, "fsGroup": 5,
                                "seccompProfile": {"type": "RuntimeDefault"},
                                "appArmorProfile": {"type": "Localhost", "localhostProfile": "pod-prof"}},
            "containers": [{"name": "app", "image": "x", "securityContext": {
                "runAsGroup": 7, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/a.json"},
            }}],
        }))?;
        assert_eq!(sc.run_as_user.map(|v| v.value), Some(1000), "pod default");
        assert_eq!(sc.run_as_group.map(|v| v.value), Some(7));
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        assert_eq!(sc.supplemental_groups, [5]);
        let caps = sc.capabilities.unwrap_or_default();
        assert_eq!(
            (caps.add_capabilities, caps.drop_capabilities),
            (vec!["NET_ADMIN".to_string()], vec!["ALL".to_string()])
        );
        let seccomp = sc.seccomp.unwrap_or_default();
        assert_eq!(
            seccomp.profile_type,
            ProfileType::Localhost as i32,
            "container over pod"
        );
        assert_eq!(
            seccomp.localhost_ref,
            "/var/lib/nodelet/seccomp/profiles/a.json"
        );
        let apparmor = sc.apparmor.unwrap_or_default();
        assert_eq!(
            (apparmor.profile_type, apparmor.localhost_ref.as_str()),
            (ProfileType::Localhost as i32, "pod-prof")
        );
        assert!(sc.masked_paths.is_empty() && sc.readonly_paths.is_empty());

        // The legacy annotation, between the container's field and the pod's.
        let annotated = |annotation: &str,
                         pod_sc: Value,
                         ctr_sc: Value|
         -> Result<Option<v1::SecurityProfile>> {
            let mut pod = pod_with(json!({"securityContext": pod_sc,
                "containers": [{"name": "app", "image": "x", "securityContext": ctr_sc}]}));
            pod.metadata.annotations.get_or_insert_default().insert(
                "container.apparmor.security.beta.kubernetes.io/app".into(),
                annotation.into(),
            );
            let cfg = container_config(
                &pod,
                first(&pod),
                ContainerKind::Regular,
                0,
                "img",
                vec![],
                &node(),
                "",
            )?;
            #[allow(deprecated)]
            let sc = cfg
                .linux
                .and_then(|l| l.security_context)
                .unwrap_or_default();
            #[allow(deprecated)]
            let legacy = sc.apparmor_profile.clone();
            if let Some(p) = &sc.apparmor {
                assert_eq!(legacy, deprecated_apparmor_name(p));
            }
            Ok(sc.apparmor)
        };
        let pod_level = json!({"appArmorProfile": {"type": "RuntimeDefault"}});
        let local = annotated("localhost/mine", pod_level.clone(), json!({}))?.unwrap_or_default();
        assert_eq!(
            (local.profile_type, local.localhost_ref.as_str()),
            (ProfileType::Localhost as i32, "mine"),
            "the annotation over the pod's field"
        );
        let own = annotated(
            "localhost/mine",
            json!({}),
            json!({"appArmorProfile": {"type": "Unconfined"}}),
        )?;
        assert_eq!(
            own.map(|p| p.profile_type),
            Some(ProfileType::Unconfined as i32)
        );
        let rd = annotated("runtime/default", json!({}), json!({}))?;
        assert_eq!(
            rd.map(|p| p.profile_type),
            Some(ProfileType::RuntimeDefault as i32)
        );
        let err = annotated("bogus", json!({}), json!({})).expect_err("bad annotation");
        assert!(
            err.to_string()
                .contains("container.apparmor.security.beta.kubernetes.io/app"),
            "{err}"
        );

        let sc = container_sc(json!({}))?;
        assert_eq!(
            sc.seccomp.map(|s| s.profile_type),
            Some(ProfileType::Unconfined as i32)
        );
        assert!(sc.apparmor.is_none() && !sc.no_new_privs);

        let errors = [
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0}}),
            json!({"containers": [{"name": "app", "image": "x", "securityContext": {"runAsNonRoot": true, "runAsUser": 0}}]}),
            json!({"containers": [{"name": "app", "image": "x", "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}}]}),
            json!({"containers": [{"name": "app", "image": "x", "securityContext": {"procMount": "Unmasked"}}]}),
            json!({"containers": [{"name": "app", "image": "x", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "../x"}}}]}),
        ];
        for spec in errors {
            assert!(container_sc(spec.clone()).is_err(), "{spec}");
        }
        Ok(())
    }

    #[test]
    fn image_user_fills_a_group_without_a_user() -> Result<()> {
        let config = |pod_sc: serde_json::Value| -> Result<v1::ContainerConfig> {
            let pod = pod_with(json!({"securityContext": pod_sc}));
            container_config(
                &pod,
                first(&pod),
                ContainerKind::Regular,
                0,
                "img",
                vec![],
                &node(),
                "",
            )
        };
        let sc = |c: &v1::ContainerConfig| {
            c.linux
                .clone()
                .and_then(|l| l.security_context)
                .unwrap_or_default()
        };
        // (pod securityContext, image uid, image user name, runAsUser, runAsUsername)
        let cases = [
            (json!({"runAsGroup": 7}), Some(1000), "", Some(1000), ""),
            (json!({"runAsGroup": 7}), None, "app", None, "app"),
            (
                json!({"runAsGroup": 7, "runAsUser": 5}),
                Some(1000),
                "",
                Some(5),
                "",
            ),
            (json!({}), Some(1000), "", None, ""),
        ];
        for (pod_sc, uid, name, want_uid, want_name) in cases {
            let mut c = config(pod_sc.clone())?;
            apply_image_user(&mut c, uid, name);
            let got = sc(&c);
            assert_eq!(got.run_as_user.map(|v| v.value), want_uid, "{pod_sc}");
            assert_eq!(got.run_as_username, want_name, "{pod_sc}");
        }
        Ok(())
    }

    #[test]
    fn run_as_non_root_with_image_user() {
        let pod = pod_with(json!({"securityContext": {"runAsNonRoot": true}}));
        let c = first(&pod);
        assert!(verify_run_as_non_root(&pod, c, Some(1000), "").is_ok());
        assert!(verify_run_as_non_root(&pod, c, Some(0), "").is_err());
        assert!(verify_run_as_non_root(&pod, c, None, "").is_err());
        assert!(verify_run_as_non_root(&pod, c, None, "nobody").is_err());
        let plain = pod_with(json!({}));
        assert!(verify_run_as_non_root(&plain, first(&plain), Some(0), "").is_ok());
    }

    #[test]
    fn invalid_pods_name_the_field() {
        let no_uid =
            pod_from(json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}}));
        let err = sandbox_config(&no_uid, &node(), 0, Path::new("/l")).expect_err("uid");
        assert!(err.to_string().contains("metadata.uid"), "{err}");
        let bad_qty = pod_with(
            json!({"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "lots"}}}]}),
        );
        let err = sandbox_config(&bad_qty, &node(), 0, Path::new("/l")).expect_err("quantity");
        assert!(
            err.to_string()
                .contains("containers[a].resources.limits.cpu"),
            "{err}"
        );
    }

    #[test]
    fn go_quoting_of_maps() {
        let map: BTreeMap<String, String> = [
            ("b".to_string(), "two\nlines".to_string()),
            ("a".to_string(), "q\"uote\\".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            format_map(Some(&map)),
            "a=\"q\\\"uote\\\\\"\nb=\"two\\nlines\""
        );
        assert_eq!(format_map(None), "");
        // Key order: "a" before "a.b", though "a.b=" sorts before "a=" as text.
        let prefix: BTreeMap<String, String> = [("a.b", "1"), ("a", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(format_map(Some(&prefix)), "a=\"2\"\na.b=\"1\"");
    }
}
