//! The control plane of a cluster test, and a kubelet joined to it, driven as a user
//! drives them: with `kubectl`. By default the control plane is the e2e test API server
//! ([`crate::apiserver`]) and the kubelet gets a kubeconfig of its own. With
//! `E2E_KUBECONFIG=<admin kubeconfig>` it is that real API server instead: the harness
//! creates a bootstrap token (a `bootstrap.kubernetes.io/token` Secret in kube-system)
//! and the RBAC a bootstrapping node needs (create CSRs, auto-approval of node client
//! certificates), writes a bootstrap kubeconfig from the admin kubeconfig's server and
//! CA, and starts the kubelet with `--bootstrap-kubeconfig`, under a node name of this
//! run's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::apiserver::ApiServer;
use crate::kubelet::KubeletNode;

type R<T = ()> = anyhow::Result<T>;

/// The control plane of a test: ours, or a real one named by E2E_KUBECONFIG.
pub struct Cluster {
    server: Option<ApiServer>,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// The test API server, or the real one `E2E_KUBECONFIG` names.
    pub fn start() -> R<Self> {
        let dir = tempfile::tempdir()?;
        if let Some(k) = std::env::var_os("E2E_KUBECONFIG") {
            return Ok(Self {
                server: None,
                kubeconfig: PathBuf::from(k),
                dir,
            });
        }
        let server = ApiServer::start()?;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        Ok(Self {
            server: Some(server),
            kubeconfig,
            dir,
        })
    }

    /// `kubectl …` with this cluster's kubeconfig and `stdin`; its stdout.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> R<String> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl get … -o json`, or None when it does not exist.
    pub fn get(&self, args: &[&str]) -> R<Option<Value>> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend(["-o", "json", "--ignore-not-found"]);
        let out = self.kubectl(&a, None)?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&out)?))
    }

    /// Polls (bounded) `kubectl get` until `pred` holds; returns the object.
    pub async fn wait(
        &self,
        args: &[&str],
        limit: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> R<Option<Value>> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.get(args)?;
            if pred(v.as_ref()) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "kubectl get {} not as expected after {limit:?}: {}",
                    args.join(" "),
                    v.map(|v| v.to_string()).unwrap_or_else(|| "absent".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Always the test API server (for what only it can do, e.g. an outage).
    pub fn test_server() -> R<Self> {
        let dir = tempfile::tempdir()?;
        let server = ApiServer::start()?;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        Ok(Self {
            server: Some(server),
            kubeconfig,
            dir,
        })
    }

    /// The test API server, when this is it (its store, request log, pause/resume).
    pub fn server(&self) -> Option<&ApiServer> {
        self.server.as_ref()
    }

    /// `kubectl apply` of one object.
    pub fn apply(&self, obj: &Value) -> R {
        self.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()))?;
        Ok(())
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Against a real cluster: a bootstrap token and its RBAC, and a bootstrap
    /// kubeconfig for the kubelet (in `dir`). Returns its path.
    fn bootstrap_kubeconfig(&self, dir: &Path) -> R<PathBuf> {
        let id: String = format!("{:06x}", std::process::id() % 0xffffff);
        let secret = format!(
            "{:016x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
                % u128::from(u64::MAX)
        );
        let token = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": id, "token-secret": secret,
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": "system:bootstrappers:nodelet-e2e",
                "expiration": k8s_openapi::jiff::Timestamp::now()
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(2))?
                    .to_string(),
            }
        });
        self.kubectl(&["apply", "-f", "-"], Some(&token.to_string()))?;
        for (name, role, group) in [
            (
                "nodelet-e2e-bootstrap",
                "system:node-bootstrapper",
                "system:bootstrappers:nodelet-e2e",
            ),
            (
                "nodelet-e2e-autoapprove",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                "system:bootstrappers:nodelet-e2e",
            ),
            (
                "nodelet-e2e-autorenew",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                "system:nodes",
            ),
        ] {
            let binding = serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]
            });
            self.kubectl(&["apply", "-f", "-"], Some(&binding.to_string()))?;
        }
        // The server and CA of the admin kubeconfig, with the token as the user.
        let view = self.kubectl(
            &[
                "config",
                "view",
                "--raw",
                "--minify",
                "--flatten",
                "-o",
                "json",
            ],
            None,
        )?;
        let view: Value = serde_json::from_str(&view)?;
        let cluster = &view["clusters"][0]["cluster"];
        let path = dir.join("bootstrap-kubeconfig");
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": "bootstrap", "user": {"token": format!("{id}.{secret}")}}],
            "contexts": [{"name": "bootstrap", "context": {"cluster": "cluster", "user": "bootstrap"}}],
            "current-context": "bootstrap"
        });
        std::fs::write(&path, kubeconfig.to_string())?;
        Ok(path)
    }
}

/// The node name the test kubelet runs as (`testnode` against the test server; a name
/// of this run's own against a real one).
impl Drop for Cluster {
    /// Against a real cluster, the test's Node goes (the pod GC then removes the pods
    /// left bound to it).
    fn drop(&mut self) {
        if self.server.is_none() {
            let name = node_name();
            let _ = self.kubectl(
                &[
                    "delete",
                    "node",
                    &name,
                    "--ignore-not-found",
                    "--wait=false",
                ],
                None,
            );
        }
    }
}

/// The node name the test kubelet runs as: `testnode` against the test server (one
/// server per test); against a real cluster, a name of this test's own (tests run in
/// parallel, each on its own thread named after it), so no two kubelets share a Node.
pub fn node_name() -> String {
    if std::env::var_os("E2E_KUBECONFIG").is_none() {
        return crate::kubelet::NODE_NAME.to_string();
    }
    use sha2::Digest as _;
    let test = std::thread::current().name().unwrap_or("main").to_string();
    let digest = sha2::Sha256::digest(test.as_bytes());
    format!(
        "nodelet-e2e-{}-{}",
        std::process::id(),
        &hex::encode(digest)[..6]
    )
}

pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

pub fn pod_manifest(name: &str, node: &str, script: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app",
                "image": crate::pods::BUSYBOX,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}
            }]
        }
    })
    .to_string()
}

/// Starts a kubelet (CRI in-process) joined to `cluster` with `extra` flags: its own
/// kubeconfig on the test server; TLS bootstrap with a token on a real cluster.
pub async fn join(cluster: &Cluster, extra: &[&str]) -> R<KubeletNode> {
    let node = node_name();
    let mut flags = vec![
        "--hostname-override".to_string(),
        node,
        "--node-labels".to_string(),
        "nodelet.dev/e2e=true".to_string(),
    ];
    if cluster.server.is_none() {
        // A real cluster: TLS bootstrap with a token, as a new node joins.
        let dir = cluster.dir.path();
        let bootstrap = cluster.bootstrap_kubeconfig(dir)?;
        flags.extend([
            "--bootstrap-kubeconfig".to_string(),
            bootstrap.display().to_string(),
            "--kubeconfig".to_string(),
            dir.join("kubelet-kubeconfig").display().to_string(),
            "--cert-dir".to_string(),
            dir.join("pki").display().to_string(),
        ]);
    } else {
        flags.extend([
            "--kubeconfig".to_string(),
            cluster.kubeconfig().display().to_string(),
        ]);
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    KubeletNode::start_with(&flags).await
}
