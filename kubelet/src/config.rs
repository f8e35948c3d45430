//! Settings from flags and a KubeletConfiguration file (flags win), as the upstream
//! kubelet reads them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::Args;

/// The KubeletConfiguration fields standalone mode uses (others are ignored, so a file
/// written for the upstream kubelet loads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct KubeletConfiguration {
    kind: String,
    static_pod_path: Option<PathBuf>,
    container_runtime_endpoint: Option<String>,
    read_only_port: Option<u16>,
    address: Option<String>,
    pod_logs_dir: Option<PathBuf>,
    #[serde(rename = "clusterDNS")]
    cluster_dns: Vec<String>,
    cluster_domain: Option<String>,
    seccomp_default: Option<bool>,
    resolv_conf: Option<PathBuf>,
}

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub static_pod_path: Option<PathBuf>,
    pub runtime_endpoint: Option<String>,
    pub read_only_port: u16,
    pub address: String,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub cri_config: Option<PathBuf>,
    pub cri_socket: Option<PathBuf>,
    pub image_preload_dir: Option<PathBuf>,
    pub node: pods::translate::NodeInfo,
}

impl Settings {
    pub fn load(args: &Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => read_config(p)?,
            None => KubeletConfiguration::default(),
        };
        let node_name = args
            .hostname_override
            .clone()
            .unwrap_or_else(crate::node::hostname)
            .to_lowercase();
        let runtime_endpoint = args
            .container_runtime_endpoint
            .clone()
            .or(file.container_runtime_endpoint)
            .filter(|e| !e.is_empty());
        Ok(Self {
            static_pod_path: args.pod_manifest_path.clone().or(file.static_pod_path),
            runtime_endpoint,
            read_only_port: args.read_only_port.or(file.read_only_port).unwrap_or(10255),
            address: args
                .address
                .clone()
                .or(file.address)
                .unwrap_or_else(|| "127.0.0.1".into()),
            root_dir: args.root_dir.clone(),
            pod_logs_dir: file.pod_logs_dir.unwrap_or_else(|| "/var/log/pods".into()),
            cri_config: args.cri_config.clone(),
            cri_socket: args.cri_socket.clone(),
            image_preload_dir: args.image_preload_dir.clone(),
            node: crate::node::info(
                &node_name,
                &args.root_dir,
                file.cluster_dns,
                file.cluster_domain.unwrap_or_default(),
                file.seccomp_default.unwrap_or(false),
                crate::node::resolv_conf(
                    args.resolv_conf.as_deref().or(file.resolv_conf.as_deref()),
                )
                .as_deref(),
            ),
        })
    }
}

fn read_config(path: &Path) -> anyhow::Result<KubeletConfiguration> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading kubelet config {}", path.display()))?;
    let cfg: KubeletConfiguration = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("kubelet config {}", path.display()))?;
    if !cfg.kind.is_empty() && cfg.kind != "KubeletConfiguration" {
        anyhow::bail!(
            "kubelet config {}: kind is {:?}, expected KubeletConfiguration",
            path.display(),
            cfg.kind
        );
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_config_file_loads() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /etc/kubernetes/manifests\ncontainerRuntimeEndpoint: unix:///run/containerd/containerd.sock\nclusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\ncgroupDriver: cgroupfs\nauthentication: {anonymous: {enabled: false}}\n",
        )?;
        let cfg = read_config(&path)?;
        assert_eq!(
            cfg.static_pod_path,
            Some(PathBuf::from("/etc/kubernetes/manifests"))
        );
        assert_eq!(cfg.cluster_dns, vec!["10.96.0.10"]);
        std::fs::write(&path, "kind: Pod\n")?;
        assert!(read_config(&path).is_err());
        Ok(())
    }
}
