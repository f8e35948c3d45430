//! Pods from the API server with the objects they reference: configMap and secret
//! volumes, the projected service account volume (token, `ca.crt`, namespace),
//! environment from config maps, secrets and services, an updated config map reaching a
//! running pod, and the errors of missing objects. Against the e2e test API server,
//! which (unlike a control plane) has no `kube-root-ca.crt` config map and no
//! ServiceAccount admission: the tests create what they need. The containers print what
//! they see; the tests read it from the CRI log files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use e2e::cluster::Cluster;
use e2e::kubelet::KubeletNode;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

type R<T = ()> = anyhow::Result<T>;

const LONG: Duration = Duration::from_secs(60);

/// The pod reads the tests make, on the shared cluster harness.
trait PodsExt {
    fn pod(&self, name: &str) -> R<Option<Value>>;
    async fn wait_pod(
        &self,
        name: &str,
        kubelet: &KubeletNode,
        pred: impl Fn(&Value) -> bool,
    ) -> R<Value>;
}

impl PodsExt for Cluster {
    fn pod(&self, name: &str) -> R<Option<Value>> {
        self.get(&["pod", "-n", "default", name])
    }

    /// Polls (bounded) the pod until `pred` holds on it.
    async fn wait_pod(
        &self,
        name: &str,
        kubelet: &KubeletNode,
        pred: impl Fn(&Value) -> bool,
    ) -> R<Value> {
        let deadline = Instant::now() + LONG;
        loop {
            let p = self.pod(name)?;
            if let Some(p) = p.as_ref().filter(|p| pred(p)) {
                return Ok(p.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {name} not as expected after {LONG:?}: {}\nkubelet log:\n{}",
                    p.map(|p| p["status"].to_string()).unwrap_or_default(),
                    tail(&kubelet.log_text(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn join(cluster: &Cluster) -> R<KubeletNode> {
    e2e::cluster::join(cluster, &[]).await
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn container_state<'a>(pod: &'a Value, which: &str) -> &'a Value {
    &pod["status"]["containerStatuses"][0]["state"][which]
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && !container_state(pod, "running").is_null()
}

/// The pod's first container's log (attempt 0), as the kubelet's runtime wrote it.
fn log_path(kubelet: &KubeletNode, pod: &Value) -> R<PathBuf> {
    let p: Pod = serde_json::from_value(pod.clone())?;
    Ok(kubelet.container_log(&p, "app", 0))
}

/// Waits (bounded) until the log has `needle`; its text.
async fn wait_log(path: &Path, needle: &str, limit: Duration) -> R<String> {
    e2e::pods::wait_for_text(path, needle, limit).await
}

/// The claims of a JWT-shaped token (its middle part, base64url).
fn claims(token: &str) -> R<Value> {
    let body = token
        .split('.')
        .nth(1)
        .context("token has no claims part")?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body.trim_end_matches('='))
        .context("claims are not base64url")?;
    Ok(serde_json::from_slice(&raw)?)
}

/// The value printed after `key=` on a `key=value` line of the log.
fn logged<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    log.lines()
        .filter_map(|l| l.split_once(' ').map(|x| x.1)) // timestamp
        .filter_map(|l| l.split_once(' ').map(|x| x.1)) // stream
        .filter_map(|l| l.split_once(' ').map(|x| x.1)) // tag
        .find_map(|l| l.strip_prefix(&prefix))
}

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[tokio::test]
async fn config_maps_secrets_and_tokens_reach_the_pod() -> R {
    let cluster = Cluster::start()?;
    let kubelet = join(&cluster).await?;

    // What a control plane would have made (the test server has no controllers), and
    // the objects the pod uses.
    if cluster.server().is_some() {
        cluster.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "namespace": "default"},
            "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n"}}))?;
    }
    cluster.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "app-config", "namespace": "default"},
        "data": {"greeting": "hello", "mode": "fast"}}))?;
    cluster.apply(&json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "app-secret", "namespace": "default"},
        "type": "Opaque", "data": {"password": b64("s3cr3t"), "user": b64("admin")}}))?;
    cluster.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "my-db", "namespace": "default"},
        "spec": {"clusterIP": "10.96.7.7", "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]}}))?;

    let script = [
        "echo GREETING=$GREETING",
        "echo PASSWORD=$PASSWORD",
        "echo CFG_mode=$CFG_mode",
        "echo DB_URL=$DB_URL",
        "echo K8S_HOST=$KUBERNETES_SERVICE_HOST",
        "echo K8S_PORT=$KUBERNETES_SERVICE_PORT",
        "echo MY_DB_HOST=$MY_DB_SERVICE_HOST",
        "echo MY_DB_TCP=$MY_DB_PORT_5432_TCP",
        "echo SECRET_FILE=$(cat /etc/secret/password)",
        "echo SECRET_MODE=$(stat -L -c %a /etc/secret/password)",
        "echo SECRET_FS=$(awk '$2 == \"/etc/secret\" {print $3}' /proc/mounts)",
        "echo SA_FS=$(awk '$2 == \"/var/run/secrets/kubernetes.io/serviceaccount\" {print $3}' /proc/mounts)",
        "echo CFG_RO=$(touch /etc/cfg/x 2>/dev/null && echo writable || echo readonly)",
        "echo DATA_LINK=$(readlink /etc/cfg/..data | cut -c1-4)",
        "echo GREETING_LINK=$(readlink /etc/cfg/greeting)",
        &format!("echo TOKEN=$(cat {SA_DIR}/token)"),
        &format!("echo CA=$(head -2 {SA_DIR}/ca.crt | tail -1)"),
        &format!("echo NAMESPACE=$(cat {SA_DIR}/namespace)"),
        "echo VAULT_TOKEN=$(cat /var/run/vault/token)",
        "while true; do echo FILE=$(cat /etc/cfg/greeting); sleep 1; done",
    ]
    .join("; ");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "objects", "namespace": "default"},
        "spec": {
            "nodeName": e2e::kubelet::NODE_NAME,
            "terminationGracePeriodSeconds": 2,
            "volumes": [
                {"name": "cfg", "configMap": {"name": "app-config"}},
                {"name": "secret", "secret": {"secretName": "app-secret", "defaultMode": 0o400}},
                // As the ServiceAccount admission plugin adds it.
                {"name": "kube-api-access-e2e01", "projected": {"defaultMode": 0o644, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}},
                {"name": "vault", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 1200, "path": "token"}}
                ]}}
            ],
            "containers": [{
                "name": "app",
                "image": e2e::pods::BUSYBOX,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "app-config"}}],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "password"}}},
                    {"name": "DB_URL", "value": "postgres://$(MY_DB_SERVICE_HOST):$(MY_DB_SERVICE_PORT_SQL)"}
                ],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "secret", "mountPath": "/etc/secret"},
                    {"name": "kube-api-access-e2e01", "mountPath": SA_DIR, "readOnly": true},
                    {"name": "vault", "mountPath": "/var/run/vault"}
                ]
            }]
        }
    });
    cluster.apply(&pod)?;
    let pod = cluster.wait_pod("objects", &kubelet, running).await?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let log = log_path(&kubelet, &pod)?;
    let text = wait_log(&log, "FILE=hello", LONG).await?;

    let expect = [
        ("GREETING", "hello"),
        ("PASSWORD", "s3cr3t"),
        ("CFG_mode", "fast"),
        ("DB_URL", "postgres://10.96.7.7:5432"),
        ("K8S_HOST", "10.96.0.1"),
        ("K8S_PORT", "443"),
        ("MY_DB_HOST", "10.96.7.7"),
        ("MY_DB_TCP", "tcp://10.96.7.7:5432"),
        ("SECRET_FILE", "s3cr3t"),
        ("SECRET_MODE", "400"),
        ("SECRET_FS", "tmpfs"),
        ("SA_FS", "tmpfs"),
        ("CFG_RO", "readonly"),
        ("DATA_LINK", "..20"),
        ("GREETING_LINK", "..data/greeting"),
        ("CA", "TESTCA"),
        ("NAMESPACE", "default"),
    ];
    for (key, want) in expect {
        if key == "CA" && cluster.server().is_none() {
            // A real cluster's CA: only that it is there.
            assert!(logged(&text, key).is_some_and(|v| !v.is_empty()), "{text}");
            continue;
        }
        assert_eq!(logged(&text, key), Some(want), "{key} in:\n{text}");
    }

    // The tokens: issued by the API server for this pod's service account, bound to it.
    let token = logged(&text, "TOKEN").context("no token")?.to_string();
    let c = claims(&token)?;
    assert_eq!(c["sub"], "system:serviceaccount:default:default", "{c}");
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "objects", "{c}");
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], uid.as_str(), "{c}");
    let review = cluster.kubectl(
        &["create", "--validate=false", "-o", "json", "-f", "-"],
        Some(
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}})
            .to_string(),
        ),
    )?;
    let review: Value = serde_json::from_str(&review)?;
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:default:default"
    );
    let vault = logged(&text, "VAULT_TOKEN").context("no vault token")?;
    let vc = claims(vault)?;
    assert_eq!(vc["aud"], json!(["vault"]), "{vc}");
    assert_ne!(vault, token, "a token per audience");
    // What the kubelet asked the API server (only the test server keeps a log).
    let requests = cluster.server().map(|s| s.requests()).unwrap_or_default();
    let token_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("/serviceaccounts/default/token"))
        .collect();
    if cluster.server().is_some() {
        assert_eq!(token_requests.len(), 2, "{token_requests:?}");
    }

    // The config map changes: the running pod sees the new content, without a restart.
    cluster.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "app-config", "namespace": "default"},
        "data": {"greeting": "bonjour", "mode": "fast"}}))?;
    wait_log(&log, "FILE=bonjour", LONG)
        .await
        .with_context(|| tail(&kubelet.log_text(), 40))?;
    let now = cluster.pod("objects")?.context("pod")?;
    assert_eq!(now["status"]["containerStatuses"][0]["restartCount"], 0);

    // The kubelet read only what the pod references: no list of config maps or secrets.
    let requests = cluster.server().map(|s| s.requests()).unwrap_or_default();
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "GET" && !r.user_agent.starts_with("kubectl"))
        .filter(|r| r.path.contains("/configmaps") || r.path.contains("/secrets"))
        .filter(|r| !r.path.contains("metadata.name"))
        .filter(|r| !(r.path.contains("/configmaps/") || r.path.contains("/secrets/")))
        .collect();
    assert!(lists.is_empty(), "unscoped reads: {lists:?}");

    cluster.kubectl(
        &["delete", "pod", "-n", "default", "objects", "--wait=false"],
        None,
    )?;
    cluster.wait_pod_gone("objects", &kubelet).await?;
    Ok(())
}

trait GoneExt {
    async fn wait_pod_gone(&self, name: &str, kubelet: &KubeletNode) -> R;
}

impl GoneExt for Cluster {
    async fn wait_pod_gone(&self, name: &str, kubelet: &KubeletNode) -> R {
        let deadline = Instant::now() + LONG;
        while self.pod(name)?.is_some() {
            if Instant::now() > deadline {
                bail!(
                    "pod {name} not gone after {LONG:?}\n{}",
                    tail(&kubelet.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

fn waiting(pod: &Value) -> (&str, &str) {
    let w = container_state(pod, "waiting");
    (
        w["reason"].as_str().unwrap_or_default(),
        w["message"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn missing_objects_keep_containers_from_starting_until_they_exist() -> R {
    let cluster = Cluster::start()?;
    let kubelet = join(&cluster).await?;
    let pod = |name: &str, extra_container: Value, volumes: Value| {
        let mut c = json!({"name": "app", "image": e2e::pods::BUSYBOX,
            "imagePullPolicy": "IfNotPresent", "command": ["sleep", "1000"]});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra_container.as_object()) {
            c.extend(extra.clone());
        }
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": e2e::kubelet::NODE_NAME, "terminationGracePeriodSeconds": 1,
                     "volumes": volumes, "containers": [c]}})
    };
    // An environment variable from a config map that does not exist.
    cluster.apply(&pod(
        "env-missing",
        json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}),
        json!([]),
    ))?;
    // A key that does not exist.
    cluster.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "present", "namespace": "default"}, "data": {"a": "1"}}))?;
    cluster.apply(&pod(
        "key-missing",
        json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "present", "key": "nope"}}}]}),
        json!([]),
    ))?;
    // A volume of a config map that does not exist.
    cluster.apply(&pod(
        "volume-missing",
        json!({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}),
        json!([{"name": "cfg", "configMap": {"name": "absent-volume"}}]),
    ))?;

    let p = cluster
        .wait_pod("env-missing", &kubelet, |p| {
            waiting(p).0 == "CreateContainerConfigError"
        })
        .await?;
    assert_eq!(waiting(&p).1, r#"configmap "absent" not found"#);
    assert_eq!(p["status"]["phase"], "Pending");
    let p = cluster
        .wait_pod("key-missing", &kubelet, |p| {
            waiting(p).0 == "CreateContainerConfigError"
        })
        .await?;
    assert_eq!(
        waiting(&p).1,
        "couldn't find key nope in ConfigMap default/present"
    );
    let p = cluster
        .wait_pod("volume-missing", &kubelet, |p| {
            waiting(p).1.contains("absent-volume")
        })
        .await?;
    assert_eq!(
        waiting(&p),
        (
            "ContainerCreating",
            r#"MountVolume.SetUp failed for volume "cfg" : configmap "absent-volume" not found"#
        )
    );

    // Once the objects exist, the containers start.
    for name in ["absent", "absent-volume"] {
        cluster.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}}))?;
    }
    cluster.wait_pod("env-missing", &kubelet, running).await?;
    cluster
        .wait_pod("volume-missing", &kubelet, running)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_static_pod_may_not_reference_api_objects() -> R {
    let cluster = Cluster::start()?;
    let kubelet = join(&cluster).await?;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "static-cfg", "namespace": "default"},
        "spec": {
            "volumes": [{"name": "cfg", "configMap": {"name": "anything"}}],
            "containers": [{"name": "app", "image": e2e::pods::BUSYBOX,
                "imagePullPolicy": "IfNotPresent", "command": ["sleep", "1000"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}]
        }
    });
    kubelet.write_manifest("static-cfg.json", &manifest.to_string())?;
    let p = kubelet
        .wait_pod("static-cfg", LONG, |p| {
            e2e::kubelet::waiting_reason(p, "app") == "CreateContainerConfigError"
        })
        .await?;
    let message = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert_eq!(
        message,
        r#"static pods may not reference configmaps (volume "cfg")"#
    );
    // Nothing was run for it.
    let mut rt = kubelet.runtime().await?;
    let sandboxes = e2e::kubelet::sandboxes_of(&mut rt, &e2e::kubelet::uid(&p)).await?;
    assert!(sandboxes.is_empty(), "{sandboxes:?}");
    Ok(())
}

#[tokio::test]
async fn images_are_pulled_with_the_pods_and_the_service_accounts_pull_secrets() -> R {
    use e2e::registry::{Registry, RegistryOptions};
    let reg = Registry::start(RegistryOptions::with_auth("alice", "s3cret"))?;
    let dir = tempfile::tempdir()?;
    // An image of its own (not the preloaded busybox): it has to come from the registry.
    let layout = e2e::image::ImageBuilder::new()
        .layer(e2e::image::busybox_layer()?)
        .layer(e2e::image::Layer::new().file("private-marker", b"pulled".to_vec(), 0o644))
        .cmd(["sh"])
        .write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "private/busybox:1")?;
    let image = reg.image("private/busybox:1");

    let cluster = Cluster::start()?;
    let mut kubelet = join(&cluster).await?;
    // The in-process runtime may speak plain HTTP to this registry.
    kubelet.terminate()?;
    let cri_toml = kubelet.dir().join("cri").join("cri.toml");
    let mut toml = std::fs::read_to_string(&cri_toml)?;
    toml.push_str(&format!("[registry]\ninsecure = [\"{}\"]\n", reg.addr()));
    std::fs::write(&cri_toml, toml)?;
    kubelet.spawn().await?;

    let auths = json!({"auths": {reg.addr(): {"auth": b64("alice:s3cret")}}});
    cluster.apply(&json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "regcred", "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(&auths.to_string())}}))?;
    cluster.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "puller", "namespace": "default"},
        "imagePullSecrets": [{"name": "regcred"}]}))?;
    let pod = |name: &str, extra: Value| {
        let mut spec = json!({"nodeName": e2e::kubelet::NODE_NAME,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always",
                            "command": ["sleep", "1000"]}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    };
    cluster.apply(&pod(
        "own-secret",
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ))?;
    cluster.apply(&pod("sa-secret", json!({"serviceAccountName": "puller"})))?;
    cluster.apply(&pod("no-secret", json!({})))?;
    cluster.wait_pod("own-secret", &kubelet, running).await?;
    cluster.wait_pod("sa-secret", &kubelet, running).await?;
    let p = cluster
        .wait_pod("no-secret", &kubelet, |p| {
            matches!(waiting(p).0, "ErrImagePull" | "ImagePullBackOff")
        })
        .await?;
    assert_eq!(p["status"]["phase"], "Pending");
    Ok(())
}
