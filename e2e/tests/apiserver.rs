//! The test API server against its users: kubectl, and raw HTTP the way a kubelet's
//! client speaks it (watches, patches, preconditions, selectors, outages).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::apiserver::{ApiServer, ApiServerOptions, Decision, Gvr, UserInfo};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
const SMP: &str = "application/strategic-merge-patch+json";

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs kubectl against `server` with a kubeconfig and a cache of its own under `dir`.
fn kubectl(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--request-timeout=10s")
        .args(args)
        .env("HOME", dir)
        .output()
        .context("run kubectl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

fn pod(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]},
    })
}

fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.36.0"},
        },
    })
}

fn rv(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

#[test]
fn kubectl_applies_lists_and_deletes_pods() -> Result<()> {
    if !kubectl_available() {
        eprintln!("SKIPPED: kubectl is not installed");
        return Ok(());
    }
    let server = ApiServer::start()?;
    let dir = tempfile::tempdir()?;
    server.write_kubeconfig(&dir.path().join("kubeconfig"))?;
    server.create(Gvr::NODES, None, node("node-1"))?;

    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: busybox:1.36\n",
    )?;
    let applied = kubectl(
        dir.path(),
        &["apply", "-f", manifest.to_str().context("utf-8 path")?],
    )?;
    assert_eq!(applied.trim(), "pod/web created");
    let again = kubectl(
        dir.path(),
        &["apply", "-f", manifest.to_str().context("utf-8 path")?],
    )?;
    assert_eq!(again.trim(), "pod/web unchanged");

    let pods: Value = serde_json::from_str(&kubectl(dir.path(), &["get", "pods", "-o", "json"])?)?;
    let items = pods["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "web");
    assert_eq!(items[0]["metadata"]["labels"]["app"], "web");
    assert_eq!(items[0]["status"]["phase"], "Pending");
    assert_eq!(items[0]["spec"]["terminationGracePeriodSeconds"], 30);

    let table = kubectl(dir.path(), &["get", "pods"])?;
    assert!(
        table.contains("web") && table.contains("0/1") && table.contains("Pending"),
        "{table}"
    );
    let nodes = kubectl(dir.path(), &["get", "nodes"])?;
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("node-1") && l.contains("Ready") && l.contains("v1.36.0")),
        "{nodes}"
    );
    let yaml = kubectl(dir.path(), &["get", "nodes", "-o", "yaml"])?;
    assert!(
        yaml.contains("name: node-1") && yaml.contains("address: 10.0.0.1"),
        "{yaml}"
    );
    let resources = kubectl(dir.path(), &["api-resources"])?;
    for (name, short) in [
        ("pods", "po"),
        ("nodes", "no"),
        ("configmaps", "cm"),
        ("events", "ev"),
    ] {
        assert!(
            resources
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([name, short])),
            "{name} ({short}) missing from:\n{resources}"
        );
    }
    assert!(resources.contains("leases") && resources.contains("coordination.k8s.io/v1"));

    // A bound pod is only marked for deletion, with its grace period.
    let deleted = kubectl(dir.path(), &["delete", "pod", "web", "--wait=false"])?;
    assert_eq!(deleted.trim(), "pod \"web\" deleted");
    let marked = server
        .get(Gvr::PODS, Some("default"), "web")
        .context("pod gone at once")?;
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    let listed = kubectl(dir.path(), &["get", "pods"])?;
    assert!(listed.contains("Terminating"), "{listed}");

    // What the kubelet does once the containers are gone: delete with grace 0.
    kubectl(
        dir.path(),
        &["delete", "pod", "web", "--grace-period=0", "--force"],
    )?;
    assert!(server.get(Gvr::PODS, Some("default"), "web").is_none());
    // client-go sends credentials over TLS only: over plain HTTP kubectl is anonymous.
    let log = server.requests();
    assert!(
        log.iter()
            .any(|r| r.method == "DELETE"
                && r.path.starts_with("/api/v1/namespaces/default/pods/web"))
    );
    assert!(
        log.iter().all(|r| r.username() == "system:anonymous"),
        "{log:?}"
    );
    Ok(())
}

/// kubectl's typed clients (`create configmap|namespace|secret|token`, `certificate
/// approve`) send protobuf bodies.
#[test]
fn kubectl_typed_clients_create_and_approve() -> Result<()> {
    if !kubectl_available() {
        eprintln!("SKIPPED: kubectl is not installed");
        return Ok(());
    }
    let server = ApiServer::start()?;
    let dir = tempfile::tempdir()?;
    server.write_kubeconfig(&dir.path().join("kubeconfig"))?;
    let d = dir.path();
    kubectl(d, &["create", "configmap", "cm1", "--from-literal=a=b"])?;
    let cm = server
        .get(Gvr::CONFIGMAPS, Some("default"), "cm1")
        .context("configmap")?;
    assert_eq!(cm["data"], json!({"a": "b"}));
    kubectl(d, &["create", "namespace", "team"])?;
    let ns = server
        .get(Gvr::NAMESPACES, None, "team")
        .context("namespace")?;
    assert_eq!(ns["status"]["phase"], "Active");
    assert!(
        server
            .get(Gvr::SERVICEACCOUNTS, Some("team"), "default")
            .is_some()
    );
    kubectl(
        d,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "team",
            "--from-literal=x=y",
        ],
    )?;
    let secret = server
        .get(Gvr::SECRETS, Some("team"), "s1")
        .context("secret")?;
    assert_eq!(
        (secret["data"]["x"].as_str(), secret["type"].as_str()),
        (Some("eQ=="), Some("Opaque"))
    );
    let token = kubectl(
        d,
        &[
            "create",
            "token",
            "default",
            "-n",
            "team",
            "--audience=vault",
            "--duration=20m",
        ],
    )?;
    let user = server.client().post(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &json!({"spec": {"token": token.trim(), "audiences": ["vault"]}}),
    )?;
    assert_eq!(
        user.json()?["status"]["user"]["username"],
        "system:serviceaccount:team:default"
    );

    server.create(
        Gvr::CSRS,
        None,
        json!({"metadata": {"name": "c1"}, "spec": {"request": "YWJj", "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["client auth"]}}),
    )?;
    kubectl(d, &["certificate", "approve", "c1"])?;
    let csr = server.get(Gvr::CSRS, None, "c1").context("csr")?;
    assert_eq!(csr["status"]["conditions"][0]["type"], "Approved");
    assert_eq!(csr["status"]["conditions"][0]["reason"], "KubectlApprove");
    let listed = kubectl(d, &["get", "csr"])?;
    assert!(listed.contains("Approved"), "{listed}");
    Ok(())
}

#[test]
fn discovery_documents() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    assert_eq!(c.get("/version")?.json()?["gitVersion"], "v1.36.0");
    assert_eq!(c.get("/api")?.json()?["versions"], json!(["v1"]));
    let groups = c.get("/apis")?.json()?;
    assert!(
        groups["groups"]
            .as_array()
            .context("groups")?
            .iter()
            .any(|g| g["name"] == "coordination.k8s.io")
    );
    let coordination = c.get("/apis/coordination.k8s.io/v1")?.json()?;
    let leases = &coordination["resources"][0];
    assert_eq!(
        (leases["name"].as_str(), leases["namespaced"].as_bool()),
        (Some("leases"), Some(true))
    );
    let r = c.get("/apis/nope.example.com/v1")?;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()?["kind"], "Status");
    Ok(())
}

#[test]
fn the_fresh_cluster_has_its_namespaces_and_the_kubernetes_service() -> Result<()> {
    let server = ApiServer::start()?;
    for ns in ["default", "kube-system", "kube-node-lease"] {
        assert!(server.get(Gvr::NAMESPACES, None, ns).is_some(), "{ns}");
    }
    let svc = server
        .get(Gvr::SERVICES, Some("default"), "kubernetes")
        .context("kubernetes service")?;
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    Ok(())
}

#[test]
fn a_watch_from_a_resource_version_sees_later_changes_in_order() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let cms = "/api/v1/namespaces/default/configmaps";
    let a = c.post(cms, &json!({"metadata": {"name": "a"}, "data": {"k": "1"}}))?;
    assert_eq!(a.status, 201);
    let a = a.json()?;
    let from = rv(&a);
    // A change before the watch's resourceVersion is not sent again.
    let mut watch = c.watch(&format!("{cms}?watch=true&resourceVersion={from}"))?;

    c.post(cms, &json!({"metadata": {"name": "b"}}))?;
    let mut changed = a.clone();
    changed["data"]["k"] = json!("2");
    assert_eq!(c.put(&format!("{cms}/a"), &changed)?.status, 200);
    assert_eq!(c.delete(&format!("{cms}/b"), None)?.status, 200);

    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = watch.next_event(WAIT)?.context("watch ended")?;
        seen.push((
            e["type"].as_str().unwrap_or_default().to_string(),
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            rv(&e["object"]),
        ));
    }
    let kinds: Vec<(&str, &str)> = seen
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    assert_eq!(kinds, [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]);
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "versions not increasing: {seen:?}"
    );
    assert!(seen[0].2 > from);
    Ok(())
}

#[test]
fn a_watch_without_a_resource_version_starts_with_the_current_objects() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let mut watch = c.watch("/api/v1/namespaces?watch=1&timeoutSeconds=5")?;
    let mut names = Vec::new();
    for _ in 0..4 {
        let e = watch.next_event(WAIT)?.context("watch ended")?;
        assert_eq!(e["type"], "ADDED");
        names.push(
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    names.sort();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    // The watch-list form: the initial objects end with an annotated bookmark.
    let mut list = c.watch("/api/v1/namespaces?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")?;
    let end = list.until(WAIT, |e| e["type"] == "BOOKMARK")?;
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let refused = c.get("/api/v1/namespaces?watch=1&sendInitialEvents=true")?;
    assert_eq!(refused.status, 422);
    Ok(())
}

#[test]
fn a_resource_version_older_than_the_history_is_expired() -> Result<()> {
    let server = ApiServer::start_with(ApiServerOptions {
        history: 5,
        ..ApiServerOptions::default()
    })?;
    let c = server.client();
    for i in 0..10 {
        c.post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": format!("cm{i}")}}),
        )?;
    }
    let mut watch =
        c.watch("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=2")?;
    let e = watch
        .next_event(WAIT)?
        .context("watch ended without an event")?;
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(
        watch.next_event(WAIT)?.is_none(),
        "the watch goes on after Expired"
    );
    // The latest version still works.
    let list = c.get("/api/v1/namespaces/default/configmaps")?.json()?;
    let latest = list["metadata"]["resourceVersion"]
        .as_str()
        .context("list resourceVersion")?;
    assert_eq!(latest, server.resource_version().to_string());
    let mut ok = c.watch(&format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={latest}&timeoutSeconds=1"
    ))?;
    assert!(
        ok.next_event(WAIT)?.is_none(),
        "nothing happened after the latest version"
    );
    Ok(())
}

#[test]
fn bookmarks_carry_the_current_resource_version() -> Result<()> {
    let server = ApiServer::start_with(ApiServerOptions {
        bookmark_interval: Duration::from_millis(200),
        ..ApiServerOptions::default()
    })?;
    let c = server.client();
    let from = server.resource_version();
    let mut watch = c.watch(&format!(
        "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&resourceVersion={from}"
    ))?;
    let first = watch.next_event(WAIT)?.context("watch ended")?;
    assert_eq!(first["type"], "BOOKMARK");
    assert_eq!(first["object"]["kind"], "Pod");
    assert_eq!(rv(&first["object"]), from);

    // A change elsewhere moves the bookmarks on without an event for this watch.
    c.post(
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "x"}}),
    )?;
    let now = server.resource_version();
    let later = watch.until(WAIT, |e| e["type"] == "BOOKMARK" && rv(&e["object"]) == now)?;
    assert_eq!(rv(&later["object"]), now);
    Ok(())
}

#[test]
fn timeout_seconds_ends_a_watch() -> Result<()> {
    let server = ApiServer::start()?;
    let mut watch = server.client().watch(&format!(
        "/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion={}",
        server.resource_version()
    ))?;
    assert!(watch.next_event(WAIT)?.is_none());
    Ok(())
}

#[test]
fn strategic_merge_patch_of_pod_status_merges_conditions_by_type() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let mut p = pod("p", "node-1");
    p["spec"]["containers"] =
        json!([{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]);
    assert_eq!(c.post("/api/v1/namespaces/default/pods", &p)?.status, 201);
    let status = "/api/v1/namespaces/default/pods/p/status";
    let first = c.patch(
        status,
        SMP,
        &json!({"status": {
            "phase": "Running",
            "podIP": "10.1.0.5",
            "podIPs": [{"ip": "10.1.0.5"}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            ],
            "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}},
            ],
        }}),
    )?;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    // What the kubelet's status manager sends: only what changed, with element orders.
    let second = c
        .patch(
            status,
            SMP,
            &json!({
                "metadata": {"uid": first.json()?["metadata"]["uid"]},
                "status": {
                    "$setElementOrder/conditions": [{"type": "PodScheduled"}, {"type": "Ready"}, {"type": "ContainersReady"}],
                    "conditions": [
                        {"type": "Ready", "status": "True", "reason": null},
                        {"type": "ContainersReady", "status": "True"},
                    ],
                    "containerStatuses": [
                        {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                        {"name": "b", "ready": true, "restartCount": 1, "state": {"running": {}}},
                    ],
                },
            }),
        )?
        .json()?;
    let conditions: Vec<(&str, &str)> = second["status"]["conditions"]
        .as_array()
        .context("conditions")?
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default(),
                c["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        conditions,
        [
            ("PodScheduled", "True"),
            ("Ready", "True"),
            ("ContainersReady", "True")
        ]
    );
    assert!(
        second["status"]["conditions"][1].get("reason").is_none(),
        "null deletes a key"
    );
    assert_eq!(second["status"]["containerStatuses"][1]["restartCount"], 1);
    assert_eq!(second["status"]["podIPs"], json!([{"ip": "10.1.0.5"}]));

    // containerStatuses has no patch strategy upstream: a patch replaces the whole list.
    let third = c
        .patch(status, SMP, &json!({"status": {"containerStatuses": [{"name": "b", "ready": false, "restartCount": 2}]}}))?
        .json()?;
    let names: Vec<&str> = third["status"]["containerStatuses"]
        .as_array()
        .context("containerStatuses")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["b"]);

    // /status writes only status; the main resource ignores status.
    let spec_change = c
        .patch(
            status,
            SMP,
            &json!({"spec": {"activeDeadlineSeconds": 5}, "status": {"message": "m"}}),
        )?
        .json()?;
    assert!(spec_change["spec"].get("activeDeadlineSeconds").is_none());
    assert_eq!(spec_change["status"]["message"], "m");
    let main = c
        .patch(
            "/api/v1/namespaces/default/pods/p",
            SMP,
            &json!({"metadata": {"labels": {"x": "y"}}, "status": {"phase": "Failed"}}),
        )?
        .json()?;
    assert_eq!(main["metadata"]["labels"]["x"], "y");
    assert_eq!(main["status"]["phase"], "Running");
    Ok(())
}

#[test]
fn other_patch_types() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    c.post("/api/v1/nodes", &node("n1"))?;
    let merged = c
        .patch(
            "/api/v1/nodes/n1",
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"a": "b"}}}),
        )?
        .json()?;
    assert_eq!(merged["metadata"]["labels"]["a"], "b");
    let patched = c
        .patch(
            "/api/v1/nodes/n1",
            "application/json-patch+json",
            &json!([{"op": "test", "path": "/metadata/labels/a", "value": "b"}, {"op": "add", "path": "/spec/unschedulable", "value": true}]),
        )?
        .json()?;
    assert_eq!(patched["spec"]["unschedulable"], true);
    let failed = c.patch(
        "/api/v1/nodes/n1",
        "application/json-patch+json",
        &json!([{"op": "test", "path": "/metadata/labels/a", "value": "c"}]),
    )?;
    assert_eq!(failed.status, 422);
    // Node addresses merge by type.
    let addressed = c
        .patch(
            "/api/v1/nodes/n1/status",
            SMP,
            &json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}}),
        )?
        .json()?;
    assert_eq!(
        addressed["status"]["addresses"],
        json!([{"type": "InternalIP", "address": "10.0.0.9"}, {"type": "Hostname", "address": "n1"}])
    );
    let apply = c.patch(
        "/api/v1/nodes/n1",
        "application/apply-patch+yaml",
        &json!({}),
    )?;
    assert_eq!(apply.status, 415);
    assert_eq!(apply.json()?["reason"], "UnsupportedMediaType");
    Ok(())
}

#[test]
fn a_put_with_a_stale_resource_version_conflicts() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40},
    });
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-1";
    let created = c.put(path, &lease)?;
    assert_eq!(created.status, 201, "a PUT creates a missing lease");
    let created = created.json()?;
    let mut renewed = created.clone();
    renewed["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    let updated = c.put(path, &renewed)?;
    assert_eq!(updated.status, 200);
    assert!(rv(&updated.json()?) > rv(&created));

    let stale = c.put(path, &renewed)?;
    assert_eq!(stale.status, 409);
    let status = stale.json()?;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(status["details"]["name"], "node-1");
    assert_eq!(status["details"]["kind"], "leases");
    assert_eq!(status["details"]["group"], "coordination.k8s.io");
    Ok(())
}

#[test]
fn field_selector_spec_node_name_filters_lists_and_watches() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    for (name, node) in [("on-1", "node-1"), ("on-2", "node-2"), ("unbound", "")] {
        assert_eq!(
            c.post("/api/v1/namespaces/default/pods", &pod(name, node))?
                .status,
            201
        );
    }
    let list = c
        .get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1")?
        .json()?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["on-1"]);
    assert!(list["metadata"]["resourceVersion"].is_string());
    assert!(
        list["items"][0].get("kind").is_none(),
        "list items carry no kind, as upstream"
    );
    let not = c
        .get("/api/v1/pods?fieldSelector=spec.nodeName!%3Dnode-1,spec.nodeName!%3D")?
        .json()?;
    assert_eq!(not["items"][0]["metadata"]["name"], "on-2");

    let mut watch = c.watch(&format!(
        "/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dnode-1&resourceVersion={}",
        rv(&list)
    ))?;
    c.post("/api/v1/namespaces/default/pods", &pod("later-2", "node-2"))?;
    c.post("/api/v1/namespaces/default/pods", &pod("later-1", "node-1"))?;
    c.delete(
        "/api/v1/namespaces/default/pods/on-1",
        Some(&json!({"gracePeriodSeconds": 0})),
    )?;
    let first = watch.next_event(WAIT)?.context("watch ended")?;
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("later-1"))
    );
    let second = watch.next_event(WAIT)?.context("watch ended")?;
    assert_eq!(
        (
            second["type"].as_str(),
            second["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("on-1"))
    );

    let unsupported = c.get("/api/v1/pods?fieldSelector=spec.foo%3Dbar")?;
    assert_eq!(unsupported.status, 400);
    assert!(
        unsupported.json()?["message"]
            .as_str()
            .unwrap_or_default()
            .contains("field label not supported")
    );
    Ok(())
}

#[test]
fn errors_are_status_objects() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let missing = c.get("/api/v1/namespaces/default/pods/nope")?;
    assert_eq!(missing.status, 404);
    let s = missing.json()?;
    assert_eq!(
        (
            s["kind"].as_str(),
            s["apiVersion"].as_str(),
            s["status"].as_str()
        ),
        (Some("Status"), Some("v1"), Some("Failure"))
    );
    assert_eq!(
        (s["reason"].as_str(), s["code"].as_u64()),
        (Some("NotFound"), Some(404))
    );
    assert_eq!(s["message"], "pods \"nope\" not found");
    assert_eq!(
        (s["details"]["name"].as_str(), s["details"]["kind"].as_str()),
        (Some("nope"), Some("pods"))
    );

    assert_eq!(
        c.post("/api/v1/namespaces/default/pods", &pod("p", "n1"))?
            .status,
        201
    );
    let dup = c.post("/api/v1/namespaces/default/pods", &pod("p", "n1"))?;
    assert_eq!(
        (dup.status, dup.json()?["reason"].clone()),
        (409, json!("AlreadyExists"))
    );

    let mut nameless = pod("", "");
    nameless["metadata"] = json!({});
    let invalid = c.post("/api/v1/namespaces/default/pods", &nameless)?;
    assert_eq!(invalid.status, 422);
    let s = invalid.json()?;
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["kind"], "Pod");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");

    nameless["metadata"]["generateName"] = json!("gen-");
    let generated = c
        .post("/api/v1/namespaces/default/pods", &nameless)?
        .json()?;
    assert!(
        generated["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
    );

    // A body of another kind is refused as the real server's decoder does (400).
    let wrong = c.post(
        "/api/v1/namespaces/default/pods",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
    )?;
    assert_eq!(
        (wrong.status, wrong.json()?["reason"].clone()),
        (400, json!("BadRequest"))
    );
    let elsewhere = c.post(
        "/api/v1/namespaces/nope/configmaps",
        &json!({"metadata": {"name": "x"}}),
    )?;
    assert_eq!(elsewhere.status, 404, "no such namespace");

    let uid_mismatch = c.delete(
        "/api/v1/namespaces/default/pods/p",
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-the-uid"}})),
    )?;
    assert_eq!(
        (uid_mismatch.status, uid_mismatch.json()?["reason"].clone()),
        (409, json!("Conflict"))
    );

    let not_allowed = c.post("/api/v1/namespaces/default/pods/p", &json!({}))?;
    assert_eq!(
        (not_allowed.status, not_allowed.json()?["reason"].clone()),
        (405, json!("MethodNotAllowed"))
    );
    let forbidden = c.delete("/api/v1/namespaces/kube-system", None)?;
    assert_eq!(forbidden.status, 403);
    Ok(())
}

#[test]
fn pod_deletion_follows_the_grace_period() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let mut p = pod("p", "node-1");
    p["spec"]["terminationGracePeriodSeconds"] = json!(45);
    let created = c.post("/api/v1/namespaces/default/pods", &p)?.json()?;
    let uid = created["metadata"]["uid"].clone();

    let mut watch = c.watch(&format!(
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion={}",
        rv(&created)
    ))?;
    let marked = c.delete("/api/v1/namespaces/default/pods/p", None)?;
    assert_eq!(marked.status, 200);
    let marked = marked.json()?;
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 45);
    let shorter = c
        .delete(
            "/api/v1/namespaces/default/pods/p?gracePeriodSeconds=10",
            None,
        )?
        .json()?;
    assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 10);
    let gone = c.delete(
        "/api/v1/namespaces/default/pods/p",
        Some(&json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})),
    )?;
    assert_eq!(gone.status, 200);
    assert_eq!(
        gone.json()?["kind"],
        "Pod",
        "a pod delete answers with the pod"
    );
    let types: Vec<String> = (0..3)
        .map(|_| {
            watch
                .next_event(WAIT)
                .map(|e| e.map(|e| e["type"].as_str().unwrap_or_default().to_string()))
        })
        .collect::<Result<Option<Vec<_>>>>()?
        .context("watch ended")?;
    assert_eq!(types, ["MODIFIED", "MODIFIED", "DELETED"]);
    assert!(server.get(Gvr::PODS, Some("default"), "p").is_none());

    // Unbound pods and other kinds go at once.
    c.post("/api/v1/namespaces/default/pods", &pod("unbound", ""))?;
    c.delete("/api/v1/namespaces/default/pods/unbound", None)?;
    assert!(server.get(Gvr::PODS, Some("default"), "unbound").is_none());
    c.post(
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "cm"}}),
    )?;
    let status = c
        .delete("/api/v1/namespaces/default/configmaps/cm", None)?
        .json()?;
    assert_eq!(
        (status["kind"].as_str(), status["status"].as_str()),
        (Some("Status"), Some("Success"))
    );
    Ok(())
}

#[test]
fn pause_refuses_connections_and_ends_watches() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let mut watch = c.watch("/api/v1/pods?watch=true&resourceVersion=1")?;
    server.pause()?;
    match watch.next_event(WAIT) {
        Ok(None) | Err(_) => {}
        Ok(Some(e)) => bail!("an event during an outage: {e}"),
    }
    assert!(c.get("/version").is_err(), "connected during an outage");
    // The store stays: what tests write during an outage is there after it.
    server.create(Gvr::NODES, None, node("n1"))?;
    server.resume()?;
    let back = c.get("/api/v1/nodes/n1")?;
    assert_eq!(back.status, 200);
    assert_eq!(server.url(), format!("http://{}", server.addr()));
    Ok(())
}

#[test]
fn token_requests_and_reviews() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    c.post("/api/v1/namespaces/default/pods", &pod("p", "node-1"))?;
    let p = server.get(Gvr::PODS, Some("default"), "p").context("pod")?;
    let tr = c.post(
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": ["vault"],
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": p["metadata"]["uid"]},
            },
        }),
    )?;
    assert_eq!(tr.status, 201, "{}", String::from_utf8_lossy(&tr.body));
    let tr = tr.json()?;
    assert_eq!(tr["kind"], "TokenRequest");
    let token = tr["status"]["token"].as_str().context("token")?;
    assert!(tr["status"]["expirationTimestamp"].is_string());

    let review = c
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": ["vault"]}}),
        )?
        .json()?;
    assert_eq!(review["status"]["authenticated"], true);
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p"])
    );
    let admin = c
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &json!({"spec": {"token": server.token()}}),
        )?
        .json()?;
    assert_eq!(admin["status"]["user"]["username"], "system:admin");
    assert_eq!(admin["status"]["user"]["groups"][0], "system:masters");
    let bogus = c
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &json!({"spec": {"token": "bogus"}}),
        )?
        .json()?;
    assert_ne!(bogus["status"]["authenticated"], true);

    let sar = |user: &str| {
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "resourceAttributes": {"verb": "get", "resource": "nodes", "name": "node-1"}},
        })
    };
    let allowed = c
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &sar("anyone"),
        )?
        .json()?;
    assert_eq!(allowed["status"]["allowed"], true);
    server.set_authorizer(|r| {
        if r.user.username == "system:node:node-1" && r.name == "node-1" {
            Decision::allow()
        } else {
            Decision::deny("nodes read only themselves")
        }
    });
    let denied = c
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &sar("anyone"),
        )?
        .json()?;
    assert_eq!(
        (
            denied["status"]["allowed"].as_bool(),
            denied["status"]["denied"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let own = c
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &sar("system:node:node-1"),
        )?
        .json()?;
    assert_eq!(own["status"]["allowed"], true);
    Ok(())
}

#[test]
fn csrs_are_approved_and_signed() -> Result<()> {
    let server = ApiServer::start()?;
    let dir = tempfile::tempdir()?;
    let token =
        server.write_kubeconfig_for(&dir.path().join("kubeconfig"), &UserInfo::node("node-1"))?;
    let node_client = server.client().with_token(Some(&token));
    let csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let request = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
    let created = node_client.post(
        csrs,
        &json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "csr-"},
            "spec": {
                "request": base64_encode(request.as_bytes()),
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"],
                "username": "someone-else",
            },
        }),
    )?;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let created = created.json()?;
    let name = created["metadata"]["name"]
        .as_str()
        .context("name")?
        .to_string();
    assert_eq!(
        created["spec"]["username"], "system:node:node-1",
        "the requester, not the body"
    );
    assert!(
        created["spec"]["groups"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("system:nodes")))
    );

    // No certificate before approval.
    let early = server.client().put(
        &format!("{csrs}/{name}/status"),
        &json!({"metadata": {"name": name}, "status": {"certificate": base64_encode(b"cert")}}),
    )?;
    assert_eq!(early.status, 422);

    let mut watch = node_client.watch(&format!(
        "{csrs}?watch=true&fieldSelector=metadata.name%3D{name}&resourceVersion={}",
        rv(&created)
    ))?;
    // Approval through the subresource, as `kubectl certificate approve` does.
    let mut approving = created.clone();
    approving["status"] = json!({"conditions": [{"type": "Approved", "status": "True", "reason": "Test", "message": "ok"}]});
    let approved = server
        .client()
        .put(&format!("{csrs}/{name}/approval"), &approving)?;
    assert_eq!(
        approved.status,
        200,
        "{}",
        String::from_utf8_lossy(&approved.body)
    );
    let signed = server.sign_csr(&name, &|csr: &e2e::apiserver::CsrToSign| {
        assert_eq!(csr.username, "system:node:node-1");
        assert_eq!(String::from_utf8_lossy(&csr.request_pem), request);
        Ok(b"-----BEGIN CERTIFICATE-----\nsigned\n-----END CERTIFICATE-----\n".to_vec())
    })?;
    assert!(signed["status"]["certificate"].is_string());
    let first = watch.next_event(WAIT)?.context("watch ended")?;
    assert_eq!(
        first["object"]["status"]["conditions"][0]["type"],
        "Approved"
    );
    let second = watch.next_event(WAIT)?.context("watch ended")?;
    assert_eq!(
        second["object"]["status"]["certificate"],
        signed["status"]["certificate"]
    );

    assert!(server.approve_csr("nope").is_err());
    Ok(())
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn the_request_log_records_who_asked_for_what() -> Result<()> {
    let server = ApiServer::start()?;
    let dir = tempfile::tempdir()?;
    let token =
        server.write_kubeconfig_for(&dir.path().join("kubeconfig"), &UserInfo::node("node-1"))?;
    let kubeconfig = std::fs::read_to_string(dir.path().join("kubeconfig"))?;
    assert!(kubeconfig.contains(&server.url()) && kubeconfig.contains(&token));
    server.create(Gvr::NODES, None, node("node-1"))?;
    let node_client = server.client().with_token(Some(&token));
    assert_eq!(node_client.get("/api/v1/nodes/node-1")?.status, 200);
    assert_eq!(
        node_client
            .get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1")?
            .status,
        200
    );
    assert_eq!(
        server
            .client()
            .with_token(Some("made-up"))
            .get("/api/v1/nodes")?
            .status,
        200,
        "any token is accepted"
    );
    assert_eq!(
        server.client().with_token(None).get("/version")?.status,
        200
    );

    let log = server.requests();
    let by_node: Vec<&str> = log
        .iter()
        .filter(|r| r.username() == "system:node:node-1")
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        by_node,
        [
            "/api/v1/nodes/node-1",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1"
        ]
    );
    let unknown = log
        .iter()
        .find(|r| r.username() == "unknown")
        .context("unknown token request")?;
    assert_eq!(unknown.token.as_deref(), Some("made-up"));
    assert!(
        log.iter()
            .any(|r| r.username() == "system:anonymous" && r.path == "/version")
    );
    server.clear_requests();
    assert!(server.requests().is_empty());
    Ok(())
}

#[tokio::test]
async fn async_tests_wait_on_objects() -> Result<()> {
    let server = ApiServer::start()?;
    let c = server.client();
    let writer = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(100));
        c.post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": "late"}, "data": {"k": "v"}}),
        )
    });
    let found = server
        .wait_for_async(Gvr::CONFIGMAPS, Some("default"), "late", WAIT, |o| {
            o.is_some()
        })
        .await?
        .context("found nothing")?;
    assert_eq!(found["data"]["k"], "v");
    writer.await??;
    let err = server
        .wait_for_async(
            Gvr::CONFIGMAPS,
            Some("default"),
            "never",
            Duration::from_millis(100),
            |o| o.is_some(),
        )
        .await;
    assert!(err.is_err());
    Ok(())
}

#[test]
fn handle_helpers_work_on_the_store() -> Result<()> {
    let server = ApiServer::start()?;
    let created = server.create(Gvr::PODS, Some("default"), pod("p", "node-1"))?;
    assert_eq!(created["status"]["phase"], "Pending");
    let running = server.update(Gvr::PODS, Some("default"), "p", |p| {
        p["status"]["phase"] = json!("Running")
    })?;
    assert!(rv(&running) > rv(&created));
    assert_eq!(server.list(Gvr::PODS, None).len(), 1);
    assert_eq!(
        server
            .list_selected(Gvr::PODS, None, "", "status.phase=Running")?
            .len(),
        1
    );
    let waited = server.wait_for(Gvr::PODS, Some("default"), "p", WAIT, |p| {
        p.is_some_and(|p| p["status"]["phase"] == "Running")
    })?;
    assert!(waited.is_some());
    assert!(matches!(
        server.delete(Gvr::PODS, Some("default"), "p")?,
        e2e::apiserver::Deleted::Pending(_)
    ));
    assert!(server.remove(Gvr::PODS, Some("default"), "p").is_some());
    assert!(
        server
            .wait_for(Gvr::PODS, Some("default"), "p", WAIT, |p| p.is_none())?
            .is_none()
    );
    Ok(())
}

/// The client our kubelet uses (kube-rs): its watcher over a node's pods, status patches,
/// lease updates with preconditions.
#[tokio::test]
async fn kube_rs_clients_list_watch_and_patch() -> Result<()> {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use kube::runtime::watcher;

    let server = ApiServer::start()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    let token = server.write_kubeconfig_for(&path, &UserInfo::node("node-1"))?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;

    server.create(Gvr::PODS, Some("default"), pod("mine", "node-1"))?;
    server.create(Gvr::PODS, Some("default"), pod("theirs", "node-2"))?;
    let pods: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields("spec.nodeName=node-1");
    let mut events = watcher(pods, cfg).boxed();
    let mut initial = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await?
            .context("watcher ended")??;
        match event {
            watcher::Event::Init => {}
            watcher::Event::InitApply(p) => initial.push(p.metadata.name.unwrap_or_default()),
            watcher::Event::InitDone => break,
            other => bail!("unexpected event before InitDone: {other:?}"),
        }
    }
    assert_eq!(initial, ["mine"]);
    server.create(Gvr::PODS, Some("default"), pod("later", "node-1"))?;
    match tokio::time::timeout(WAIT, events.next())
        .await?
        .context("watcher ended")??
    {
        watcher::Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("later")),
        other => bail!("expected the new pod, got {other:?}"),
    }

    let namespaced: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    let patched = namespaced
        .patch_status("mine", &PatchParams::default(), &Patch::Strategic(&status))
        .await?;
    assert_eq!(
        patched.status.and_then(|s| s.phase).as_deref(),
        Some("Running")
    );

    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "node-1"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40},
    }))?;
    let created = leases.create(&PostParams::default(), &lease).await?;
    // Writing the same object again changes nothing, as upstream: no new resourceVersion.
    let same = leases
        .replace("node-1", &PostParams::default(), &created)
        .await?;
    assert_eq!(
        same.metadata.resource_version,
        created.metadata.resource_version
    );
    let mut renew = created.clone();
    if let Some(spec) = renew.spec.as_mut() {
        spec.lease_duration_seconds = Some(41);
    }
    let renewed = leases
        .replace("node-1", &PostParams::default(), &renew)
        .await?;
    assert_ne!(
        renewed.metadata.resource_version,
        created.metadata.resource_version
    );
    let stale = leases
        .replace("node-1", &PostParams::default(), &created)
        .await;
    assert!(
        matches!(&stale, Err(kube::Error::Api(s)) if s.code == 409),
        "{stale:?}"
    );

    let by_node = server
        .requests()
        .into_iter()
        .filter(|r| r.token.as_deref() == Some(&token))
        .count();
    assert!(by_node >= 5, "kube-rs sends its token over plain HTTP");
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.username() == "system:node:node-1")
    );
    Ok(())
}
