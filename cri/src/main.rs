//! `cri`: the CRI server binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "cri",
    version,
    about = "CRI runtime.v1 server (image service and runtime service)"
)]
struct Args {
    /// TOML configuration file (default /etc/nodelet/cri.toml if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket to serve on.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Directory for persistent data (images, container metadata).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Directory for runtime state.
    #[arg(long)]
    state: Option<PathBuf>,
    /// A registry (host[:port]) reached over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// REGISTRY=ENDPOINT, e.g. docker.io=http://127.0.0.1:5000; repeatable, tried in order.
    #[arg(long = "registry-mirror")]
    registry_mirrors: Vec<String>,
    /// Layers downloaded at once per pull.
    #[arg(long)]
    max_concurrent_downloads: Option<usize>,
    /// Reject layers that unpack to more bytes than this.
    #[arg(long)]
    max_layer_bytes: Option<u64>,
    /// Import every OCI archive (*.tar, *.oci) in this directory before serving.
    #[arg(long)]
    image_preload_dir: Option<PathBuf>,
    /// Address of the streaming server behind Exec, Attach and PortForward (ip:port;
    /// default 127.0.0.1:0, any free loopback port).
    #[arg(long)]
    streaming_addr: Option<std::net::SocketAddr>,
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
    let mut config = cri::Config::load(args.config.as_deref())?;
    if let Some(v) = args.socket {
        config.socket = v;
    }
    if let Some(v) = args.root {
        config.root = v;
    }
    if let Some(v) = args.state {
        config.state = v;
    }
    if let Some(v) = args.max_concurrent_downloads {
        config.max_concurrent_downloads = v;
    }
    if let Some(v) = args.max_layer_bytes {
        config.max_layer_bytes = v;
    }
    if let Some(v) = args.image_preload_dir {
        config.image_preload_dir = Some(v);
    }
    if let Some(v) = args.streaming_addr {
        config.streaming_addr = v;
    }
    config.registry.insecure.extend(args.insecure_registries);
    for m in &args.registry_mirrors {
        config.add_mirror(m)?;
    }
    // Before any thread exists: it may set SSL_CERT_FILE.
    cri::tls_roots::ensure(&config.state)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let cri = cri::Cri::open(config).await.context("recovering state")?;
        cri.serve(cri::server::shutdown_signal())
            .await
            .context("serving")?;
        anyhow::Ok(())
    })
}
