//! The standalone kubelet (CRI in-process) from manifest written to every container
//! Running and Ready, for 1 pod and for 30 pods, with the image present; the agent's
//! memory idle and with 30 pods; and the stop of 30 pods (manifests removed → pods gone).
//! Not a test: it prints numbers. `/pods` is read every 2 ms (single pod) or 20 ms (30
//! pods, where reading the whole list that often would take CPU from the pods).
//!
//! `cargo build --release --bins && cargo bench -p e2e --bench kubelet`

use std::time::{Duration, Instant};

use e2e::bench::{CpuTimes, process_cpu_ms, pss_kib, rss_kib, stats};
use e2e::kubelet::{KubeletNode, running_and_ready, static_name};

const BURST: usize = 30;
const SINGLE_ROUNDS: usize = 5;
const FINE: Duration = Duration::from_millis(2);
const COARSE: Duration = Duration::from_millis(20);

fn manifest(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: docker.io/library/busybox:latest
    imagePullPolicy: Never
    command: [sh, -c, "trap 'exit 0' TERM; sleep 3600 & wait"]
"#
    )
}

/// How many cri-monitor processes run, and their RSS and PSS in all.
fn monitors_kib() -> (usize, u64, u64) {
    let mut n = 0;
    let (mut rss, mut pss) = (0, 0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"cri-monitor"))
        {
            n += 1;
            rss += rss_kib(pid);
            pss += pss_kib(pid);
        }
    }
    (n, rss, pss)
}

/// Waits until `done` holds for the pods, reading /pods every `every`.
async fn until(
    node: &KubeletNode,
    every: Duration,
    limit: Duration,
    done: impl Fn(&[k8s_openapi::api::core::v1::Pod]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done(&node.pods()?) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "not reached within {limit:?}");
        tokio::time::sleep(every).await;
    }
}

fn all_ready(pods: &[k8s_openapi::api::core::v1::Pod], names: &[String]) -> bool {
    names.iter().all(|n| {
        pods.iter()
            .any(|p| p.metadata.name.as_deref() == Some(n.as_str()) && running_and_ready(p))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let node = KubeletNode::start().await?;
    let pid = node.pid().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid);

    let mut single = vec![];
    for i in 0..SINGLE_ROUNDS {
        let name = format!("one{i}");
        let t = Instant::now();
        node.write_manifest(&format!("{name}.yaml"), &manifest(&name))?;
        let full = vec![static_name(&name)];
        until(&node, FINE, Duration::from_secs(60), |p| {
            all_ready(p, &full)
        })
        .await?;
        single.push(t.elapsed());
        node.remove_manifest(&format!("{name}.yaml"))?;
        until(&node, FINE, Duration::from_secs(60), |p| p.is_empty()).await?;
    }

    let names: Vec<String> = (0..BURST).map(|i| format!("burst{i}")).collect();
    let full: Vec<String> = names.iter().map(|n| static_name(n)).collect();
    let t = Instant::now();
    let cpu = CpuTimes::now();
    let (own0, children0) = process_cpu_ms(pid);
    for n in &names {
        node.write_manifest(&format!("{n}.yaml"), &manifest(n))?;
    }
    until(&node, COARSE, Duration::from_secs(120), |p| {
        all_ready(p, &full)
    })
    .await?;
    let burst = t.elapsed();
    let burst_cpu = CpuTimes::now().busy_percent_since(&cpu);
    let (own1, children1) = process_cpu_ms(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = rss_kib(pid);
    let busy_pss = pss_kib(pid);
    let (monitors, monitors_rss, monitors_pss) = monitors_kib();

    let t = Instant::now();
    for n in &names {
        node.remove_manifest(&format!("{n}.yaml"))?;
    }
    until(&node, COARSE, Duration::from_secs(120), |p| p.is_empty()).await?;
    let stop = t.elapsed();

    stats("1 pod: manifest → Running+Ready", &mut single);
    println!(
        "{BURST} pods: manifests → all Ready      {:>8.1} ms   (CPUs {burst_cpu:.0}% busy)",
        burst.as_secs_f64() * 1e3
    );
    println!(
        "  CPU time of the burst: agent {} ms, the runc and CNI plugin runs it waited for {} ms",
        own1 - own0,
        children1 - children0
    );
    println!(
        "{BURST} pods: manifests removed → gone   {:>8.1} ms",
        stop.as_secs_f64() * 1e3
    );
    let per_pod = (busy as f64 - idle as f64) / BURST as f64;
    println!(
        "kubelet (with in-process CRI) RSS: {idle} KiB idle, {busy} KiB with {BURST} pods ({per_pod:+.0} KiB per pod)"
    );
    let each = |kib: u64| kib / monitors.max(1) as u64;
    println!(
        "cri-monitor: {monitors} processes, RSS {monitors_rss} KiB in all ({} KiB each), \
         PSS {monitors_pss} KiB in all ({} KiB each: shared text counted once)",
        each(monitors_rss),
        each(monitors_pss)
    );
    println!(
        "per running container (agent growth + its monitor's PSS): {:.0} KiB; \
         agent + monitors with {BURST} pods: {:.1} MiB PSS",
        per_pod + each(monitors_pss) as f64,
        (busy_pss + monitors_pss) as f64 / 1024.0
    );
    Ok(())
}
