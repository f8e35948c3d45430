//! Facts about this node: name, address, allocatable CPU and memory.

use std::path::Path;

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

pub fn info(
    node_name: &str,
    root_dir: &Path,
    cluster_dns: Vec<String>,
    cluster_domain: String,
    seccomp_default: bool,
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
        host_dns: std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .map(|t| pods::translate::parse_resolv_conf(&t)),
        seccomp_profile_root: root_dir.join("seccomp").to_string_lossy().into_owned(),
        seccomp_default,
    }
}
