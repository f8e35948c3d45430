//! The node's pod cgroups (cgroupfs driver), laid out and sized as the upstream kubelet
//! does, so that a pod's containers are bounded together whatever the runtime:
//!
//! ```text
//! <root>                       node allocatable: cpu shares and memory of the node
//! <root>/pod<uid>              a Guaranteed pod
//! <root>/burstable             shares = the Burstable pods' summed cpu requests
//! <root>/burstable/pod<uid>
//! <root>/besteffort            the least shares (2)
//! <root>/besteffort/pod<uid>
//! ```
//!
//! A pod cgroup is created with the pod's limits ([`translate::pod_resources`]) before
//! its sandbox, and removed once the pod is terminated and its sandboxes are gone: the
//! runtime only makes and removes the container cgroups below it. Directories and files
//! are handled through `cgroups-rs` (v1 hierarchies found from mountinfo, cpuset copied
//! from the parent, v2 controllers enabled down the path).

use cgroups_rs::cgroup::Cgroup;
use cgroups_rs::hierarchies;
use cgroups_rs::{CgroupPid, HugePageResource, Resources};
use k8s_openapi::api::core::v1::Pod;

use crate::translate::{self, NodeInfo, QosClass};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {path}: {what}: {source}")]
    Cgroup {
        path: String,
        what: &'static str,
        #[source]
        source: cgroups_rs::error::Error,
    },
    #[error(transparent)]
    Translate(#[from] translate::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// The node's pod cgroups under one root (`NodeInfo::cgroup_root`, e.g. `/kubepods`).
#[derive(Debug, Clone)]
pub struct PodCgroups {
    root: String,
    /// `podPidsLimit`: the most processes one pod may have.
    pids_limit: Option<i64>,
}

const CLASSES: [QosClass; 3] = [
    QosClass::Guaranteed,
    QosClass::Burstable,
    QosClass::BestEffort,
];

/// A cgroup path as `cgroups-rs` takes it: relative to the hierarchy's root.
fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

impl PodCgroups {
    pub fn new(cgroup_root: &str) -> Self {
        Self {
            root: cgroup_root.to_string(),
            pids_limit: None,
        }
    }

    /// Every pod cgroup limited to `limit` processes (`--pod-max-pids`); 0 or less: none.
    pub fn with_pids_limit(mut self, limit: i64) -> Self {
        self.pids_limit = (limit > 0).then_some(limit);
        self
    }

    fn tier(&self, class: QosClass) -> String {
        translate::qos_cgroup(&self.root, class)
    }

    /// Creates the node cgroup (cpu shares of the node's cpus, memory limited to what
    /// the node has) and the Burstable and BestEffort tiers under it.
    pub fn ensure_node(&self, node: &NodeInfo) -> Result<()> {
        let mut res = Resources::default();
        res.cpu.shares = Some(shares_for(node.cpu_millis));
        if node.memory_bytes > 0 {
            res.memory.memory_hard_limit = Some(node.memory_bytes);
        }
        create(&self.tier(QosClass::Guaranteed), &res)?;
        create(&self.tier(QosClass::Burstable), &Resources::default())?;
        let mut least = Resources::default();
        least.cpu.shares = Some(weight_of(translate::MIN_SHARES));
        create(&self.tier(QosClass::BestEffort), &least)
    }

    /// The Burstable tier's cpu shares: the summed cpu requests of the Burstable pods, so
    /// that the tier competes with Guaranteed pods for what its pods asked for.
    pub fn set_burstable_shares<'a>(&self, pods: impl IntoIterator<Item = &'a Pod>) -> Result<()> {
        let mut milli = 0i64;
        for pod in pods {
            if translate::qos_class(pod) == QosClass::Burstable {
                milli = milli.saturating_add(translate::pod_cpu_request_millis(pod));
            }
        }
        let mut res = Resources::default();
        res.cpu.shares = Some(shares_for(milli));
        let path = self.tier(QosClass::Burstable);
        set(&Cgroup::load(hierarchies::auto(), rel(&path)), &path, &res)
    }

    /// The cgroup of a pod, created or updated with the pod's limits.
    pub fn ensure_pod(&self, pod: &Pod, node: &NodeInfo) -> Result<()> {
        let want = translate::pod_resources(pod, node)?;
        let path = translate::pod_cgroup_parent(pod, node);
        let mut res = Resources::default();
        res.cpu.shares = Some(weight_of(
            i64::try_from(want.cpu_shares).unwrap_or(i64::MAX),
        ));
        if let Some(quota) = want.cpu_quota {
            res.cpu.period = Some(translate::PodResources::CPU_PERIOD);
            res.cpu.quota = Some(quota);
        }
        res.memory.memory_hard_limit = want.memory_limit;
        res.pid.maximum_number_of_processes = self.pids_limit.map(cgroups_rs::MaxValue::Value);
        res.hugepages.limits = want
            .hugepage_limits
            .iter()
            .map(|(size, limit)| HugePageResource {
                size: size.clone(),
                limit: u64::try_from(*limit).unwrap_or(0),
            })
            .collect();
        create(&path, &res)
    }

    /// The UIDs that have a pod cgroup here (in whichever tier).
    pub fn pod_uids(&self) -> Vec<String> {
        let hier = hierarchies::auto();
        let mut out = Vec::new();
        for class in CLASSES {
            let dir = dir_of(hier.as_ref(), rel(&self.tier(class)));
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if let Some(uid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("pod"))
                    && entry.path().is_dir()
                {
                    out.push(uid.to_string());
                }
            }
        }
        out
    }

    /// Removes the pod's cgroup wherever it is, killing what still runs in it (nothing
    /// should, once its sandboxes are removed). Blocks briefly while the kernel lets go
    /// of killed processes; call from a blocking context.
    pub fn remove_pod(&self, uid: &str) -> Result<()> {
        for class in CLASSES {
            let path = format!("{}/pod{uid}", self.tier(class));
            let path = rel(&path);
            let hier = hierarchies::auto();
            let dir = dir_of(hier.as_ref(), path);
            let root = hier.root();
            let cg = Cgroup::load(hier, path);
            if !cg.exists() {
                continue;
            }
            let procs = all_procs(&cg, &dir);
            if !procs.is_empty() {
                tracing::warn!(cgroup = %path, count = procs.len(), "killing processes left in a removed pod's cgroup");
                for pid in procs {
                    let pid = nix::unistd::Pid::from_raw(pid.pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            if cg.v2() {
                remove_children_v2(&dir);
            }
            cg.delete().map_err(|source| Error::Cgroup {
                path: path.to_string(),
                what: "removing",
                source,
            })?;
            // A hybrid host (v1 controllers, a cgroup2 mount with none): the runtime
            // made the pod's directory there too, for process tracking.
            let unified = root.join("unified").join(path);
            if !cg.v2() && unified.is_dir() {
                remove_children_v2(&unified);
                if let Err(e) = std::fs::remove_dir(&unified) {
                    tracing::warn!(cgroup = %unified.display(), err = %e, "removing a pod cgroup");
                }
            }
            tracing::info!(pod.uid = %uid, cgroup = %path, "pod cgroup removed");
        }
        Ok(())
    }
}

/// Where a cgroup's directory is: in the one v2 hierarchy, or on v1 in the cpu
/// hierarchy (there on every node) as the one to list and search.
fn dir_of(hier: &dyn cgroups_rs::Hierarchy, path: &str) -> std::path::PathBuf {
    if hier.v2() {
        hier.root().join(path)
    } else {
        hier.root().join("cpu").join(path)
    }
}

/// Every process in the cgroup (`dir` from [`dir_of`]) and below it (container cgroups
/// the runtime left).
fn all_procs(cg: &Cgroup, dir: &std::path::Path) -> Vec<CgroupPid> {
    let mut out = cg.procs();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                if let Ok(text) = std::fs::read_to_string(p.join("cgroup.procs")) {
                    out.extend(
                        text.lines()
                            .filter_map(|l| l.trim().parse::<u64>().ok())
                            .map(CgroupPid::from),
                    );
                }
                stack.push(p);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// cgroup2 removes one directory at a time: the leaves first.
fn remove_children_v2(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            remove_children_v2(&p);
            if let Err(e) = std::fs::remove_dir(&p) {
                tracing::warn!(cgroup = %p.display(), err = %e, "removing a child of a pod cgroup");
            }
        }
    }
}

fn create(path: &str, res: &Resources) -> Result<()> {
    let cg = Cgroup::new(hierarchies::auto(), rel(path)).map_err(|source| Error::Cgroup {
        path: path.to_string(),
        what: "creating",
        source,
    })?;
    set(&cg, path, res)
}

fn set(cg: &Cgroup, path: &str, res: &Resources) -> Result<()> {
    cg.apply(res).map_err(|source| Error::Cgroup {
        path: path.to_string(),
        what: "setting limits",
        source,
    })
}

/// The cpu shares of `milli` millicores, as the hierarchy spells them.
fn shares_for(milli: i64) -> u64 {
    weight_of(translate::milli_cpu_to_shares(milli))
}

/// cpu shares as the hierarchy spells them: `cpu.shares` on v1, `cpu.weight` (1–10000)
/// on v2 by the conversion runc and the kubelet use.
fn weight_of(shares: i64) -> u64 {
    let shares = u64::try_from(shares).unwrap_or(0);
    if hierarchies::is_cgroup2_unified_mode() {
        shares_to_weight(shares)
    } else {
        shares
    }
}

fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the host's real cgroup hierarchy, under a root of the test's own; skipped
    /// (with the reason) where cgroups cannot be written.
    #[test]
    fn pod_cgroups_on_the_host() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to write cgroups");
            return;
        }
        let v2 = hierarchies::is_cgroup2_unified_mode();
        let root = format!("pods-test-{}/kubepods", std::process::id());
        let cgroups = PodCgroups::new(&format!("/{root}")).with_pids_limit(64);
        let node = NodeInfo {
            cgroup_root: format!("/{root}"),
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ..Default::default()
        };
        let pod = |uid: &str, resources: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "uid": uid},
                "spec": {"containers": [{"name": "a", "image": "x", "resources": resources}]},
            }))
            .expect("a pod")
        };
        let guaranteed = pod(
            "g1",
            serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}}),
        );
        let burstable = pod("b1", serde_json::json!({"requests": {"cpu": "250m"}}));
        let file = |controller: &str, rel: &str, name: &str| {
            let base = hierarchies::auto().root();
            let dir = if v2 {
                base.join(rel)
            } else {
                base.join(controller).join(rel)
            };
            std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string())
        };
        let check = || -> std::result::Result<(), String> {
            cgroups.ensure_node(&node).map_err(|e| e.to_string())?;
            cgroups
                .ensure_pod(&guaranteed, &node)
                .map_err(|e| e.to_string())?;
            cgroups
                .ensure_pod(&burstable, &node)
                .map_err(|e| e.to_string())?;
            cgroups
                .set_burstable_shares([&guaranteed, &burstable])
                .map_err(|e| e.to_string())?;
            let g = format!("{root}/podg1");
            let read = |c: &str, rel: &str, name: &str| {
                file(c, rel, name).map_err(|e| format!("{rel}/{name}: {e}"))
            };
            if v2 {
                assert_eq!(read("", &g, "cpu.max")?, "50000 100000");
                assert_eq!(read("", &g, "memory.max")?, (64u64 << 20).to_string());
                assert_eq!(read("", &g, "cpu.weight")?, "20", "512 shares");
                assert_eq!(read("", &g, "pids.max")?, "64");
                assert_eq!(read("", &format!("{root}/besteffort"), "cpu.weight")?, "1");
                assert_eq!(
                    read("", &format!("{root}/burstable"), "cpu.weight")?,
                    "10",
                    "256 shares"
                );
            } else {
                assert_eq!(read("cpu", &g, "cpu.cfs_quota_us")?, "50000");
                assert_eq!(read("cpu", &g, "cpu.shares")?, "512");
                assert_eq!(
                    read("memory", &g, "memory.limit_in_bytes")?,
                    (64u64 << 20).to_string()
                );
                assert_eq!(
                    read("cpu", &format!("{root}/besteffort"), "cpu.shares")?,
                    "2"
                );
                assert_eq!(
                    read("cpu", &format!("{root}/burstable"), "cpu.shares")?,
                    "256"
                );
                assert_eq!(
                    read("cpu", &format!("{root}/burstable/podb1"), "cpu.shares")?,
                    "256"
                );
                assert_eq!(read("cpu", &root, "cpu.shares")?, "2048");
                assert_eq!(read("pids", &g, "pids.max")?, "64");
                assert_eq!(
                    read("memory", &root, "memory.limit_in_bytes")?,
                    (1u64 << 30).to_string()
                );
                // The runtime puts containers below: cpuset must be usable there.
                assert_ne!(
                    read("cpuset", &g, "cpuset.cpus")?,
                    "",
                    "cpuset copied from the parent"
                );
            }
            // What still runs in a removed pod's cgroup is killed.
            let mut straggler = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .map_err(|e| e.to_string())?;
            Cgroup::load(hierarchies::auto(), g.as_str())
                .add_task_by_tgid(CgroupPid::from(u64::from(straggler.id())))
                .map_err(|e| e.to_string())?;
            let mut uids = cgroups.pod_uids();
            uids.sort();
            assert_eq!(uids, vec!["b1".to_string(), "g1".to_string()]);
            cgroups.remove_pod("g1").map_err(|e| e.to_string())?;
            let ended = straggler.wait().map_err(|e| e.to_string())?;
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&ended),
                Some(9),
                "killed"
            );
            cgroups.remove_pod("b1").map_err(|e| e.to_string())?;
            cgroups
                .remove_pod("never-made")
                .map_err(|e| e.to_string())?;
            assert!(cgroups.pod_uids().is_empty(), "pod cgroups removed");
            assert!(
                file("memory", &g, "cgroup.procs").is_err(),
                "gone from every hierarchy"
            );
            Ok(())
        };
        let outcome = check();
        for path in [
            format!("{root}/burstable"),
            format!("{root}/besteffort"),
            root.clone(),
            format!("pods-test-{}", std::process::id()),
        ] {
            let _ = Cgroup::load(hierarchies::auto(), path.as_str()).delete();
        }
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }

    #[test]
    fn weights_from_shares() {
        for (shares, weight) in [(2, 1), (1024, 39), (262_144, 10_000), (102, 4), (1, 1)] {
            assert_eq!(shares_to_weight(shares), weight, "{shares} shares");
        }
    }
}
