//! `ContainerStats`, `ListContainerStats`, `PodSandboxStats`, `ListPodSandboxStats`:
//! cgroup usage, the writable layer's size, and the pod's network counters.

use proto::v1;

use super::{Container, Result, Runtime, Sandbox, cgroups, labels_match, now_ns};

/// One CPU reading, kept to turn the next one into a rate (nano cores).
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at_ns: i64,
    cpu_ns: u64,
}

fn value(v: u64) -> Option<v1::UInt64Value> {
    Some(v1::UInt64Value { value: v })
}

impl Runtime {
    /// CPU and memory of one cgroup, with the CPU rate since the previous reading.
    fn cgroup_usage(&self, path: &str) -> (Option<v1::CpuUsage>, Option<v1::MemoryUsage>) {
        let Some(u) = cgroups::usage(path) else {
            return (None, None);
        };
        let at = now_ns();
        let rate = {
            let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
            let prev = samples.insert(
                path.to_string(),
                CpuSample {
                    at_ns: at,
                    cpu_ns: u.cpu_ns,
                },
            );
            prev.and_then(|p| {
                let dt = at.checked_sub(p.at_ns).filter(|d| *d > 0)? as u128;
                let du = u.cpu_ns.checked_sub(p.cpu_ns)? as u128;
                Some((du * 1_000_000_000 / dt) as u64)
            })
        };
        (
            Some(v1::CpuUsage {
                timestamp: at,
                usage_core_nano_seconds: value(u.cpu_ns),
                usage_nano_cores: rate.and_then(value),
                psi: None,
            }),
            Some(v1::MemoryUsage {
                timestamp: at,
                working_set_bytes: value(u.working_set_bytes),
                available_bytes: None,
                usage_bytes: value(u.memory_bytes),
                rss_bytes: value(u.rss_bytes),
                page_faults: value(u.page_faults),
                major_page_faults: value(u.major_page_faults),
                psi: None,
            }),
        )
    }

    fn stats_of(&self, c: &Container) -> v1::ContainerStats {
        let (cpu, memory) = if c.running() {
            self.cgroup_usage(&c.cgroups_path)
        } else {
            (None, None)
        };
        let upper = self.containers.dir_of(&c.id).join("upper");
        let (bytes, inodes) = crate::image::layers::dir_usage(&upper);
        v1::ContainerStats {
            attributes: Some(v1::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu,
            memory,
            writable_layer: Some(v1::FilesystemUsage {
                timestamp: now_ns(),
                fs_id: Some(v1::FilesystemIdentifier {
                    mountpoint: self.cfg.root.to_string_lossy().into_owned(),
                }),
                used_bytes: value(bytes),
                inodes_used: value(inodes),
            }),
            swap: None,
            io: None,
        }
    }

    /// The filesystem of the containers' writable layers (ImageFsInfo's
    /// `container_filesystems`): every container's upper directory, on the same
    /// filesystem id as each container's `writable_layer`.
    pub fn writable_layers_usage(&self) -> v1::FilesystemUsage {
        let (mut bytes, mut inodes) = (0, 0);
        for c in self.containers.list() {
            let (b, i) =
                crate::image::layers::dir_usage(&self.containers.dir_of(&c.id).join("upper"));
            bytes += b;
            inodes += i;
        }
        v1::FilesystemUsage {
            timestamp: now_ns(),
            fs_id: Some(v1::FilesystemIdentifier {
                mountpoint: self.cfg.root.to_string_lossy().into_owned(),
            }),
            used_bytes: value(bytes),
            inodes_used: value(inodes),
        }
    }

    pub fn container_stats(&self, id: &str) -> Result<v1::ContainerStats> {
        Ok(self.stats_of(&self.containers.get(id)?))
    }

    pub fn list_container_stats(
        &self,
        f: Option<&v1::ContainerStatsFilter>,
    ) -> Vec<v1::ContainerStats> {
        self.containers
            .list()
            .into_iter()
            .filter(|c| c.running())
            .filter(|c| match f {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                        && labels_match(&c.config.labels, &f.label_selector)
                }
            })
            .map(|c| self.stats_of(&c))
            .collect()
    }

    fn sandbox_stats_of(&self, sb: &Sandbox) -> v1::PodSandboxStats {
        let containers: Vec<v1::ContainerStats> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| c.sandbox_id == sb.id && c.running())
            .map(|c| self.stats_of(&c))
            .collect();
        // The pod's usage is its containers' plus the infra process's: summed from the
        // containers' cgroups and the infra's, since the parent may be shared.
        let (infra_cpu, infra_mem) = self.cgroup_usage(&format!(
            "{}/{}",
            sb.cgroup_parent.trim_end_matches('/'),
            sb.id
        ));
        let at = now_ns();
        let sum = |get: &dyn Fn(&v1::ContainerStats) -> Option<u64>, infra: Option<u64>| {
            containers.iter().filter_map(get).chain(infra).sum::<u64>()
        };
        let cpu = v1::CpuUsage {
            timestamp: at,
            usage_core_nano_seconds: value(sum(
                &|c| {
                    c.cpu
                        .as_ref()?
                        .usage_core_nano_seconds
                        .as_ref()
                        .map(|v| v.value)
                },
                infra_cpu
                    .as_ref()
                    .and_then(|c| c.usage_core_nano_seconds.as_ref())
                    .map(|v| v.value),
            )),
            usage_nano_cores: value(sum(
                &|c| c.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value),
                infra_cpu
                    .as_ref()
                    .and_then(|c| c.usage_nano_cores.as_ref())
                    .map(|v| v.value),
            )),
            psi: None,
        };
        let memory = v1::MemoryUsage {
            timestamp: at,
            working_set_bytes: value(sum(
                &|c| {
                    c.memory
                        .as_ref()?
                        .working_set_bytes
                        .as_ref()
                        .map(|v| v.value)
                },
                infra_mem
                    .as_ref()
                    .and_then(|m| m.working_set_bytes.as_ref())
                    .map(|v| v.value),
            )),
            usage_bytes: value(sum(
                &|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value),
                infra_mem
                    .as_ref()
                    .and_then(|m| m.usage_bytes.as_ref())
                    .map(|v| v.value),
            )),
            ..Default::default()
        };
        v1::PodSandboxStats {
            attributes: Some(v1::PodSandboxAttributes {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
            }),
            linux: Some(v1::LinuxPodSandboxStats {
                cpu: Some(cpu),
                memory: Some(memory),
                network: sb.ready().then(|| network_usage(sb)).flatten(),
                process: Some(v1::ProcessUsage {
                    timestamp: at,
                    process_count: value(
                        containers.len() as u64 + u64::from(sb.ready() && !sb.pinned),
                    ),
                }),
                containers,
                io: None,
            }),
            windows: None,
        }
    }

    pub fn pod_sandbox_stats(&self, id: &str) -> Result<v1::PodSandboxStats> {
        Ok(self.sandbox_stats_of(&self.sandboxes.get(id)?))
    }

    pub fn list_pod_sandbox_stats(
        &self,
        f: Option<&v1::PodSandboxStatsFilter>,
    ) -> Vec<v1::PodSandboxStats> {
        self.sandboxes
            .list()
            .into_iter()
            .filter(|sb| sb.ready())
            .filter(|sb| match f {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || sb.id.starts_with(&f.id))
                        && labels_match(&sb.config.labels, &f.label_selector)
                }
            })
            .map(|sb| self.sandbox_stats_of(&sb))
            .collect()
    }
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Interface counters inside the pod's network namespace (`lo` left out): /proc/net/dev
/// as the infra process sees it, or read from inside the pinned namespace.
pub(super) fn interface_counters(sb: &super::Sandbox) -> Option<Vec<InterfaceCounters>> {
    let text = if sb.pinned {
        super::netns::read_proc_net(sb.netns.as_deref()?, "dev").ok()?
    } else {
        std::fs::read_to_string(format!("/proc/{}/net/dev", sb.infra_pid)).ok()?
    };
    Some(parse_net_dev(&text))
}

fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() >= 16).then(|| InterfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_errors: f[2],
                rx_dropped: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_dropped: f[11],
            })
        })
        .filter(|i| i.name != "lo")
        .collect()
}

/// The pod's network usage for PodSandboxStats.
fn network_usage(sb: &super::Sandbox) -> Option<v1::NetworkUsage> {
    let interfaces: Vec<v1::NetworkInterfaceUsage> = interface_counters(sb)?
        .into_iter()
        .map(|i| v1::NetworkInterfaceUsage {
            name: i.name,
            rx_bytes: value(i.rx_bytes),
            rx_errors: value(i.rx_errors),
            tx_bytes: value(i.tx_bytes),
            tx_errors: value(i.tx_errors),
        })
        .collect();
    Some(v1::NetworkUsage {
        timestamp: now_ns(),
        default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
        interfaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parses_every_counter() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
             eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0\n";
        let got = parse_net_dev(text);
        assert_eq!(
            got,
            [InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 3000,
                tx_packets: 30,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
    }
}
