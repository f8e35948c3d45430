//! `kubelet`: the node agent. Standalone mode runs static pods from a manifest
//! directory with no control plane: by default with our CRI server in-process (one
//! binary), or against any CRI runtime with `--container-runtime-endpoint`.

mod config;
mod node;
mod readonly;
mod static_pods;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "kubelet", version, about = "Kubernetes node agent")]
pub struct Args {
    /// KubeletConfiguration file (YAML or JSON): staticPodPath, containerRuntimeEndpoint,
    /// readOnlyPort, address, podLogsDir, clusterDNS, clusterDomain. Flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of static pod manifests, or one manifest file.
    #[arg(long = "pod-manifest-path")]
    pod_manifest_path: Option<PathBuf>,
    /// Resolver file for pods with dnsPolicy Default ("" for none); default
    /// /etc/resolv.conf, or systemd-resolved's upstream list when that only names its
    /// 127.0.0.53 stub. Also `resolvConf` in --config.
    #[arg(long = "resolv-conf")]
    resolv_conf: Option<PathBuf>,
    /// CRI endpoint of an external runtime (unix:///run/containerd/containerd.sock);
    /// empty: run our CRI server in-process.
    #[arg(long = "container-runtime-endpoint")]
    container_runtime_endpoint: Option<String>,
    /// Node name instead of the hostname.
    #[arg(long = "hostname-override")]
    hostname_override: Option<String>,
    /// Kubelet state (pod volumes).
    #[arg(long = "root-dir", default_value = "/var/lib/nodelet/kubelet")]
    root_dir: PathBuf,
    /// Address of the read-only endpoint (/pods, /healthz).
    #[arg(long)]
    address: Option<String>,
    /// Port of the read-only endpoint; 0 disables it.
    #[arg(long = "read-only-port")]
    read_only_port: Option<u16>,
    /// In-process CRI server: its TOML config file (see the cri binary).
    #[arg(long = "cri-config")]
    cri_config: Option<PathBuf>,
    /// In-process CRI server: import every OCI archive here before running pods.
    #[arg(long = "image-preload-dir")]
    image_preload_dir: Option<PathBuf>,
    /// In-process CRI server: its socket (others, like crictl, may use it too).
    #[arg(long = "cri-socket")]
    cri_socket: Option<PathBuf>,
    /// Cgroup under which the node's pod cgroups live (`<root>/kubepods`); default /.
    /// Also `cgroupRoot` in --config.
    #[arg(long = "cgroup-root")]
    cgroup_root: Option<String>,
    /// QoS tier and pod cgroups (the default); `--cgroups-per-qos=false` puts every
    /// container straight under --cgroup-root. Also `cgroupsPerQOS` in --config.
    #[arg(long = "cgroups-per-qos", num_args = 0..=1, default_missing_value = "true")]
    cgroups_per_qos: Option<bool>,
    /// The most processes a pod may have (its cgroup's pids.max); -1: no limit. Also
    /// `podPidsLimit` in --config.
    #[arg(long = "pod-max-pids", allow_hyphen_values = true)]
    pod_max_pids: Option<i64>,
    /// Only `cgroupfs` is supported. Also `cgroupDriver` in --config.
    #[arg(long = "cgroup-driver")]
    cgroup_driver: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = config::Settings::load(&args)?;
    if cfg.runtime_endpoint.is_none() {
        // The in-process CRI server pulls over HTTPS; before any thread exists, as it
        // may set SSL_CERT_FILE.
        let cri_cfg = cri::Config::load(cfg.cri_config.as_deref())
            .context("loading the in-process CRI config")?;
        cri::tls_roots::ensure(&cri_cfg.state)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cfg))
}

async fn run(cfg: config::Settings) -> anyhow::Result<()> {
    let shutdown = tokio_util_shutdown();
    let endpoint = match &cfg.runtime_endpoint {
        Some(e) => e.clone(),
        None => {
            let mut cri_cfg = cri::Config::load(cfg.cri_config.as_deref())
                .context("loading the in-process CRI config")?;
            if let Some(s) = &cfg.cri_socket {
                cri_cfg.socket = s.clone();
            }
            if let Some(d) = &cfg.image_preload_dir {
                cri_cfg.image_preload_dir = Some(d.clone());
            }
            let socket = cri_cfg.socket.clone();
            let server = cri::Cri::open(cri_cfg)
                .await
                .context("starting the in-process CRI server")?;
            // Bound before the server task runs: connections queue until it serves.
            let listener = cri::server::bind(&socket)
                .with_context(|| format!("binding {}", socket.display()))?;
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = server
                    .serve_on(listener, async move { stop.cancelled().await })
                    .await
                {
                    tracing::error!(err = %e, "in-process CRI server stopped");
                }
            });
            format!("unix://{}", socket.display())
        }
    };
    let client = pods::cri::Cri::connect(&endpoint)?;
    let version = client
        .runtime
        .clone()
        .version(proto::v1::VersionRequest {
            version: "v1".into(),
        })
        .await
        .with_context(|| format!("asking the runtime at {endpoint} for its version"))?
        .into_inner();
    tracing::info!(%endpoint, runtime = %version.runtime_name, runtime_version = %version.runtime_version, node = %cfg.node.node_name, "connected to the container runtime");
    check_cgroup_driver(&client, &endpoint).await?;
    let cgroups = (!cfg.node.no_qos_cgroups).then(|| {
        pods::cgroups::PodCgroups::new(&cfg.node.cgroup_root).with_pids_limit(cfg.pod_pids_limit)
    });
    if let Some(cg) = &cgroups {
        cg.ensure_node(&cfg.node).with_context(|| {
            format!(
                "creating the node's pod cgroups under {} (--cgroups-per-qos=false runs without them)",
                cfg.node.cgroup_root
            )
        })?;
    }

    let engine = pods::engine::Engine::start(
        client,
        pods::engine::EngineConfig {
            node: cfg.node.clone(),
            root_dir: cfg.root_dir.clone(),
            log_root: cfg.pod_logs_dir.clone(),
            runtime_name: version.runtime_name.clone(),
            cgroups,
        },
    );
    if cfg.read_only_port != 0 {
        let addr = format!("{}:{}", cfg.address, cfg.read_only_port);
        let views = engine.views();
        let stop = shutdown.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding the read-only endpoint {addr}"))?;
        tracing::info!(%addr, "serving /pods and /healthz");
        tokio::spawn(readonly::serve(listener, views, async move {
            stop.cancelled().await
        }));
    }

    let Some(dir) = cfg.static_pod_path.clone() else {
        tracing::warn!(
            "no --pod-manifest-path: nothing to run (the API-server mode is not built yet)"
        );
        shutdown.cancelled().await;
        return Ok(());
    };
    let (mut snapshots, _watcher) = static_pods::watch(
        dir.clone(),
        cfg.node.node_name.clone(),
        Duration::from_millis(50),
    )
    .with_context(|| format!("watching {}", dir.display()))?;
    let first = snapshots.borrow_and_update().clone();
    for e in &first.errors {
        tracing::warn!(error = %e, "static pod manifest not used");
    }
    tracing::info!(dir = %dir.display(), pods = first.pods.len(), "static pods");
    // Orphans first: a new instance of a static pod waits for its old one to be gone.
    if let Err(e) = engine.adopt_orphans(&first.pods).await {
        tracing::warn!(err = %e, "listing pods left by an earlier run");
    }
    engine.set_pods(&first.pods);
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() { break; }
                let snap = snapshots.borrow_and_update().clone();
                tracing::info!(pods = snap.pods.len(), "static pod manifests changed");
                engine.set_pods(&snap.pods);
            }
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("shutting down; pods keep running");
    Ok(())
}

/// The runtime must lay cgroups out as we name them: cgroupfs paths. Runtimes that do
/// not answer `RuntimeConfig` (before CRI 1.28) are taken to use cgroupfs, as upstream.
async fn check_cgroup_driver(client: &pods::cri::Cri, endpoint: &str) -> anyhow::Result<()> {
    use proto::v1::CgroupDriver;
    let answer = client
        .runtime
        .clone()
        .runtime_config(proto::v1::RuntimeConfigRequest {})
        .await;
    let driver = match answer {
        Ok(r) => r.into_inner().linux.map(|l| l.cgroup_driver),
        Err(s) if s.code() == tonic::Code::Unimplemented => None,
        Err(s) => {
            return Err(anyhow::anyhow!("RuntimeConfig: {}", s.message())).with_context(|| {
                format!("asking the runtime at {endpoint} for its cgroup driver")
            });
        }
    };
    if driver == Some(CgroupDriver::Systemd as i32) {
        anyhow::bail!(
            "the runtime at {endpoint} uses the systemd cgroup driver; this kubelet names cgroups for cgroupfs only: configure the runtime for cgroupfs (containerd: SystemdCgroup = false)"
        );
    }
    Ok(())
}

/// Cancelled on the first SIGTERM or SIGINT.
fn tokio_util_shutdown() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        cri::server::shutdown_signal().await;
        trigger.cancel();
    });
    token
}
