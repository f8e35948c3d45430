//! The kubelet joined to a cluster (the e2e test API server, on loopback; CRI
//! in-process, image present): client-side pod create → Ready and delete → gone
//! through the API server, for 1 pod (5 rounds) and a burst of 30, and the agent's
//! memory idle in cluster mode and with 30 pods. Not a test: it prints numbers. The
//! clock stops when the API server's store shows the change (what a client watching
//! would see, without its transport).
//!
//! `cargo build --release --bins && cargo bench -p e2e --bench cluster`

use std::time::{Duration, Instant};

use e2e::apiserver::{ApiServer, Gvr};
use e2e::bench::{rss_kib, stats};
use e2e::kubelet::{KubeletNode, NODE_NAME};
use serde_json::Value;

const BURST: usize = 30;
const ROUNDS: usize = 5;
const LIMIT: Duration = Duration::from_secs(120);

fn pod(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE_NAME,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app", "image": "docker.io/library/busybox:latest",
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
            }]
        }
    })
}

fn ready(p: Option<&Value>) -> bool {
    p.and_then(|p| p["status"]["conditions"].as_array())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let node =
        KubeletNode::start_with(&["--kubeconfig", &kubeconfig.display().to_string()]).await?;
    server
        .wait_for_async(Gvr::NODES, None, NODE_NAME, LIMIT, |n| {
            n.and_then(|n| n["status"]["conditions"].as_array())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .await?;
    let pid = node.pid().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(pid);

    let (mut create, mut delete) = (vec![], vec![]);
    for i in 0..ROUNDS {
        let name = format!("one{i}");
        let t = Instant::now();
        server.create(Gvr::PODS, Some("default"), pod(&name))?;
        server
            .wait_for_async(Gvr::PODS, Some("default"), &name, LIMIT, ready)
            .await?;
        create.push(t.elapsed());
        let t = Instant::now();
        server.delete(Gvr::PODS, Some("default"), &name)?;
        server
            .wait_for_async(Gvr::PODS, Some("default"), &name, LIMIT, |p| p.is_none())
            .await?;
        delete.push(t.elapsed());
    }

    let names: Vec<String> = (0..BURST).map(|i| format!("burst{i}")).collect();
    let t = Instant::now();
    for n in &names {
        server.create(Gvr::PODS, Some("default"), pod(n))?;
    }
    let mut each_ready = vec![];
    let waits = names.iter().map(|n| {
        let server = &server;
        async move {
            server
                .wait_for_async(Gvr::PODS, Some("default"), n, LIMIT, ready)
                .await
                .map(|_| t.elapsed())
        }
    });
    for r in futures::future::join_all(waits).await {
        each_ready.push(r?);
    }
    let burst = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = rss_kib(pid);

    let t = Instant::now();
    for n in &names {
        server.delete(Gvr::PODS, Some("default"), n)?;
    }
    let waits = names.iter().map(|n| {
        let server = &server;
        async move {
            server
                .wait_for_async(Gvr::PODS, Some("default"), n, LIMIT, |p| p.is_none())
                .await
                .map(|_| t.elapsed())
        }
    });
    let mut each_gone = vec![];
    for r in futures::future::join_all(waits).await {
        each_gone.push(r?);
    }
    let gone = t.elapsed();

    stats("1 pod: create → Ready (API)", &mut create);
    stats("1 pod: delete → gone (API)", &mut delete);
    println!(
        "{BURST} pods: create → all Ready         {:>8.1} ms",
        burst.as_secs_f64() * 1e3
    );
    stats(
        &format!("{BURST} pods: create → Ready, each"),
        &mut each_ready,
    );
    println!(
        "{BURST} pods: delete → all gone          {:>8.1} ms",
        gone.as_secs_f64() * 1e3
    );
    stats(
        &format!("{BURST} pods: delete → gone, each"),
        &mut each_gone,
    );
    println!(
        "kubelet (cluster mode, CRI in-process) RSS: {idle} KiB idle, {busy} KiB with {BURST} pods"
    );
    drop(node);
    Ok(())
}
