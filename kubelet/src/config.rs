//! Settings from flags and a KubeletConfiguration file (flags win), as the upstream
//! kubelet reads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

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
    register_node: Option<bool>,
    #[serde(rename = "providerID")]
    provider_id: Option<String>,
    max_pods: Option<i64>,
    #[serde(rename = "kubeAPIQPS")]
    kube_api_qps: Option<f64>,
    #[serde(rename = "kubeAPIBurst")]
    kube_api_burst: Option<u32>,
    register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    kube_reserved: BTreeMap<String, String>,
    system_reserved: BTreeMap<String, String>,
    port: Option<i32>,
    rotate_certificates: Option<bool>,
    #[serde(rename = "serverTLSBootstrap")]
    server_tls_bootstrap: Option<bool>,
}

/// Joining a cluster: where the API server is and what the Node says.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub kubeconfig: PathBuf,
    pub register_node: bool,
    pub node: crate::node::register::NodeSpecConfig,
    pub qps: f64,
    pub burst: u32,
    /// --bootstrap-kubeconfig, --cert-dir, rotateCertificates.
    pub certificates: crate::bootstrap::ClientCertConfig,
    /// `serverTLSBootstrap`: the serving certificate from the kubelet-serving signer.
    pub server_tls_bootstrap: bool,
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
    /// Set with `--kubeconfig`: the node joins that cluster.
    pub cluster: Option<ClusterSettings>,
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
        if let Some(ip) = &args.node_ip {
            ip.parse::<std::net::IpAddr>()
                .with_context(|| format!("--node-ip {ip:?} is not an IP address"))?;
            node.host_ip = ip.clone();
        }
        if args.bootstrap_kubeconfig.is_some() && args.kubeconfig.is_none() {
            anyhow::bail!(
                "--bootstrap-kubeconfig needs --kubeconfig (where the node's kubeconfig is written)"
            );
        }
        let cluster = match &args.kubeconfig {
            None => None,
            Some(kubeconfig) => {
                let mut reserved = BTreeMap::new();
                for (what, text, from_file) in [
                    (
                        "--kube-reserved",
                        args.kube_reserved.as_deref(),
                        &file.kube_reserved,
                    ),
                    (
                        "--system-reserved",
                        args.system_reserved.as_deref(),
                        &file.system_reserved,
                    ),
                ] {
                    let pairs = match text {
                        Some(t) => parse_pairs(what, t)?,
                        None => from_file.clone(),
                    };
                    for (k, v) in pairs {
                        let q = Quantity(v.clone());
                        let add = if k == "cpu" {
                            pods::translate::quantity_millis(&q)
                        } else {
                            pods::translate::quantity_value(&q)
                        }
                        .with_context(|| format!("{what}: {k}={v} is not a quantity"))?;
                        let prev = reserved.get(&k).and_then(|p: &Quantity| {
                            if k == "cpu" {
                                pods::translate::quantity_millis(p)
                            } else {
                                pods::translate::quantity_value(p)
                            }
                        });
                        let sum = prev.unwrap_or(0) + add;
                        let text = if k == "cpu" {
                            format!("{sum}m")
                        } else {
                            sum.to_string()
                        };
                        reserved.insert(k, Quantity(text));
                    }
                }
                let taints = match &args.register_with_taints {
                    Some(t) => parse_taints(t)?,
                    None => file.register_with_taints.clone(),
                };
                Some(ClusterSettings {
                    certificates: crate::bootstrap::ClientCertConfig {
                        kubeconfig: kubeconfig.clone(),
                        bootstrap_kubeconfig: args.bootstrap_kubeconfig.clone(),
                        cert_dir: args
                            .cert_dir
                            .clone()
                            .unwrap_or_else(|| crate::bootstrap::default_cert_dir(&args.root_dir)),
                        node_name: node_name.clone(),
                        rotate: args
                            .rotate_certificates
                            .or(file.rotate_certificates)
                            .unwrap_or(false),
                        wait: crate::bootstrap::DEFAULT_CERT_WAIT,
                    },
                    server_tls_bootstrap: args
                        .rotate_server_certificates
                        .or(file.server_tls_bootstrap)
                        .unwrap_or(false),
                    kubeconfig: kubeconfig.clone(),
                    register_node: args.register_node.or(file.register_node).unwrap_or(true),
                    qps: args.kube_api_qps.or(file.kube_api_qps).unwrap_or(50.0),
                    burst: args.kube_api_burst.or(file.kube_api_burst).unwrap_or(100),
                    node: crate::node::register::NodeSpecConfig {
                        name: node_name.clone(),
                        labels: match &args.node_labels {
                            Some(l) => parse_pairs("--node-labels", l)?,
                            None => BTreeMap::new(),
                        },
                        taints,
                        internal_ip: node.host_ip.clone(),
                        hostname: node_name.clone(),
                        provider_id: args.provider_id.clone().or(file.provider_id),
                        kubelet_port: args.port.or(file.port).unwrap_or(10250),
                        max_pods: args.max_pods.or(file.max_pods).unwrap_or(110),
                        runtime_version: String::new(),
                        reserved,
                        root_dir: args.root_dir.clone(),
                    },
                })
            }
        };
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
            cluster,
        })
    }
}

/// `k=v,k2=v2` (labels, reserved resources).
fn parse_pairs(what: &str, text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("{what}: {part:?} is not key=value"))?;
        if k.trim().is_empty() {
            anyhow::bail!("{what}: {part:?} has an empty key");
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// `key=value:Effect,key:Effect` (upstream's --register-with-taints).
fn parse_taints(text: &str) -> anyhow::Result<Vec<Taint>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kv, effect) = part.rsplit_once(':').with_context(|| {
            format!("--register-with-taints: {part:?} is not key[=value]:Effect")
        })?;
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            anyhow::bail!(
                "--register-with-taints: {part:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
            );
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            anyhow::bail!("--register-with-taints: {part:?} has an empty key");
        }
        out.push(Taint {
            key: key.into(),
            value,
            effect: effect.into(),
            time_added: None,
        });
    }
    Ok(out)
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
    fn cluster_flags_parse_as_upstream() -> anyhow::Result<()> {
        use clap::Parser as _;
        let args = crate::Args::parse_from([
            "kubelet",
            "--kubeconfig",
            "/etc/kubelet.conf",
            "--node-labels",
            "role=edge, zone=a",
            "--register-with-taints",
            "dedicated=edge:NoSchedule,gpu:NoExecute",
            "--kube-reserved",
            "cpu=100m,memory=256Mi",
            "--system-reserved",
            "cpu=150m",
            "--node-ip",
            "10.1.2.3",
        ]);
        let s = Settings::load(&args)?;
        let c = s.cluster.expect("cluster mode");
        assert_eq!(c.node.labels["zone"], "a");
        assert_eq!(c.node.taints.len(), 2);
        assert_eq!(c.node.taints[1].value, None);
        assert_eq!(c.node.reserved["cpu"].0, "250m");
        assert_eq!(c.node.reserved["memory"].0, (256i64 << 20).to_string());
        assert_eq!((c.node.max_pods, c.node.kubelet_port), (110, 10250));
        assert_eq!(c.node.internal_ip, "10.1.2.3");
        assert!(c.register_node);
        for bad in [
            vec![
                "kubelet",
                "--kubeconfig",
                "k",
                "--register-with-taints",
                "a=b:Sometimes",
            ],
            vec!["kubelet", "--kubeconfig", "k", "--node-labels", "novalue"],
            vec![
                "kubelet",
                "--kubeconfig",
                "k",
                "--kube-reserved",
                "cpu=lots",
            ],
            vec!["kubelet", "--node-ip", "not-an-ip"],
        ] {
            assert!(
                Settings::load(&crate::Args::parse_from(bad.clone())).is_err(),
                "{bad:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn tls_bootstrap_flags_parse_as_upstream() -> anyhow::Result<()> {
        use clap::Parser as _;
        let parse = |argv: &[&str]| Settings::load(&crate::Args::parse_from(argv));
        let c = parse(&["kubelet", "--kubeconfig", "/k", "--root-dir", "/r"])?
            .cluster
            .expect("cluster mode");
        assert_eq!(c.certificates.cert_dir, PathBuf::from("/r/pki"));
        assert_eq!(c.certificates.bootstrap_kubeconfig, None);
        assert!(!c.certificates.rotate && !c.server_tls_bootstrap);
        let c = parse(&[
            "kubelet",
            "--kubeconfig",
            "/k",
            "--bootstrap-kubeconfig",
            "/b",
            "--cert-dir",
            "/c",
            "--rotate-certificates",
        ])?
        .cluster
        .expect("cluster mode");
        assert_eq!(
            c.certificates.bootstrap_kubeconfig,
            Some(PathBuf::from("/b"))
        );
        assert_eq!(c.certificates.cert_dir, PathBuf::from("/c"));
        assert!(c.certificates.rotate);
        let err = parse(&["kubelet", "--bootstrap-kubeconfig", "/b"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--kubeconfig"), "{err}");
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "rotateCertificates: true\nserverTLSBootstrap: true\n",
        )?;
        let path = file.to_str().expect("a UTF-8 temp path");
        let c = parse(&["kubelet", "--config", path, "--kubeconfig", "/k"])?
            .cluster
            .expect("cluster mode");
        assert!(c.certificates.rotate && c.server_tls_bootstrap);
        let c = parse(&[
            "kubelet",
            "--config",
            path,
            "--kubeconfig",
            "/k",
            "--rotate-certificates=false",
        ])?
        .cluster
        .expect("cluster mode");
        assert!(!c.certificates.rotate, "the flag wins");
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
