//! The node agent binary.
//!
//! Standalone mode (static pods from `--pod-manifest-path`) and the API-server mode land
//! with their own issues; today the binary only parses its flags and says so.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "kubelet", version, about = "Kubernetes node agent")]
struct Args {
    /// Directory of static pod manifests.
    #[arg(long = "pod-manifest-path")]
    pod_manifest_path: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "the pod engine is not built yet (static pods from {:?} cannot run); use the `cri` binary",
        args.pod_manifest_path
    )
}
