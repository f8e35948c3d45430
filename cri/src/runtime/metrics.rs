//! `ListMetricDescriptors`, `ListPodSandboxMetrics` (and the stream of it): the
//! cAdvisor-named metrics the kubelet serves at `/metrics/cadvisor` when it takes pod
//! and container stats from the CRI. Every metric we send is described; every value
//! comes from the same cgroup, writable-layer and `/proc/net/dev` readings as the stats
//! RPCs. Counters in seconds are whole seconds (the wire value is an integer), as
//! containerd sends them.

use proto::v1;

use super::stats::{InterfaceCounters, interface_counters};
use super::{Container, Runtime, Sandbox, cgroups, now_ns};

/// Labels of every container metric, in the order of `label_values`.
const LABELS: [&str; 5] = ["pod", "namespace", "container", "id", "image"];

/// How a metric's labels extend [`LABELS`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Device,
    Interface,
}

struct Def {
    name: &'static str,
    help: &'static str,
    kind: v1::MetricType,
    extra: Extra,
}

const fn def(name: &'static str, help: &'static str, kind: v1::MetricType, extra: Extra) -> Def {
    Def {
        name,
        help,
        kind,
        extra,
    }
}

use v1::MetricType::{Counter as Cumulative, Gauge};

const CPU_USAGE: Def = def(
    "container_cpu_usage_seconds_total",
    "Cumulative cpu time consumed in seconds.",
    Cumulative,
    Extra::None,
);
const MEMORY_USAGE: Def = def(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
    Gauge,
    Extra::None,
);
const MEMORY_WORKING_SET: Def = def(
    "container_memory_working_set_bytes",
    "Current working set in bytes.",
    Gauge,
    Extra::None,
);
const MEMORY_RSS: Def = def(
    "container_memory_rss",
    "Size of RSS in bytes.",
    Gauge,
    Extra::None,
);
const PROCESSES: Def = def(
    "container_processes",
    "Number of processes running inside the container.",
    Gauge,
    Extra::None,
);
const FS_USAGE: Def = def(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
    Gauge,
    Extra::Device,
);
const START_TIME: Def = def(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
    Gauge,
    Extra::None,
);
const LAST_SEEN: Def = def(
    "container_last_seen",
    "Last time a container was seen by the exporter",
    Gauge,
    Extra::None,
);
const SPEC_CPU_PERIOD: Def = def(
    "container_spec_cpu_period",
    "CPU period of the container.",
    Gauge,
    Extra::None,
);
const SPEC_CPU_QUOTA: Def = def(
    "container_spec_cpu_quota",
    "CPU quota of the container.",
    Gauge,
    Extra::None,
);
const SPEC_CPU_SHARES: Def = def(
    "container_spec_cpu_shares",
    "CPU share of the container.",
    Gauge,
    Extra::None,
);
const SPEC_MEMORY_LIMIT: Def = def(
    "container_spec_memory_limit_bytes",
    "Memory limit for the container.",
    Gauge,
    Extra::None,
);
const SPEC_SWAP_LIMIT: Def = def(
    "container_spec_memory_swap_limit_bytes",
    "Memory swap limit for the container.",
    Gauge,
    Extra::None,
);
const RX_BYTES: Def = def(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received",
    Cumulative,
    Extra::Interface,
);
const RX_PACKETS: Def = def(
    "container_network_receive_packets_total",
    "Cumulative count of packets received",
    Cumulative,
    Extra::Interface,
);
const RX_DROPPED: Def = def(
    "container_network_receive_packets_dropped_total",
    "Cumulative count of packets dropped while receiving",
    Cumulative,
    Extra::Interface,
);
const RX_ERRORS: Def = def(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving",
    Cumulative,
    Extra::Interface,
);
const TX_BYTES: Def = def(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted",
    Cumulative,
    Extra::Interface,
);
const TX_PACKETS: Def = def(
    "container_network_transmit_packets_total",
    "Cumulative count of packets transmitted",
    Cumulative,
    Extra::Interface,
);
const TX_DROPPED: Def = def(
    "container_network_transmit_packets_dropped_total",
    "Cumulative count of packets dropped while transmitting",
    Cumulative,
    Extra::Interface,
);
const TX_ERRORS: Def = def(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting",
    Cumulative,
    Extra::Interface,
);

/// Every metric [`Runtime::list_pod_sandbox_metrics`] may send.
const ALL: [&Def; 21] = [
    &CPU_USAGE,
    &MEMORY_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &PROCESSES,
    &FS_USAGE,
    &START_TIME,
    &LAST_SEEN,
    &SPEC_CPU_PERIOD,
    &SPEC_CPU_QUOTA,
    &SPEC_CPU_SHARES,
    &SPEC_MEMORY_LIMIT,
    &SPEC_SWAP_LIMIT,
    &RX_BYTES,
    &RX_PACKETS,
    &RX_DROPPED,
    &RX_ERRORS,
    &TX_BYTES,
    &TX_PACKETS,
    &TX_DROPPED,
    &TX_ERRORS,
];

/// Reads one counter of an interface.
type Counter = fn(&InterfaceCounters) -> u64;

const NETWORK: [(&Def, Counter); 8] = [
    (&RX_BYTES, |i| i.rx_bytes),
    (&RX_PACKETS, |i| i.rx_packets),
    (&RX_DROPPED, |i| i.rx_dropped),
    (&RX_ERRORS, |i| i.rx_errors),
    (&TX_BYTES, |i| i.tx_bytes),
    (&TX_PACKETS, |i| i.tx_packets),
    (&TX_DROPPED, |i| i.tx_dropped),
    (&TX_ERRORS, |i| i.tx_errors),
];

fn label_keys(d: &Def) -> Vec<String> {
    let mut keys: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
    match d.extra {
        Extra::None => {}
        Extra::Device => keys.push("device".into()),
        Extra::Interface => keys.push("interface".into()),
    }
    keys
}

/// The descriptors of every metric we send.
pub fn descriptors() -> Vec<v1::MetricDescriptor> {
    ALL.iter()
        .map(|d| v1::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: label_keys(d),
        })
        .collect()
}

fn metric(d: &Def, at: i64, labels: &[String], extra: Option<&str>, value: u64) -> v1::Metric {
    let mut label_values = labels.to_vec();
    label_values.extend(extra.map(str::to_string));
    v1::Metric {
        name: d.name.into(),
        timestamp: at,
        metric_type: d.kind as i32,
        label_values,
        value: Some(v1::UInt64Value { value }),
    }
}

impl Runtime {
    /// Metrics of every ready sandbox: its network counters, and each running
    /// container's cgroup, writable layer and limits.
    pub fn list_pod_sandbox_metrics(&self) -> Vec<v1::PodSandboxMetrics> {
        let containers = self.containers.list();
        self.sandboxes
            .list()
            .into_iter()
            .filter(Sandbox::ready)
            .map(|sb| {
                let running = containers
                    .iter()
                    .filter(|c| c.sandbox_id == sb.id && c.running());
                v1::PodSandboxMetrics {
                    pod_sandbox_id: sb.id.clone(),
                    metrics: pod_network_metrics(&sb),
                    container_metrics: running.map(|c| self.container_metrics(&sb, c)).collect(),
                }
            })
            .collect()
    }

    fn container_metrics(&self, sb: &Sandbox, c: &Container) -> v1::ContainerMetrics {
        let at = now_ns();
        let meta = sb.metadata();
        let image = c
            .config
            .image
            .as_ref()
            .map(|i| {
                if i.user_specified_image.is_empty() {
                    i.image.clone()
                } else {
                    i.user_specified_image.clone()
                }
            })
            .unwrap_or_default();
        let labels = [
            meta.name,
            meta.namespace,
            c.metadata().name,
            c.id.clone(),
            image,
        ];
        let mut out = Vec::new();
        let mut push = |d: &Def, value: u64| out.push(metric(d, at, &labels, None, value));
        if let Some(u) = cgroups::usage(&c.cgroups_path) {
            push(&CPU_USAGE, u.cpu_ns / 1_000_000_000);
            push(&MEMORY_USAGE, u.memory_bytes);
            push(&MEMORY_WORKING_SET, u.working_set_bytes);
            push(&MEMORY_RSS, u.rss_bytes);
            push(&PROCESSES, u.pids);
        }
        if let Some(started) = c.started_at_ns {
            push(
                &START_TIME,
                u64::try_from(started / 1_000_000_000).unwrap_or(0),
            );
        }
        push(&LAST_SEEN, u64::try_from(at / 1_000_000_000).unwrap_or(0));
        let r = &c.resources;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        for (d, v) in [
            (&SPEC_CPU_PERIOD, r.cpu_period),
            (&SPEC_CPU_QUOTA, r.cpu_quota),
            (&SPEC_CPU_SHARES, r.cpu_shares),
            (&SPEC_MEMORY_LIMIT, r.memory_limit_in_bytes),
            (&SPEC_SWAP_LIMIT, r.memory_swap_limit_in_bytes),
        ] {
            if v > 0 {
                push(d, unsigned(v));
            }
        }
        let (bytes, _) =
            crate::image::layers::dir_usage(&self.containers.dir_of(&c.id).join("upper"));
        let device = self.cfg.root.to_string_lossy().into_owned();
        out.push(metric(&FS_USAGE, at, &labels, Some(&device), bytes));
        v1::ContainerMetrics {
            container_id: c.id.clone(),
            metrics: out,
        }
    }
}

/// The pod's interface counters, labelled with no container and no image.
fn pod_network_metrics(sb: &Sandbox) -> Vec<v1::Metric> {
    let at = now_ns();
    let meta = sb.metadata();
    let labels = [
        meta.name,
        meta.namespace,
        String::new(),
        sb.id.clone(),
        String::new(),
    ];
    interface_counters(sb)
        .unwrap_or_default()
        .iter()
        .flat_map(|i| {
            NETWORK
                .iter()
                .map(|(d, get)| metric(d, at, &labels, Some(&i.name), get(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_once_with_its_labels() {
        let descs = descriptors();
        let mut names: Vec<&str> = descs.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for (d, _) in NETWORK {
            let desc = descs.iter().find(|x| x.name == d.name).expect("described");
            assert_eq!(
                desc.label_keys.last().map(String::as_str),
                Some("interface")
            );
            assert!(d.name.ends_with("_total") && d.kind == Cumulative);
        }
        let fs = descs.iter().find(|x| x.name == FS_USAGE.name).expect("fs");
        assert_eq!(
            fs.label_keys,
            ["pod", "namespace", "container", "id", "image", "device"]
        );
        // A metric's label values line up with its descriptor's keys.
        let m = metric(
            &RX_BYTES,
            1,
            &[
                "p".into(),
                "n".into(),
                String::new(),
                "s".into(),
                String::new(),
            ],
            Some("eth0"),
            7,
        );
        assert_eq!(m.label_values.len(), label_keys(&RX_BYTES).len());
        assert_eq!(m.metric_type, Cumulative as i32);
    }
}
