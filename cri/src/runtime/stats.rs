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

/// Interface counters inside the pod's network namespace: /proc/net/dev as the infra
/// process sees it, or read from inside the pinned namespace.
fn network_usage(sb: &super::Sandbox) -> Option<v1::NetworkUsage> {
    let text = if sb.pinned {
        super::netns::read_proc_net(sb.netns.as_deref()?, "dev").ok()?
    } else {
        std::fs::read_to_string(format!("/proc/{}/net/dev", sb.infra_pid)).ok()?
    };
    let interfaces: Vec<v1::NetworkInterfaceUsage> = text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() >= 16).then(|| v1::NetworkInterfaceUsage {
                name: name.trim().to_string(),
                rx_bytes: value(f[0]),
                rx_errors: value(f[2]),
                tx_bytes: value(f[8]),
                tx_errors: value(f[10]),
            })
        })
        .filter(|i| i.name != "lo")
        .collect();
    Some(v1::NetworkUsage {
        timestamp: now_ns(),
        default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
        interfaces,
    })
}
