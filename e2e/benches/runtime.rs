//! Pod start and stop through the `cri` binary over its socket, with real runc and CNI:
//! RunPodSandbox + CreateContainer + StartContainer, then StopPodSandbox +
//! RemovePodSandbox, for 10 pods one after another; and the memory of the server and
//! of one container monitor. Not a test: it prints numbers.
//!
//! `cargo build --release --bins && cargo bench -p e2e --bench runtime`

use std::time::Instant;

use e2e::bench::{rss_kib, stats};
use e2e::pods::{PodNode, pod_config, run_pod, shell, start};
use proto::v1;

const PODS: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let server_pid = node.cri.pid().unwrap_or(0);
    let idle = rss_kib(server_pid);

    let mut up = vec![];
    let mut pods = vec![];
    for i in 0..PODS {
        let pc = pod_config(&node, &format!("bench{i}"));
        let t = Instant::now();
        let pod = run_pod(&mut c, &pc).await?;
        let id = start(&mut c, &pod, &pc, shell("app", "sleep 100000")).await?;
        up.push(t.elapsed());
        pods.push((pod, id));
    }
    let busy = rss_kib(server_pid);
    let monitor_pid = {
        let st = c
            .container_status(v1::ContainerStatusRequest {
                container_id: pods[0].1.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info: serde_json::Value =
            serde_json::from_str(st.info.get("info").map(String::as_str).unwrap_or("{}"))?;
        info["monitorPid"].as_u64().unwrap_or(0) as u32
    };
    let monitor = rss_kib(monitor_pid);

    let mut down = vec![];
    for (pod, _) in &pods {
        let t = Instant::now();
        c.stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        down.push(t.elapsed());
    }
    stats("runp + create + start (1 container)", &mut up);
    stats("stopp + rmp", &mut down);
    println!("cri server RSS: {idle} KiB idle, {busy} KiB with {PODS} pods running");
    println!("cri-monitor RSS: {monitor} KiB (one container)");
    Ok(())
}
