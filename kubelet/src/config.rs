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
    cgroup_root: Option<String>,
    #[serde(rename = "cgroupsPerQOS")]
    cgroups_per_qos: Option<bool>,
    cgroup_driver: Option<String>,
    pod_pids_limit: Option<i64>,
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
    /// `podPidsLimit` / `--pod-max-pids`: processes per pod; -1 (the default): no limit.
    pub pod_pids_limit: i64,
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
        let driver = args
            .cgroup_driver
            .clone()
            .or(file.cgroup_driver)
            .unwrap_or_else(|| "cgroupfs".into());
        if driver != "cgroupfs" {
            anyhow::bail!(
                "cgroup driver {driver:?} is not supported: only cgroupfs (set cgroupDriver / --cgroup-driver to cgroupfs)"
            );
        }
        let cgroup_root = args
            .cgroup_root
            .clone()
            .or(file.cgroup_root)
            .unwrap_or_default();
        if !cgroup_root.is_empty() && !cgroup_root.starts_with('/') {
            anyhow::bail!("cgroup root {cgroup_root:?} must be an absolute cgroup path, like /");
        }
        let per_qos = args
            .cgroups_per_qos
            .or(file.cgroups_per_qos)
            .unwrap_or(true);
        let mut node = crate::node::info(
            &node_name,
            &args.root_dir,
            file.cluster_dns,
            file.cluster_domain.unwrap_or_default(),
            file.seccomp_default.unwrap_or(false),
            crate::node::resolv_conf(args.resolv_conf.as_deref().or(file.resolv_conf.as_deref()))
                .as_deref(),
        );
        let root = cgroup_root.trim_end_matches('/');
        node.cgroup_root = if per_qos {
            format!("{root}/kubepods")
        } else if root.is_empty() {
            "/".into()
        } else {
            root.into()
        };
        node.no_qos_cgroups = !per_qos;
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
            node,
            pod_pids_limit: args.pod_max_pids.or(file.pod_pids_limit).unwrap_or(-1),
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

    #[test]
    fn cgroup_settings() -> anyhow::Result<()> {
        use clap::Parser as _;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.yaml");
        let load = |yaml: &str, flags: &[&str]| -> anyhow::Result<Settings> {
            std::fs::write(&path, yaml)?;
            let mut argv = vec![
                "kubelet",
                "--config",
                path.to_str().expect("a UTF-8 temp path"),
            ];
            argv.extend_from_slice(flags);
            Settings::load(&crate::Args::parse_from(argv))
        };
        let node = load("kind: KubeletConfiguration\n", &[])?.node;
        assert_eq!(
            (node.cgroup_root.as_str(), node.no_qos_cgroups),
            ("/kubepods", false)
        );
        let node = load("cgroupRoot: /edge/\n", &[])?.node;
        assert_eq!(node.cgroup_root, "/edge/kubepods");
        let node = load("cgroupRoot: /edge\ncgroupsPerQOS: false\n", &[])?.node;
        assert_eq!(
            (node.cgroup_root.as_str(), node.no_qos_cgroups),
            ("/edge", true)
        );
        let node = load("cgroupsPerQOS: false\n", &["--cgroups-per-qos"])?.node;
        assert!(!node.no_qos_cgroups, "the flag wins");
        let cfg = load("podPidsLimit: 100\n", &[])?;
        assert_eq!(cfg.pod_pids_limit, 100);
        let cfg = load("podPidsLimit: 100\n", &["--pod-max-pids", "20"])?;
        assert_eq!(cfg.pod_pids_limit, 20, "the flag wins");
        assert_eq!(load("{}\n", &[])?.pod_pids_limit, -1, "no limit by default");
        let node = load("{}\n", &["--cgroups-per-qos=false", "--cgroup-root", "/x"])?.node;
        assert_eq!(
            (node.cgroup_root.as_str(), node.no_qos_cgroups),
            ("/x", true)
        );
        let err = load("cgroupDriver: systemd\n", &[])
            .expect_err("systemd is refused")
            .to_string();
        assert!(err.contains("systemd") && err.contains("cgroupfs"), "{err}");
        let err = load("cgroupRoot: kubepods\n", &[])
            .expect_err("a relative root is refused")
            .to_string();
        assert!(err.contains("absolute"), "{err}");
        Ok(())
    }
}
