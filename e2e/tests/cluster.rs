//! The kubelet joined to a cluster, checked as a cluster user checks it: with `kubectl`.
//! By default the cluster is the e2e test API server (`e2e::apiserver`), and the kubelet
//! gets a kubeconfig of its own. With `E2E_KUBECONFIG=<admin kubeconfig>` the same
//! scenarios run against that real API server instead: the harness creates a bootstrap
//! token (a `bootstrap.kubernetes.io/token` Secret in kube-system) and the RBAC a
//! bootstrapping node needs (create CSRs, auto-approval of node client certificates),
//! writes a bootstrap kubeconfig from the admin kubeconfig's server and CA, and starts
//! the kubelet with `--bootstrap-kubeconfig`, under a node name of this run's own.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use e2e::cluster::{Cluster, condition, join, node_name, pod_manifest};
use serde_json::Value;

type R<T = ()> = anyhow::Result<T>;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn node_registers_ready_with_its_facts_and_renews_its_lease() -> R {
    let cluster = Cluster::start()?;
    let kubelet = join(&cluster, &[]).await?;
    let name = node_name();
    let node = cluster
        .wait(&["node", &name], LONG, |n| {
            n.and_then(|n| condition(n, "Ready"))
                .is_some_and(|c| c["status"] == "True")
        })
        .await
        .with_context(|| kubelet.log_text())?
        .context("node")?;
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], name.as_str());
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["nodelet.dev/e2e"], "true");
    let st = &node["status"];
    for r in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(st["capacity"][r].is_string(), "capacity {r}: {st}");
        assert!(st["allocatable"][r].is_string(), "allocatable {r}: {st}");
    }
    assert_eq!(st["capacity"]["pods"], "110");
    assert_eq!(st["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    let info = &st["nodeInfo"];
    assert_eq!(info["operatingSystem"], "linux");
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.contains("://")),
        "{info}"
    );
    assert!(
        info["kubeletVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("v1."))
    );
    assert!(info["bootID"].as_str().is_some_and(|v| !v.is_empty()));
    let types: Vec<&str> = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str())
        .collect();
    for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(types.contains(&t), "{types:?}");
    }
    assert!(
        st["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["type"] == "InternalIP")),
        "{st}"
    );

    // The Lease: ours, 40 s, owned by the Node, renewed.
    let lease_args = ["lease", "-n", "kube-node-lease", name.as_str()];
    let lease = cluster
        .wait(&lease_args, LONG, |l| l.is_some())
        .await?
        .context("lease")?;
    assert_eq!(lease["spec"]["holderIdentity"], name.as_str());
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    let owner = &lease["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Node"), Some(name.as_str()))
    );
    let first = lease["spec"]["renewTime"].clone();
    cluster
        .wait(&lease_args, Duration::from_secs(30), |l| {
            l.is_some_and(|l| l["spec"]["renewTime"] != first)
        })
        .await?;
    drop(kubelet);
    Ok(())
}

#[tokio::test]
async fn a_pod_applied_with_kubectl_runs_reports_status_and_is_deleted_gracefully() -> R {
    let cluster = Cluster::start()?;
    let mut kubelet = join(&cluster, &[]).await?;
    let node = node_name();
    let pod = format!("web-{}", std::process::id());
    cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&pod_manifest(&pod, &node, "echo started; exec sleep 1000")),
    )?;
    let running = cluster
        .wait(&["pod", "-n", "default", &pod], LONG, |p| {
            p.is_some_and(|p| {
                p["status"]["phase"] == "Running"
                    && condition(p, "Ready").is_some_and(|c| c["status"] == "True")
            })
        })
        .await
        .with_context(|| kubelet.log_text())?
        .context("pod")?;
    let st = &running["status"];
    let ip = st["podIP"].as_str().unwrap_or_default();
    assert!(
        kubelet.network().is_some_and(|n| n.contains(ip)),
        "pod IP {ip} from the node's pod network: {st}"
    );
    assert_eq!(st["podIPs"][0]["ip"], ip);
    assert!(st["hostIP"].is_string(), "{st}");
    assert_eq!(st["qosClass"], "BestEffort");
    assert!(st["startTime"].is_string(), "{st}");
    let cs = &st["containerStatuses"][0];
    assert_eq!(cs["name"], "app");
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs}");
    assert_eq!(cs["ready"], true);
    let container_id = cs["containerID"].as_str().unwrap_or_default().to_string();
    assert!(container_id.contains("://"), "{cs}");
    for c in ["Initialized", "ContainersReady", "PodScheduled", "Ready"] {
        assert!(
            condition(&running, c).is_some_and(|x| x["lastTransitionTime"].is_string()),
            "{c}: {st}"
        );
    }

    // The agent restarted under the running pod: nothing restarts.
    kubelet.terminate()?;
    kubelet.spawn().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = cluster
        .get(&["pod", "-n", "default", &pod])?
        .context("pod")?;
    let cs = &again["status"]["containerStatuses"][0];
    assert_eq!(
        cs["containerID"].as_str(),
        Some(container_id.as_str()),
        "{cs}"
    );
    assert_eq!(cs["restartCount"], 0);

    // kubectl delete: graceful termination, the final status, then gone.
    cluster.kubectl(
        &["delete", "pod", "-n", "default", &pod, "--wait=false"],
        None,
    )?;
    cluster
        .wait(&["pod", "-n", "default", &pod], LONG, |p| p.is_none())
        .await
        .with_context(|| kubelet.log_text())?;
    let mut rt = kubelet.runtime().await?;
    let left = rt
        .list_pod_sandbox(proto::v1::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    assert!(left.is_empty(), "sandboxes left after the delete: {left:?}");
    Ok(())
}

#[tokio::test]
async fn static_pods_get_mirror_pods_made_again_when_deleted() -> R {
    let cluster = Cluster::start()?;
    let kubelet = join(&cluster, &[]).await?;
    let node = node_name();
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mirrored", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": e2e::pods::BUSYBOX,
                                  "imagePullPolicy": "IfNotPresent",
                                  "command": ["sleep", "1000"]}]}
    });
    kubelet.write_manifest("mirrored.json", &manifest.to_string())?;
    let name = format!("mirrored-{node}");
    let args = ["pod", "-n", "default", name.as_str()];
    let mirror = cluster
        .wait(&args, LONG, |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Running")
        })
        .await
        .with_context(|| kubelet.log_text())?
        .context("mirror")?;
    let ann = &mirror["metadata"]["annotations"];
    assert!(ann["kubernetes.io/config.mirror"].is_string(), "{ann}");
    assert_eq!(mirror["spec"]["nodeName"], node.as_str());
    assert_eq!(mirror["metadata"]["ownerReferences"][0]["kind"], "Node");
    let first_uid = mirror["metadata"]["uid"].clone();

    // Deleted by a user: made again (a new object), the static pod untouched.
    cluster.kubectl(
        &["delete", "pod", "-n", "default", &name, "--wait=false"],
        None,
    )?;
    cluster
        .wait(&args, LONG, |p| {
            p.is_some_and(|p| {
                p["metadata"]["uid"] != first_uid && p["metadata"]["deletionTimestamp"].is_null()
            })
        })
        .await
        .with_context(|| kubelet.log_text())?;
    // The manifest removed: the mirror goes.
    kubelet.remove_manifest("mirrored.json")?;
    cluster
        .wait(&args, LONG, |p| p.is_none())
        .await
        .with_context(|| kubelet.log_text())?;
    Ok(())
}

#[tokio::test]
async fn an_api_outage_leaves_pods_running_and_status_catches_up() -> R {
    if std::env::var_os("E2E_KUBECONFIG").is_some() {
        eprintln!("SKIPPED against a real cluster: the test cannot stop its API server");
        return Ok(());
    }
    let cluster = Cluster::test_server()?;
    let server = cluster.server().context("the test API server")?;
    let kubelet = join(&cluster, &[]).await?;
    let node = node_name();
    cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&pod_manifest("steady", &node, "exec sleep 1000")),
    )?;
    cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&pod_manifest("crashy", &node, "sleep 2; exit 3")),
    )?;
    cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&pod_manifest("doomed", &node, "exec sleep 1000")),
    )?;
    for p in ["steady", "crashy", "doomed"] {
        cluster
            .wait(&["pod", "-n", "default", p], LONG, |x| {
                x.is_some_and(|x| x["status"]["containerStatuses"][0]["containerID"].is_string())
            })
            .await
            .with_context(|| kubelet.log_text())?;
    }
    let steady_id = cluster
        .get(&["pod", "-n", "default", "steady"])?
        .context("steady")?["status"]["containerStatuses"][0]["containerID"]
        .clone();

    // The API server goes away for a minute; the crashing pod restarts meanwhile, and
    // one pod is deleted for good (force, as `kubectl delete --force` while the node is
    // unreachable) while the node cannot hear of it.
    server.pause()?;
    server.remove(e2e::apiserver::Gvr::PODS, Some("default"), "doomed");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut rt = kubelet.runtime().await?;
    let crashy_attempt = rt
        .list_containers(proto::v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers
        .iter()
        .filter(|c| c.labels.get("io.kubernetes.pod.name").map(String::as_str) == Some("crashy"))
        .filter_map(|c| c.metadata.as_ref().map(|m| m.attempt))
        .max()
        .unwrap_or(0);
    assert!(
        crashy_attempt >= 2,
        "the crashing pod was restarted while the API was away (attempt {crashy_attempt})"
    );
    server.resume()?;

    // The status catches up; the steady pod never restarted.
    cluster
        .wait(&["pod", "-n", "default", "crashy"], LONG, |x| {
            x.is_some_and(|x| {
                x["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)
            })
        })
        .await
        .with_context(|| kubelet.log_text())?;
    let steady = cluster
        .get(&["pod", "-n", "default", "steady"])?
        .context("steady")?;
    assert_eq!(
        steady["status"]["containerStatuses"][0]["containerID"],
        steady_id
    );
    assert_eq!(steady["status"]["containerStatuses"][0]["restartCount"], 0);
    // The pod deleted while the node was away is cleaned up once it is back.
    let deadline = Instant::now() + LONG;
    loop {
        let left = rt
            .list_pod_sandbox(proto::v1::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items
            .into_iter()
            .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name == "doomed"))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod deleted while away still runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The heartbeat is back within seconds.
    let lease_args = ["lease", "-n", "kube-node-lease", node.as_str()];
    let before = cluster.get(&lease_args)?.context("lease")?["spec"]["renewTime"].clone();
    cluster
        .wait(&lease_args, Duration::from_secs(15), |l| {
            l.is_some_and(|l| l["spec"]["renewTime"] != before)
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn pods_the_node_cannot_take_are_rejected_with_upstream_reasons() -> R {
    let cluster = Cluster::start()?;
    let kubelet = join(&cluster, &[]).await?;
    let node = node_name();
    let pod = |name: &str, extra: Value| {
        let mut p: Value =
            serde_json::from_str(&pod_manifest(name, &node, "exec sleep 1000")).unwrap_or_default();
        if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        p.to_string()
    };
    let container = |extra: Value| {
        let mut c = serde_json::json!({"name": "app", "image": e2e::pods::BUSYBOX,
            "imagePullPolicy": "IfNotPresent", "command": ["sleep", "1000"]});
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        serde_json::json!({ "containers": [c] })
    };
    let cases = [
        (
            "too-big",
            container(serde_json::json!({"resources": {"requests": {"cpu": "1000"}}})),
            "OutOfcpu",
        ),
        (
            "wrong-disk",
            serde_json::json!({"nodeSelector": {"disktype": "nvme-only"}}),
            "NodeAffinity",
        ),
    ];
    // A RuntimeClass whose handler the runtime has: such a pod runs; an unknown one
    // is refused.
    let class = serde_json::json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "nodelet-e2e-runc"}, "handler": "runc"
    });
    cluster.kubectl(&["apply", "-f", "-"], Some(&class.to_string()))?;
    let cases = [
        cases[0].clone(),
        cases[1].clone(),
        (
            "no-class",
            serde_json::json!({"runtimeClassName": "nodelet-e2e-missing"}),
            "RuntimeClassNotFound",
        ),
    ];
    for (name, extra, _) in &cases {
        cluster.kubectl(&["apply", "-f", "-"], Some(&pod(name, extra.clone())))?;
    }
    // Host ports: the first pod takes 18080, the second one is refused.
    let port = container(serde_json::json!({"ports": [{"containerPort": 80, "hostPort": 18080}]}));
    let mut port_a: Value = serde_json::from_str(&pod("port-a", port.clone()))?;
    port_a["spec"]["runtimeClassName"] = "nodelet-e2e-runc".into();
    cluster.kubectl(&["apply", "-f", "-"], Some(&port_a.to_string()))?;
    cluster
        .wait(&["pod", "-n", "default", "port-a"], LONG, |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Running")
        })
        .await
        .with_context(|| kubelet.log_text())?;
    cluster.kubectl(&["apply", "-f", "-"], Some(&pod("port-b", port)))?;
    let all = cases
        .iter()
        .map(|(n, _, r)| (*n, *r))
        .chain([("port-b", "NodePorts")]);
    for (name, reason) in all {
        let p = cluster
            .wait(&["pod", "-n", "default", name], LONG, |p| {
                p.is_some_and(|p| p["status"]["phase"] == "Failed")
            })
            .await
            .with_context(|| kubelet.log_text())?
            .context("pod")?;
        assert_eq!(p["status"]["reason"], reason, "{name}: {}", p["status"]);
        assert!(
            p["status"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Pod was rejected: ")),
            "{}",
            p["status"]
        );
    }
    // Nothing of them runs; deleting one removes it.
    let mut rt = kubelet.runtime().await?;
    let sandboxes = rt
        .list_pod_sandbox(proto::v1::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    assert_eq!(sandboxes.len(), 1, "only port-a runs: {sandboxes:?}");
    assert_eq!(
        sandboxes[0].runtime_handler, "runc",
        "the RuntimeClass's handler"
    );
    cluster.kubectl(
        &["delete", "pod", "-n", "default", "too-big", "--wait=false"],
        None,
    )?;
    cluster
        .wait(&["pod", "-n", "default", "too-big"], LONG, |p| p.is_none())
        .await
        .with_context(|| kubelet.log_text())?;
    Ok(())
}

#[tokio::test]
async fn a_deployments_pods_run_on_the_node() -> R {
    let cluster = Cluster::start()?;
    if cluster.server().is_some() {
        // The test API server runs no controllers: no ReplicaSet would ever make pods.
        eprintln!("SKIPPED against the test API server: it has no deployment controller");
        return Ok(());
    }
    let kubelet = join(&cluster, &[]).await?;
    let node = node_name();
    let name = format!("nodelet-e2e-deploy-{}", std::process::id());
    let template: Value = serde_json::from_str(&pod_manifest(&name, &node, "exec sleep 1000"))?;
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template["spec"]}
        }
    });
    cluster.apply(&deployment)?;
    cluster
        .wait(&["deployment", "-n", "default", &name], LONG, |d| {
            d.is_some_and(|d| d["status"]["readyReplicas"] == 2)
        })
        .await
        .with_context(|| kubelet.log_text())?;
    cluster.kubectl(&["delete", "deployment", "-n", "default", &name], None)?;
    Ok(())
}
