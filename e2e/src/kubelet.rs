//! The `kubelet` binary in standalone mode, as a user runs it: a directory of static pod
//! manifests, its read-only `/pods` endpoint, and a CRI runtime — by default ours
//! in-process (with a CNI network of the test's own and busybox preloaded), or any
//! external endpoint (containerd).
//!
//! Pods outlive the agent by design, so dropping a [`KubeletNode`] stops the kubelet and
//! then removes every pod through the CRI; for the in-process runtime that means a
//! `cri` server started on the same state just for the cleanup.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use proto::v1;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::cri::{CriServer, binary, connect};
use crate::pods::{BUSYBOX, busybox_archive};

/// The node name every test kubelet runs as: static pods are `<name>-testnode`.
pub const NODE_NAME: &str = "testnode";

/// A CNI network of the test's own: a bridge and a /24 that no other test uses.
#[derive(Debug, Clone)]
pub struct TestNetwork {
    pub bridge: String,
    pub subnet: String,
    /// The conflist directory (`conf_dir`) holding only this network.
    pub conf_dir: PathBuf,
}

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

impl TestNetwork {
    /// Writes a bridge + host-local + portmap conflist under `dir`. `prefix` names the
    /// bridge (`<prefix><n>`, at most 15 bytes) and `second_octet` picks the /16 the
    /// subnet `10.<second_octet>.<n>.0/24` comes from, so harnesses never overlap.
    pub fn create(dir: &Path, prefix: &str, second_octet: u8) -> anyhow::Result<Self> {
        let start = std::process::id() * 7 + NEXT_NET.fetch_add(1, Ordering::Relaxed) * 13;
        // Skip bridges that exist already (another test, or one left by a crash).
        let octet = (0..200)
            .map(|i| (start + i * 13) % 200 + 20)
            .find(|o| {
                !Path::new("/sys/class/net")
                    .join(format!("{prefix}{o}"))
                    .exists()
            })
            .context("no free test bridge name")?;
        let bridge = format!("{prefix}{octet}");
        let subnet = format!("10.{second_octet}.{octet}.0/24");
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&conf_dir)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("test-{bridge}"),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": subnet }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": dir.join("ipam"),
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        });
        std::fs::write(conf_dir.join("10-test.conflist"), conflist.to_string())?;
        Ok(Self {
            bridge,
            subnet,
            conf_dir,
        })
    }

    /// Whether `ip` is an address of this network.
    pub fn contains(&self, ip: &str) -> bool {
        ip.starts_with(self.subnet.trim_end_matches("0/24"))
    }

    /// Deletes the bridge (CNI creates it with the first pod and never removes it).
    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// Which CRI runtime the kubelet uses.
enum Runtime {
    /// Ours, in-process; its state (config, socket, root) under this directory, laid
    /// out as [`CriServer`] expects so one can be started on it for the cleanup.
    InProcess { cri_dir: PathBuf, net: TestNetwork },
    /// `--container-runtime-endpoint unix://<socket>`.
    External,
}

/// A running `kubelet` with its manifests, state, logs and read-only port in a
/// temporary directory.
pub struct KubeletNode {
    child: Option<Child>,
    runtime: Runtime,
    /// The CRI socket the kubelet uses (in-process: ours; else the external one).
    pub socket: PathBuf,
    /// `--pod-manifest-path`.
    pub manifests: PathBuf,
    /// `--root-dir`.
    pub root_dir: PathBuf,
    /// `podLogsDir`: `<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub pod_logs: PathBuf,
    /// The kubelet's stderr (all restarts, appended).
    pub log: PathBuf,
    /// `127.0.0.1:<read-only port>`.
    pub addr: String,
    /// `--cgroup-root`, of this node's own: its pod cgroups are `<root>/kubepods/…`, and
    /// no two test kubelets sweep each other's.
    pub cgroup_root: String,
    args: Vec<std::ffi::OsString>,
    dir: tempfile::TempDir,
}

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// Where the host's hierarchies hold `rel` (a cgroup path without the leading `/`):
/// the one unified directory on cgroup v2, one per controller on v1.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Removes a cgroup and everything below it, leaves first (cgroupfs only rmdirs).
fn remove_cgroup_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A loopback port nobody listens on now.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl KubeletNode {
    /// A kubelet with our CRI in-process: its own CNI bridge and subnet
    /// (`10.245.<n>.0/24`), busybox preloaded, the read-only port on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`KubeletNode::start`] with more flags (e.g. `--kubeconfig` to join a cluster).
    pub async fn start_with(flags: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let net = TestNetwork::create(dir.path(), "nlk", 245)?;
        let preload = dir.path().join("preload");
        std::fs::create_dir_all(&preload)?;
        busybox_archive(&preload.join("busybox.tar"), BUSYBOX, None, None)?;
        let cri_dir = dir.path().join("cri");
        let socket = cri_dir.join("cri.sock");
        let toml = format!(
            "socket = {:?}\nroot = {:?}\nstate = {:?}\nimage_preload_dir = {:?}\n[cni]\nconf_dir = {:?}\n",
            socket.display().to_string(),
            cri_dir.join("root").display().to_string(),
            cri_dir.join("state").display().to_string(),
            preload.display().to_string(),
            net.conf_dir.display().to_string(),
        );
        CriServer::write_config(&cri_dir, &toml)?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "--cri-config".into(),
            cri_dir.join("cri.toml").into_os_string(),
            "--image-preload-dir".into(),
            preload.into_os_string(),
        ];
        args.extend(flags.iter().map(std::ffi::OsString::from));
        Self::launch(dir, Runtime::InProcess { cri_dir, net }, socket, args).await
    }

    /// A kubelet using the external CRI runtime listening on `socket`.
    pub async fn start_external(socket: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let args = vec![
            "--container-runtime-endpoint".into(),
            format!("unix://{}", socket.display()).into(),
        ];
        Self::launch(dir, Runtime::External, socket.to_path_buf(), args).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        runtime: Runtime,
        socket: PathBuf,
        extra: Vec<std::ffi::OsString>,
    ) -> anyhow::Result<Self> {
        let manifests = dir.path().join("manifests");
        let root_dir = dir.path().join("kubelet");
        let pod_logs = dir.path().join("pod-logs");
        std::fs::create_dir_all(&manifests)?;
        let config = dir.path().join("kubelet-config.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\npodLogsDir: {}\n",
                pod_logs.display()
            ),
        )?;
        let port = free_port()?;
        let cgroup_root = format!(
            "/nodelet-e2e-{}-{}",
            std::process::id(),
            NEXT_NODE.fetch_add(1, Ordering::Relaxed)
        );
        let mut args: Vec<std::ffi::OsString> = vec![
            "--cgroup-root".into(),
            cgroup_root.clone().into(),
            "--config".into(),
            config.into_os_string(),
            "--pod-manifest-path".into(),
            manifests.clone().into_os_string(),
            "--root-dir".into(),
            root_dir.clone().into_os_string(),
            "--read-only-port".into(),
            port.to_string().into(),
        ];
        if !extra.iter().any(|a| a == "--hostname-override") {
            args.extend(["--hostname-override".into(), NODE_NAME.into()]);
        }
        args.extend(extra);
        let mut node = Self {
            child: None,
            runtime,
            socket,
            manifests,
            root_dir,
            pod_logs,
            log: dir.path().join("kubelet.log"),
            addr: format!("127.0.0.1:{port}"),
            cgroup_root,
            args,
            dir,
        };
        node.spawn().await?;
        Ok(node)
    }

    /// Starts the kubelet (again) with the same flags and state; returns once `/healthz`
    /// answers (the runtime is connected and images are preloaded by then).
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("kubelet is running already");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("kubelet")?)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning kubelet")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if crate::http::get(&self.addr, "/healthz", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "kubelet exited with {status} before serving; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "kubelet did not serve /healthz within 60s; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, as an operator stops the agent; waits (bounded) for it to exit.
    /// More flags for the next [`KubeletNode::spawn`].
    pub fn add_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(std::ffi::OsString::from));
    }

    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("kubelet is not running")?;
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("kill failed: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("kubelet did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The kubelet's log so far.
    /// The kubelet's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The CNI network of the in-process runtime (None with an external runtime).
    pub fn network(&self) -> Option<&TestNetwork> {
        match &self.runtime {
            Runtime::InProcess { net, .. } => Some(net),
            Runtime::External => None,
        }
    }

    /// The test's temporary directory (for hostPath volumes and markers).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `manifests/<file>` atomically (a dot file renamed into place: the kubelet
    /// ignores dot files, so it never reads half a manifest).
    pub fn write_manifest(&self, file: &str, text: &str) -> anyhow::Result<PathBuf> {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        let path = self.manifests.join(file);
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    pub fn remove_manifest(&self, file: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.manifests.join(file))
            .with_context(|| format!("removing manifest {file}"))
    }

    /// `GET /pods`: every pod the kubelet runs, with its status.
    pub fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let resp = crate::http::get(&self.addr, "/pods", &[])?;
        if resp.status != 200 {
            bail!("GET /pods: status {}", resp.status);
        }
        let mut list = resp.json()?;
        let items = list
            .get_mut("items")
            .map(serde_json::Value::take)
            .context("GET /pods: no items")?;
        serde_json::from_value(items).context("GET /pods: items are not pods")
    }

    /// Re-reads `/pods` until `done` holds for them (bounded by `limit`); returns them.
    /// On timeout the error carries the last pods seen and the tail of the kubelet log.
    pub async fn wait_for(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[Pod]) -> bool,
    ) -> anyhow::Result<Vec<Pod>> {
        let deadline = Instant::now() + limit;
        loop {
            let pods = self.pods()?;
            if done(&pods) {
                return Ok(pods);
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = pods.iter().map(summary).collect();
                bail!(
                    "condition not met within {limit:?}; pods:\n{}\nkubelet log (tail):\n{}",
                    seen.join("\n"),
                    tail(&self.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until the static pod from manifest name `name` satisfies `done`.
    pub async fn wait_pod(
        &self,
        name: &str,
        limit: Duration,
        mut done: impl FnMut(&Pod) -> bool,
    ) -> anyhow::Result<Pod> {
        let full = static_name(name);
        let pods = self
            .wait_for(limit, |pods| {
                pods.iter()
                    .any(|p| p.metadata.name.as_deref() == Some(full.as_str()) && done(p))
            })
            .await?;
        pods.into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(full.as_str()) && done(p))
            .context("pod vanished")
    }

    /// Waits (bounded) until the static pod `name` is Running and Ready.
    pub async fn wait_ready(&self, name: &str, limit: Duration) -> anyhow::Result<Pod> {
        self.wait_pod(name, limit, running_and_ready).await
    }

    /// A CRI runtime client on the socket the kubelet uses.
    pub async fn runtime(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect(&self.socket).await?))
    }

    /// Where the kubelet keeps a container's logs.
    pub fn container_log(&self, pod: &Pod, container: &str, restart: i32) -> PathBuf {
        self.pod_logs
            .join(format!(
                "{}_{}_{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default(),
                uid(pod)
            ))
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Removes every pod the runtime has (pods outlive the agent).
    fn remove_all_pods(socket: &Path) -> Option<()> {
        let socket = socket.to_path_buf();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut c = RuntimeServiceClient::new(connect(&socket).await.ok()?);
                let pods = c
                    .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                for p in pods {
                    let _ = c
                        .stop_pod_sandbox(v1::StopPodSandboxRequest {
                            pod_sandbox_id: p.id.clone(),
                        })
                        .await;
                    let _ = c
                        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
                Some(())
            })
        })
        .join()
        .ok()?
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        if self.child.is_some() && self.terminate().is_err() {
            eprintln!("kubelet log:\n{}", tail(&self.log_text(), 40));
        }
        match &self.runtime {
            Runtime::InProcess { cri_dir, net } => {
                // The runtime went with the kubelet: serve its state once more to clean up.
                if let Ok(mut cri) = CriServer::start(cri_dir, &[]) {
                    Self::remove_all_pods(&cri.socket);
                    let _ = cri.kill();
                }
                net.delete();
            }
            Runtime::External => {
                Self::remove_all_pods(&self.socket);
            }
        }
        unmount_under(self.dir.path());
        for dir in cgroup_dirs(self.cgroup_root.trim_start_matches('/')) {
            remove_cgroup_tree(&dir);
        }
    }
}

/// Lazily unmounts whatever is still mounted below `dir` (volumes of pods removed
/// behind the kubelet's back), deepest first, so the temporary directory can go.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .args(["-l", p])
            .stderr(Stdio::null())
            .status();
    }
}

/// `<name>-testnode`, the name of the static pod from a manifest naming `name`.
pub fn static_name(name: &str) -> String {
    format!("{name}-{NODE_NAME}")
}

pub fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// The status of condition `kind` ("Ready", "Initialized"…): "True", "False", or "".
pub fn condition<'a>(pod: &'a Pod, kind: &str) -> &'a str {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .map_or("", |c| c.status.as_str())
}

pub fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && condition(pod, "Ready") == "True"
}

/// The status of container `name` (regular or init).
pub fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let st = pod.status.as_ref()?;
    st.container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

/// The runtime's id of container `name` (without the `runtime://` prefix), "" if none.
pub fn container_id(pod: &Pod, name: &str) -> String {
    container(pod, name)
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()))
        .unwrap_or_default()
}

pub fn restart_count(pod: &Pod, name: &str) -> i32 {
    container(pod, name).map_or(0, |c| c.restart_count)
}

/// The reason container `name` is waiting ("CrashLoopBackOff"…), "" if it is not.
pub fn waiting_reason<'a>(pod: &'a Pod, name: &str) -> &'a str {
    container(pod, name)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref())
        .unwrap_or_default()
}

pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// One line about a pod for failure messages.
fn summary(pod: &Pod) -> String {
    let containers: Vec<String> = pod
        .status
        .as_ref()
        .map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
                .map(|c| {
                    let state = c.state.as_ref().map_or("?".to_string(), |s| {
                        if let Some(w) = &s.waiting {
                            format!("waiting({})", w.reason.as_deref().unwrap_or_default())
                        } else if let Some(t) = &s.terminated {
                            format!("terminated({})", t.exit_code)
                        } else if s.running.is_some() {
                            "running".into()
                        } else {
                            "?".into()
                        }
                    });
                    format!(
                        "{}={state},ready={},restarts={}",
                        c.name, c.ready, c.restart_count
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "  {} uid={} phase={} ready={} [{}]",
        pod.metadata.name.as_deref().unwrap_or_default(),
        uid(pod),
        phase(pod),
        condition(pod, "Ready"),
        containers.join(" ")
    )
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The sandboxes of pod `uid` in the runtime (any state).
pub async fn sandboxes_of(
    c: &mut RuntimeServiceClient<Channel>,
    uid: &str,
) -> anyhow::Result<Vec<v1::PodSandbox>> {
    Ok(c.list_pod_sandbox(v1::ListPodSandboxRequest {
        filter: Some(v1::PodSandboxFilter {
            label_selector: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
            ..Default::default()
        }),
    })
    .await
    .context("ListPodSandbox")?
    .into_inner()
    .items)
}

/// The containers of pod `uid` in the runtime (any state), oldest first.
pub async fn containers_of(
    c: &mut RuntimeServiceClient<Channel>,
    uid: &str,
) -> anyhow::Result<Vec<v1::ContainerStatus>> {
    let listed = c
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                label_selector: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    let mut out = vec![];
    for l in listed {
        let st = c
            .container_status(v1::ContainerStatusRequest {
                container_id: l.id.clone(),
                verbose: false,
            })
            .await
            .with_context(|| format!("ContainerStatus {}", l.id))?
            .into_inner()
            .status
            .with_context(|| format!("ContainerStatus {}: no status", l.id))?;
        out.push(st);
    }
    out.sort_by_key(|c| c.created_at);
    Ok(out)
}
