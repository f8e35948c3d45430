//! `kubelet`: the node agent. Standalone mode runs static pods from a manifest
//! directory with no control plane: by default with our CRI server in-process (one
//! binary), or against any CRI runtime with `--container-runtime-endpoint`.

mod admission;
mod api_pods;
mod bootstrap;
mod config;
mod events;
mod kube_client;
mod mirror;
mod node;
mod objects;
mod readonly;
mod server;
mod static_pods;
mod status;

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
    /// Join a cluster: the kubeconfig (client certificate or bearer token) of the API
    /// server to register with and take pods from.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// TLS bootstrap: a kubeconfig with a bootstrap token, used to request the node's
    /// client certificate when --kubeconfig is missing or its certificate is not valid;
    /// --kubeconfig is then written to use it.
    #[arg(long = "bootstrap-kubeconfig")]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Where the node's certificates live (default <root-dir>/pki).
    #[arg(long = "cert-dir")]
    cert_dir: Option<PathBuf>,
    /// The kubelet API (--port): client certificates signed by these CAs authenticate
    /// (user = CN, groups = O); bearer tokens always do, through TokenReview.
    #[arg(long = "client-ca-file")]
    client_ca_file: Option<PathBuf>,
    /// Renew the client certificate before it expires. Also `rotateCertificates` in
    /// --config.
    #[arg(long = "rotate-certificates", num_args = 0..=1, default_missing_value = "true")]
    rotate_certificates: Option<bool>,
    /// Request the serving certificate from the kubelet-serving signer (and rotate it)
    /// instead of a self-signed one. Also `serverTLSBootstrap` in --config.
    #[arg(long = "rotate-server-certificates", num_args = 0..=1, default_missing_value = "true")]
    rotate_server_certificates: Option<bool>,
    /// The address the node reports (InternalIP); default: the host's first address.
    #[arg(long = "node-ip")]
    node_ip: Option<String>,
    /// Labels added to the Node at registration: `key=value,…`.
    #[arg(long = "node-labels")]
    node_labels: Option<String>,
    /// Taints of the Node at registration: `key=value:Effect,…`. Also
    /// `registerWithTaints` in --config.
    #[arg(long = "register-with-taints")]
    register_with_taints: Option<String>,
    /// Most pods on this node (default 110). Also `maxPods` in --config.
    #[arg(long = "max-pods")]
    max_pods: Option<i64>,
    /// Register the Node (default true). Also `registerNode` in --config.
    #[arg(long = "register-node", num_args = 0..=1, default_missing_value = "true")]
    register_node: Option<bool>,
    /// The node's provider id. Also `providerID` in --config.
    #[arg(long = "provider-id")]
    provider_id: Option<String>,
    /// Resources kept from pods for Kubernetes daemons: `cpu=100m,memory=256Mi,…`.
    /// Also `kubeReserved` in --config.
    #[arg(long = "kube-reserved")]
    kube_reserved: Option<String>,
    /// Resources kept from pods for the OS: `cpu=100m,memory=256Mi,…`. Also
    /// `systemReserved` in --config.
    #[arg(long = "system-reserved")]
    system_reserved: Option<String>,
    /// The kubelet API port the Node announces (default 10250). Also `port` in --config.
    #[arg(long)]
    port: Option<i32>,
    /// API writes per second (default 50). Also `kubeAPIQPS` in --config.
    #[arg(long = "kube-api-qps")]
    kube_api_qps: Option<f64>,
    /// API write burst (default 100). Also `kubeAPIBurst` in --config.
    #[arg(long = "kube-api-burst")]
    kube_api_burst: Option<u32>,
}

/// The version the Node reports (the Kubernetes API level this agent implements).
pub const KUBELET_VERSION: &str = concat!("v1.36.0-nodelet.", env!("CARGO_PKG_VERSION"));

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
    runtime.block_on(run(cfg, args.client_ca_file.clone()))
}

async fn run(cfg: config::Settings, client_ca_file: Option<PathBuf>) -> anyhow::Result<()> {
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
        client.clone(),
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

    // The sources: the manifest directory and, in a cluster, the API server.
    let mut statics = match cfg.static_pod_path.clone() {
        Some(dir) => {
            let (rx, watcher) = static_pods::watch(
                dir.clone(),
                cfg.node.node_name.clone(),
                Duration::from_millis(50),
            )
            .with_context(|| format!("watching {}", dir.display()))?;
            let first = rx.borrow().clone();
            for e in &first.errors {
                tracing::warn!(error = %e, "static pod manifest not used");
            }
            tracing::info!(dir = %dir.display(), pods = first.pods.len(), "static pods");
            Some((rx, watcher))
        }
        None => None,
    };
    let (mut api, mut admission) = match &cfg.cluster {
        Some(c) => {
            let statics_rx = statics.as_ref().map(|(rx, _)| rx.clone());
            let api = server::Config {
                addr: std::net::SocketAddr::from((
                    [0, 0, 0, 0],
                    u16::try_from(c.node.kubelet_port).context("--port")?,
                )),
                node_name: c.node.name.clone(),
                client_ca_file: client_ca_file.clone(),
                pod_logs_dir: cfg.pod_logs_dir.clone(),
                root_dir: cfg.root_dir.clone(),
            };
            let joined =
                join_cluster(c, api, &version, &client, &engine, statics_rx, &shutdown).await?;
            (Some(joined.pods), Some(joined.admission))
        }
        None => (None, None),
    };
    if statics.is_none() && api.is_none() {
        tracing::warn!("no --pod-manifest-path and no --kubeconfig: nothing to run");
        shutdown.cancelled().await;
        return Ok(());
    }
    // Orphans are judged once every source has listed its pods (upstream's
    // sourcesReady): a pod of the API server must not be killed because the first list
    // has not come yet.
    if let Some(rx) = api.as_mut() {
        tokio::select! {
            r = rx.wait_for(|s| s.synced) => { r.context("the API pod source stopped")?; }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    let first = desired_pods(
        statics.as_ref().map(|(rx, _)| rx),
        api.as_ref(),
        admission.as_mut(),
    );
    if let Err(e) = engine.adopt_orphans(&first).await {
        tracing::warn!(err = %e, "listing pods left by an earlier run");
    }
    engine.set_pods(&first);
    loop {
        let static_changed = async {
            match statics.as_mut() {
                Some((rx, _)) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let api_changed = async {
            match api.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ok = static_changed => {
                if !ok { break; }
                if let Some((rx, _)) = statics.as_mut() {
                    let snap = rx.borrow_and_update();
                    tracing::info!(pods = snap.pods.len(), "static pod manifests changed");
                }
            }
            ok = api_changed => {
                if !ok { break; }
                if let Some(rx) = api.as_mut() {
                    rx.borrow_and_update();
                }
            }
            _ = shutdown.cancelled() => break,
        }
        engine.set_pods(&desired_pods(
            statics.as_ref().map(|(rx, _)| rx),
            api.as_ref(),
            admission.as_mut(),
        ));
    }
    tracing::info!("shutting down; pods keep running");
    Ok(())
}

/// Every pod the engine should run: the static ones and the API's admitted ones.
fn desired_pods(
    statics: Option<&tokio::sync::watch::Receiver<static_pods::Snapshot>>,
    api: Option<&tokio::sync::watch::Receiver<api_pods::Snapshot>>,
    admission: Option<&mut Admitter>,
) -> std::collections::BTreeMap<String, k8s_openapi::api::core::v1::Pod> {
    let mut all = std::collections::BTreeMap::new();
    if let Some(rx) = statics {
        all.extend(rx.borrow().pods.clone());
    }
    if let (Some(rx), Some(adm)) = (api, admission) {
        let pods = rx.borrow().pods.clone();
        all.extend(adm.admit(&pods));
    }
    all
}

/// Admission of the API's pods, and where the statuses of the rejected ones go.
struct Admitter {
    state: admission::Admission,
    node: admission::NodeFacts,
    /// The cluster's RuntimeClasses (a reflector's store).
    classes: kube::runtime::reflector::Store<k8s_openapi::api::node::v1::RuntimeClass>,
    rejected: tokio::sync::watch::Sender<
        std::collections::BTreeMap<String, k8s_openapi::api::core::v1::PodStatus>,
    >,
}

impl Admitter {
    fn admit(
        &mut self,
        pods: &std::collections::BTreeMap<String, k8s_openapi::api::core::v1::Pod>,
    ) -> std::collections::BTreeMap<String, k8s_openapi::api::core::v1::Pod> {
        self.node.runtime_classes = self
            .classes
            .state()
            .iter()
            .filter_map(|rc| Some((rc.metadata.name.clone()?, rc.handler.clone())))
            .collect();
        let run = self.state.admit(pods, &self.node);
        let statuses: std::collections::BTreeMap<_, _> = self
            .state
            .rejected
            .iter()
            .map(|(u, r)| (u.clone(), r.status()))
            .collect();
        self.rejected.send_if_modified(|cur| {
            let changed = *cur != statuses;
            *cur = statuses;
            changed
        });
        run
    }
}

/// What joining gives the main loop.
struct Joined {
    pods: tokio::sync::watch::Receiver<api_pods::Snapshot>,
    admission: Admitter,
}

/// The node as admission sees it: labels, taints, allocatable.
fn node_facts(
    spec: &node::register::NodeSpecConfig,
    runtime_handlers: std::collections::BTreeSet<String>,
) -> admission::NodeFacts {
    let facts = node::register::MachineFacts::read(&spec.root_dir);
    let (_, allocatable) = node::register::resources(&facts, spec.max_pods, &spec.reserved);
    admission::NodeFacts {
        name: spec.name.clone(),
        labels: node::register::labels(spec),
        taints: spec.taints.clone(),
        allocatable: allocatable
            .iter()
            .filter_map(|(k, q)| {
                let v = if k == "cpu" {
                    pods::translate::quantity_millis(q)
                } else {
                    pods::translate::quantity_value(q)
                };
                Some((k.clone(), v?))
            })
            .collect(),
        runtime_classes: Default::default(),
        runtime_handlers,
    }
}

/// The handlers the runtime offers (CRI `Status`), the default one ("") included.
async fn runtime_handlers(cri: &pods::cri::Cri) -> std::collections::BTreeSet<String> {
    match cri
        .runtime
        .clone()
        .status(proto::v1::StatusRequest { verbose: false })
        .await
    {
        Ok(r) => r
            .into_inner()
            .runtime_handlers
            .into_iter()
            .map(|h| h.name)
            .collect(),
        Err(e) => {
            tracing::warn!(err = %e.message(), "asking the runtime for its handlers");
            Default::default()
        }
    }
}

/// A reflector of the cluster's RuntimeClasses (nodes may read them), ready or given
/// up on after a few seconds (pods naming one are then judged as it fills).
async fn runtime_classes(
    client: kube::Client,
) -> kube::runtime::reflector::Store<k8s_openapi::api::node::v1::RuntimeClass> {
    use futures::StreamExt as _;
    use kube::runtime::WatchStreamExt as _;
    let (store, writer) = kube::runtime::reflector::store();
    let api: kube::Api<k8s_openapi::api::node::v1::RuntimeClass> = kube::Api::all(client);
    let stream = kube::runtime::reflector(
        writer,
        kube::runtime::watcher(api, kube::runtime::watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(stream.for_each(|_| async {}));
    if tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .is_err()
    {
        tracing::warn!("RuntimeClasses not listed yet; pods naming one wait for the list");
    }
    store
}

/// Joins the cluster: registers the Node (retrying until the API server answers),
/// then keeps its status and Lease, writes pod statuses, and returns the pods bound
/// to this node.
async fn join_cluster(
    c: &config::ClusterSettings,
    api: server::Config,
    version: &proto::v1::VersionResponse,
    cri: &pods::cri::Cri,
    engine: &pods::engine::Engine,
    statics: Option<tokio::sync::watch::Receiver<static_pods::Snapshot>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Joined> {
    let client = bootstrap::client(&c.certificates, shutdown)
        .await
        .with_context(|| format!("API client from {}", c.kubeconfig.display()))?;
    // The objects its pods reference (config maps, secrets, tokens, services).
    engine.set_objects(std::sync::Arc::new(objects::ApiObjects::new(
        client.clone(),
    )));
    // Events about its pods (Pulled, Started, BackOff, Unhealthy…), as upstream's kubelet.
    engine.set_events(events::ApiRecorder::start(client.clone(), &c.node.name));
    let mut spec = c.node.clone();
    // For the :10250 server: its certificate, kept current.
    let serving = bootstrap::serving_certificate(
        &bootstrap::ServingConfig {
            cert_dir: c.certificates.cert_dir.clone(),
            node_name: spec.name.clone(),
            hostnames: vec![spec.hostname.clone()],
            ips: spec.internal_ip.parse().into_iter().collect(),
            tls_bootstrap: c.server_tls_bootstrap,
            wait: bootstrap::DEFAULT_CERT_WAIT,
        },
        Some(client.clone()),
        shutdown,
    )
    .await
    .context("the serving certificate")?;
    // The kubelet API (:10250): authenticated and authorized through the API server.
    server::start(
        api,
        server::Sources {
            client: client.clone(),
            views: engine.views(),
            serving,
            cri: cri.clone(),
        },
        shutdown.clone(),
    )
    .await
    .context("the kubelet API")?;
    spec.runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    if c.register_node {
        let mut wait = Duration::from_millis(200);
        loop {
            match node::register::register(&nodes, &spec).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(node = %spec.name, err = %e, "registering the node; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => anyhow::bail!("stopped before the node registered"),
                    }
                    wait = (wait * 2).min(Duration::from_secs(7));
                }
            }
        }
        let health = runtime_health(cri.clone(), shutdown.clone());
        let (cidr_tx, cidr_rx) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(node::register::status_loop(
            nodes,
            spec.clone(),
            health,
            cidr_tx,
            shutdown.clone(),
        ));
        tokio::spawn(report_pod_cidrs(cri.clone(), cidr_rx));
        tokio::spawn(node::lease::renew_loop(
            client.clone(),
            spec.name.clone(),
            shutdown.clone(),
        ));
    }
    let pods = api_pods::watch(client.clone(), &spec.name);
    if let Some(statics) = statics {
        tokio::spawn(mirror::run(
            client.clone(),
            spec.name.clone(),
            statics,
            pods.clone(),
            shutdown.clone(),
        ));
    }
    let classes_client = client.clone();
    let (rejected_tx, rejected_rx) = tokio::sync::watch::channel(Default::default());
    tokio::spawn(status::run(
        client,
        engine.views(),
        engine.terminated(),
        pods.clone(),
        rejected_rx,
        status::Limiter::new(c.qps, c.burst),
        shutdown.clone(),
    ));
    Ok(Joined {
        pods,
        admission: Admitter {
            state: admission::Admission::default(),
            node: node_facts(&spec, runtime_handlers(cri).await),
            classes: runtime_classes(classes_client).await,
            rejected: rejected_tx,
        },
    })
}

/// The Node's pod CIDRs, as the control plane allocates them, told to the runtime
/// (`UpdateRuntimeConfig`), whose default network then uses them.
async fn report_pod_cidrs(
    cri: pods::cri::Cri,
    mut cidrs: tokio::sync::watch::Receiver<Vec<String>>,
) {
    while cidrs.changed().await.is_ok() {
        let cidr = cidrs.borrow_and_update().join(",");
        if cidr.is_empty() {
            continue;
        }
        let req = proto::v1::UpdateRuntimeConfigRequest {
            runtime_config: Some(proto::v1::RuntimeConfig {
                network_config: Some(proto::v1::NetworkConfig {
                    pod_cidr: cidr.clone(),
                }),
            }),
        };
        match cri.runtime.clone().update_runtime_config(req).await {
            Ok(_) => tracing::info!(pod_cidr = %cidr, "pod CIDR told to the runtime"),
            Err(e) => {
                tracing::warn!(pod_cidr = %cidr, err = %e.message(), "telling the runtime the pod CIDR")
            }
        }
    }
}

/// The runtime's own conditions (RuntimeReady, NetworkReady), asked every few seconds as
/// upstream does, published on change.
fn runtime_health(
    cri: pods::cri::Cri,
    stop: CancellationToken,
) -> tokio::sync::watch::Receiver<node::register::Health> {
    let (tx, rx) = tokio::sync::watch::channel(node::register::Health::default());
    tokio::spawn(async move {
        loop {
            let h = match cri
                .runtime
                .clone()
                .status(proto::v1::StatusRequest { verbose: false })
                .await
            {
                Ok(r) => {
                    let conds = r
                        .into_inner()
                        .status
                        .map(|s| s.conditions)
                        .unwrap_or_default();
                    let cond = |t: &str| conds.iter().find(|c| c.r#type == t);
                    let ok = |t: &str| cond(t).is_some_and(|c| c.status);
                    let message = conds
                        .iter()
                        .filter(|c| !c.status)
                        .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    node::register::Health {
                        runtime_ready: ok("RuntimeReady"),
                        network_ready: ok("NetworkReady"),
                        message,
                    }
                }
                Err(e) => node::register::Health {
                    runtime_ready: false,
                    network_ready: false,
                    message: e.message().to_string(),
                },
            };
            tx.send_if_modified(|cur| {
                let changed = *cur != h;
                *cur = h;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
    rx
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
