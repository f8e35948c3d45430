//! Our kubelet against another CRI runtime: Debian's containerd, started by the test
//! with a config of its own (state in a temporary directory, a busybox pause image, a
//! CNI bridge and subnet of the test's own), images imported with `ctr`, no network.
//!
//! If containerd itself cannot run pods on this machine (a cgroup layout it does not
//! support, say), the test says so — `skipped: <reason>` with containerd's log — and
//! passes; that is decided by asking containerd directly, before our kubelet is involved.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use e2e::image::{ImageBuilder, REF_NAME_ANNOTATION, busybox_layer, write_oci_archive};
use e2e::kubelet::{
    KubeletNode, TestNetwork, condition, container_id, containers_of, pod_ip, running_and_ready,
    sandboxes_of, uid, unmount_under,
};
use e2e::pods::{BUSYBOX, BUSYBOX_PAUSE};
use proto::v1;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

type R<T = ()> = anyhow::Result<T>;

const LIMIT: Duration = Duration::from_secs(60);
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";

/// A containerd of the test's own.
struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    net: TestNetwork,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> R<Self> {
        let dir = tempfile::tempdir()?;
        let net = TestNetwork::create(dir.path(), "nlc", 246)?;
        let p = |rel: &str| dir.path().join(rel).display().to_string();
        let socket = dir.path().join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
"#,
            root = p("root"),
            state = p("state"),
            socket = socket.display(),
            opt = p("opt"),
            pause = BUSYBOX_PAUSE,
            conf_dir = net.conf_dir.display(),
            runc = p("runc"),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("containerd.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning containerd")?;
        Ok(Self {
            child: Some(child),
            socket,
            log,
            net,
            dir,
        })
    }

    /// Waits (bounded) until containerd answers CRI Version; Err is why it does not.
    async fn wait_serving(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("containerd exited with {status}"));
            }
            if let Ok(mut c) = self.runtime().await
                && c.version(v1::VersionRequest {
                    version: "v1".into(),
                })
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("containerd did not serve CRI within {LIMIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn runtime(&self) -> R<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(
            e2e::cri::connect(&self.socket).await?,
        ))
    }

    /// `ctr -a <sock> -n k8s.io images import <archive>`, as an operator preloads images.
    fn import(&self, archive: &Path) -> R {
        let out = Command::new(CTR)
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr images import {}: {}\n{}",
                archive.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The error lines of containerd's log (or its tail).
    fn log_excerpt(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=fatal"))
            .collect();
        let lines: Vec<&str> = if errors.is_empty() {
            text.lines().collect()
        } else {
            errors
        };
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Can containerd run a pod here at all? A sandbox and a container, straight over
    /// CRI, then removed. Err is containerd's answer.
    async fn can_run_pods(&self) -> R<Result<(), String>> {
        let mut c = self.runtime().await?;
        let config = v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "probe".into(),
                uid: "containerd-probe".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "probe".into(),
            log_directory: self.dir.path().join("probe-logs").display().to_string(),
            linux: Some(v1::LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let pod = match c
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
        {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => return Ok(Err(format!("RunPodSandbox: {}", e.message()))),
        };
        let result = async {
            let id = c
                .create_container(v1::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(v1::ContainerConfig {
                        metadata: Some(v1::ContainerMetadata {
                            name: "probe".into(),
                            attempt: 0,
                        }),
                        image: Some(v1::ImageSpec {
                            image: BUSYBOX.into(),
                            ..Default::default()
                        }),
                        command: vec!["sleep".into(), "3600".into()],
                        log_path: "probe.log".into(),
                        linux: Some(v1::LinuxContainerConfig::default()),
                        ..Default::default()
                    }),
                    sandbox_config: Some(config.clone()),
                })
                .await
                .map_err(|e| format!("CreateContainer: {}", e.message()))?
                .into_inner()
                .container_id;
            c.start_container(v1::StartContainerRequest { container_id: id })
                .await
                .map_err(|e| format!("StartContainer: {}", e.message()))?;
            Ok::<(), String>(())
        }
        .await;
        let _ = c
            .stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await;
        let _ = c
            .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await;
        Ok(result)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the pid of a child we have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_under(self.dir.path());
        self.net.delete();
    }
}

/// An OCI archive of busybox named `name` whose config sets `PATH`, as published images
/// do (containerd, unlike our runtime, adds no default), optionally with an entrypoint.
fn busybox_archive(out: &Path, name: &str, entrypoint: Option<&[&str]>) -> R {
    let dir = tempfile::tempdir()?;
    let mut builder = ImageBuilder::new()
        .layer(busybox_layer()?)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .cmd(["sh"]);
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

fn skipped(reason: &str, containerd: &Containerd) {
    println!(
        "skipped: {reason}\ncontainerd log:\n{}",
        containerd.log_excerpt()
    );
}

#[tokio::test]
async fn our_kubelet_runs_a_static_pod_on_containerd() -> R {
    if !Path::new(CONTAINERD).is_file() || !Path::new(CTR).is_file() {
        println!("skipped: {CONTAINERD} or {CTR} is not installed (scripts/setup.sh installs it)");
        return Ok(());
    }
    let mut containerd = Containerd::start()?;
    if let Err(reason) = containerd.wait_serving().await {
        skipped(&reason, &containerd);
        return Ok(());
    }
    let images = containerd.dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    busybox_archive(&images.join("busybox.tar"), BUSYBOX, None)?;
    busybox_archive(
        &images.join("pause.tar"),
        BUSYBOX_PAUSE,
        Some(&["sleep", "2147483647"]),
    )?;
    containerd.import(&images.join("busybox.tar"))?;
    containerd.import(&images.join("pause.tar"))?;
    if let Err(reason) = containerd.can_run_pods().await? {
        skipped(
            &format!("containerd cannot run a pod here: {reason}"),
            &containerd,
        );
        return Ok(());
    }

    // From here on containerd works: anything that fails is ours.
    let node = KubeletNode::start_external(&containerd.socket).await?;
    node.write_manifest(
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "echo hello from containerd > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp"]
    readinessProbe:
      exec:
        command: [cat, /tmp/index.html]
      periodSeconds: 1
"#
        ),
    )?;
    let pod = node
        .wait_ready("web", LIMIT)
        .await
        .with_context(|| format!("containerd log (errors):\n{}", containerd.log_excerpt()))?;
    assert!(running_and_ready(&pod));
    assert_eq!(condition(&pod, "ContainersReady"), "True");
    let status = pod.status.clone().unwrap_or_default();
    let cs = status.container_statuses.unwrap_or_default();
    assert!(
        cs[0]
            .container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("containerd://")),
        "{cs:?}"
    );
    let ip = pod_ip(&pod);
    assert!(
        containerd.net.contains(&ip),
        "pod ip {ip} in {}",
        containerd.net.subnet
    );

    // containerd runs what /pods reports.
    let mut c = containerd.runtime().await?;
    let containers = containers_of(&mut c, &uid(&pod)).await?;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].id, container_id(&pod, "app"));
    assert_eq!(
        containers[0].state,
        v1::ContainerState::ContainerRunning as i32
    );
    let listed = c
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    assert!(listed.iter().any(|l| l.id == containers[0].id));
    let body = {
        let deadline = Instant::now() + LIMIT;
        loop {
            match e2e::http::get(&format!("{ip}:8080"), "/index.html", &[]) {
                Ok(r) if r.status == 200 => break String::from_utf8_lossy(&r.body).into_owned(),
                other if Instant::now() > deadline => bail!("web server on {ip}: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    assert_eq!(body.trim(), "hello from containerd");

    // Removing the manifest removes the pod from containerd.
    node.remove_manifest("web.yaml")?;
    node.wait_for(LIMIT, |pods| pods.is_empty()).await?;
    assert!(sandboxes_of(&mut c, &uid(&pod)).await?.is_empty());
    Ok(())
}
