//! Pods over CRI for runtime tests: a `cri` server with its own CNI network (a bridge
//! and subnet of the test's own), a preloaded busybox image, and config builders.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use proto::v1;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::cri::CriServer;
use crate::image::{ImageBuilder, REF_NAME_ANNOTATION, busybox_layer, write_oci_archive};

/// The image every runtime test runs, preloaded from an OCI archive.
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";
/// The same busybox whose config says `User: app` (uid 1000).
pub const BUSYBOX_APP: &str = "docker.io/library/busybox:app";
/// The same busybox as a pause image: its entrypoint sleeps forever.
pub const BUSYBOX_PAUSE: &str = "docker.io/library/busybox:pause";

/// A `cri` server ready to run pods, with its state in a temporary directory.
pub struct PodNode {
    pub cri: CriServer,
    pub net: crate::kubelet::TestNetwork,
    /// The pods' subnet (`net.subnet`).
    pub subnet: String,
    _dir: tempfile::TempDir,
}

/// Writes an OCI archive of busybox named `name`, optionally with a config user and
/// an entrypoint.
pub fn busybox_archive(
    out: &Path,
    name: &str,
    user: Option<&str>,
    entrypoint: Option<&[&str]>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut builder = ImageBuilder::new().layer(busybox_layer()?).cmd(["sh"]);
    if let Some(u) = user {
        builder = builder.user(u);
    }
    if let Some(e) = entrypoint {
        builder = builder
            .entrypoint(e.iter().copied())
            .cmd(Vec::<String>::new());
    }
    let layout = builder.write_layout(&dir.path().join("layout"))?;
    let index_path = layout.dir().join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    index["manifests"][0]["annotations"][REF_NAME_ANNOTATION] =
        serde_json::Value::String(name.to_string());
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    write_oci_archive(layout.dir(), out)
}

impl PodNode {
    /// Starts `cri` with a CNI network of its own (bridge `nlt<n>`, a /24 of
    /// 10.244.0.0/16 no other test uses) and the busybox images preloaded.
    pub fn start(extra_toml: &str) -> anyhow::Result<Self> {
        Self::start_with(extra_toml, crate::cri::Spawn::default())
    }

    /// [`PodNode::start`] with the server process set up as `spawn` says.
    pub fn start_with(extra_toml: &str, spawn: crate::cri::Spawn) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let net = crate::kubelet::TestNetwork::create(dir.path(), "nlt", 244)?;
        let preload = dir.path().join("preload");
        std::fs::create_dir_all(&preload)?;
        busybox_archive(&preload.join("busybox.tar"), BUSYBOX, None, None)?;
        busybox_archive(
            &preload.join("busybox-app.tar"),
            BUSYBOX_APP,
            Some("app"),
            None,
        )?;
        busybox_archive(
            &preload.join("busybox-pause.tar"),
            BUSYBOX_PAUSE,
            None,
            Some(&["sleep", "2147483647"]),
        )?;
        let net_d = net.conf_dir.clone();
        let toml = format!(
            "image_preload_dir = \"{}\"\n{extra_toml}\n[cni]\nconf_dir = \"{}\"\n",
            preload.display(),
            net_d.display()
        );
        CriServer::write_config(dir.path(), &toml)?;
        let cri = CriServer::start_with(dir.path(), &[], spawn)?;
        Ok(Self {
            cri,
            subnet: net.subnet.clone(),
            net,
            _dir: dir,
        })
    }

    pub async fn client(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        self.cri.runtime().await
    }

    /// Where pods of this node log.
    pub fn log_dir(&self, pod: &str) -> std::path::PathBuf {
        self.cri.root.join("pod-logs").join(pod)
    }
}

impl Drop for PodNode {
    fn drop(&mut self) {
        // Stop every pod the test left (their processes outlive the server), then the
        // server; then the bridge.
        let socket = self.cri.socket.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut c = RuntimeServiceClient::new(crate::cri::connect(&socket).await.ok()?);
                let pods = c
                    .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                for p in pods {
                    let _ = c
                        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
                Some(())
            })
        })
        .join();
        let _ = self.cri.kill();
        self.net.delete();
    }
}

/// A pod config with its log directory under the node; its containers each get their
/// own PID namespace, as kubelet asks unless `shareProcessNamespace` is set.
pub fn pod_config(node: &PodNode, name: &str) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: node.log_dir(name).to_string_lossy().into_owned(),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    pid: v1::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container running `sh -c script`.
pub fn shell(name: &str, script: &str) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(v1::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// Runs a pod and returns its id.
pub async fn run_pod(
    c: &mut RuntimeServiceClient<Channel>,
    config: &v1::PodSandboxConfig,
) -> anyhow::Result<String> {
    Ok(c.run_pod_sandbox(v1::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .context("RunPodSandbox")?
    .into_inner()
    .pod_sandbox_id)
}

/// Creates and starts a container; returns its id.
pub async fn start(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_config: &v1::PodSandboxConfig,
    config: v1::ContainerConfig,
) -> anyhow::Result<String> {
    let id = c
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    c.start_container(v1::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .context("StartContainer")?;
    Ok(id)
}

pub async fn status(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<v1::ContainerStatus> {
    c.container_status(v1::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await?
    .into_inner()
    .status
    .context("no status")
}

/// Waits (bounded) until the container has exited; returns its status.
pub async fn wait_exited(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    limit: Duration,
) -> anyhow::Result<v1::ContainerStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(c, id).await?;
        if s.state == v1::ContainerState::ContainerExited as i32 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("container {id} still {} after {limit:?}", s.state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `cmd` in a container; returns (exit code, stdout, stderr).
pub async fn exec(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let out = c
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        })
        .await
        .with_context(|| format!("ExecSync {cmd:?}"))?
        .into_inner();
    Ok((
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Waits (bounded) until `path` contains `needle`; returns the text.
pub async fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!(
                "{} has no {needle:?} after {limit:?}:\n{text}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
