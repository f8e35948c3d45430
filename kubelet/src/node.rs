//! Facts about this node: name, address, allocatable CPU and memory, the resolver file;
//! and, in a cluster, the Node object ([`register`]) and its Lease ([`lease`]).

pub mod lease;
pub mod register;

use std::path::{Path, PathBuf};

use pods::translate::NodeInfo;

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The node's first non-loopback IPv4 address that is up (127.0.0.1 on a node without
/// one).
pub fn host_ip() -> String {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return "127.0.0.1".into();
    };
    for a in addrs {
        let up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        let loopback = a
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
        if !up || loopback {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return sin.ip().to_string();
        }
    }
    "127.0.0.1".into()
}

fn memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Where systemd-resolved keeps the real upstream servers behind its 127.0.0.53 stub.
const SYSTEMD_RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// The resolver file pods with `dnsPolicy: Default` (and the search list of
/// ClusterFirst) start from: `--resolv-conf`/`resolvConf` when given ("" for none), else
/// /etc/resolv.conf; but when that only names loopback servers (systemd-resolved's
/// 127.0.0.53 stub, which is unreachable from a pod's network namespace) and
/// systemd-resolved's upstream list exists, that list, as k3s does.
pub fn resolv_conf(explicit: Option<&Path>) -> Option<PathBuf> {
    resolv_conf_in(
        explicit,
        Path::new("/etc/resolv.conf"),
        Path::new(SYSTEMD_RESOLVED_UPSTREAM),
    )
}

fn resolv_conf_in(explicit: Option<&Path>, default: &Path, resolved: &Path) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
    }
    let only_loopback = |p: &Path| {
        std::fs::read_to_string(p).is_ok_and(|t| {
            let servers = pods::translate::parse_resolv_conf(&t).servers;
            !servers.is_empty()
                && servers.iter().all(|s| {
                    s.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
                })
        })
    };
    if only_loopback(default) && resolved.is_file() && !only_loopback(resolved) {
        tracing::info!(
            stub = %default.display(),
            using = %resolved.display(),
            "the node's resolv.conf only names a local stub resolver; pods get its upstream servers"
        );
        return Some(resolved.to_path_buf());
    }
    Some(default.to_path_buf())
}

/// Whether the node runs the unified cgroup v2 hierarchy at /sys/fs/cgroup.
fn cgroup_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").is_file()
}

/// How swap is kept from containers: by memory+swap on v1 when swap accounting is on,
/// by memory.swap.max on v2.
fn swap_control(root: &Path) -> pods::translate::SwapControl {
    use pods::translate::SwapControl;
    if cgroup_v2(root) {
        SwapControl::V2
    } else if root.join("memory/memory.memsw.limit_in_bytes").is_file() {
        SwapControl::V1
    } else {
        SwapControl::Unavailable
    }
}

/// The huge page sizes of the node (`/sys/kernel/mm/hugepages/hugepages-2048kB` → `2MB`),
/// when the hugetlb controller can limit them (it is missing from some hybrid layouts).
fn hugepage_sizes(cgroup_root: &Path, mm: &Path) -> Vec<String> {
    let controller = if cgroup_v2(cgroup_root) {
        std::fs::read_to_string(cgroup_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "hugetlb"))
    } else {
        cgroup_root.join("hugetlb").is_dir()
    };
    if !controller {
        return Vec::new();
    }
    let mut sizes: Vec<(i128, String)> = std::fs::read_dir(mm)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kib: i128 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some((kib, pods::translate::hugepage_size_name(kib * 1024)))
        })
        .collect();
    sizes.sort();
    sizes.into_iter().map(|(_, s)| s).collect()
}

pub fn info(
    node_name: &str,
    root_dir: &Path,
    cluster_dns: Vec<String>,
    cluster_domain: String,
    seccomp_default: bool,
    resolv_conf: Option<&Path>,
) -> NodeInfo {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    NodeInfo {
        node_name: node_name.to_string(),
        host_ip: host_ip(),
        cpu_millis: cpus * 1000,
        memory_bytes: memory_bytes(),
        cgroup_root: "/kubepods".into(),
        cluster_dns,
        cluster_domain,
        host_dns: resolv_conf.and_then(|p| match std::fs::read_to_string(p) {
            Ok(t) => Some(pods::translate::parse_resolv_conf(&t)),
            Err(e) => {
                tracing::warn!(path = %p.display(), err = %e, "reading the resolver file for pods");
                None
            }
        }),
        seccomp_profile_root: root_dir.join("seccomp").to_string_lossy().into_owned(),
        seccomp_default,
        hugepage_sizes: hugepage_sizes(
            Path::new("/sys/fs/cgroup"),
            Path::new("/sys/kernel/mm/hugepages"),
        ),
        swap: swap_control(Path::new("/sys/fs/cgroup")),
        no_qos_cgroups: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_facts() -> std::io::Result<()> {
        use pods::translate::SwapControl;
        let tmp = tempfile::tempdir()?;
        let (cg, mm) = (tmp.path().join("cgroup"), tmp.path().join("mm"));
        std::fs::create_dir_all(cg.join("memory"))?;
        for d in ["hugepages-2048kB", "hugepages-1048576kB"] {
            std::fs::create_dir_all(mm.join(d))?;
        }
        // v1 without hugetlb or swap accounting.
        assert_eq!(swap_control(&cg), SwapControl::Unavailable);
        assert!(hugepage_sizes(&cg, &mm).is_empty());
        std::fs::write(cg.join("memory/memory.memsw.limit_in_bytes"), "")?;
        std::fs::create_dir(cg.join("hugetlb"))?;
        assert_eq!(swap_control(&cg), SwapControl::V1);
        assert_eq!(hugepage_sizes(&cg, &mm), ["2MB", "1GB"]);
        // v2.
        let v2 = tmp.path().join("v2");
        std::fs::create_dir(&v2)?;
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory pids\n")?;
        assert_eq!(swap_control(&v2), SwapControl::V2);
        assert!(hugepage_sizes(&v2, &mm).is_empty());
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory hugetlb pids\n")?;
        assert_eq!(hugepage_sizes(&v2, &mm), ["2MB", "1GB"]);
        Ok(())
    }

    #[test]
    fn resolver_file_for_pods() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let etc = tmp.path().join("resolv.conf");
        let resolved = tmp.path().join("resolved.conf");
        std::fs::write(&etc, "nameserver 127.0.0.53\noptions edns0\n")?;
        // The stub without systemd-resolved's list: kept (nothing better to use).
        assert_eq!(resolv_conf_in(None, &etc, &resolved), Some(etc.clone()));
        std::fs::write(&resolved, "nameserver 192.0.2.53\nsearch lan\n")?;
        assert_eq!(
            resolv_conf_in(None, &etc, &resolved),
            Some(resolved.clone())
        );
        // A real server in /etc/resolv.conf: used as is.
        std::fs::write(&etc, "nameserver 127.0.0.53\nnameserver 192.0.2.1\n")?;
        assert_eq!(resolv_conf_in(None, &etc, &resolved), Some(etc.clone()));
        // Given explicitly: that file, or none.
        let mine = tmp.path().join("mine.conf");
        assert_eq!(
            resolv_conf_in(Some(&mine), &etc, &resolved),
            Some(mine.clone())
        );
        assert_eq!(resolv_conf_in(Some(Path::new("")), &etc, &resolved), None);
        Ok(())
    }
}
