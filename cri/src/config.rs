//! Configuration: a TOML file (`--config`), overridden by flags.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::pull::RegistryConfig;

pub const DEFAULT_CONFIG: &str = "/etc/nodelet/cri.toml";
pub const DEFAULT_SOCKET: &str = "/run/nodelet/cri.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/nodelet/cri";
pub const DEFAULT_STATE: &str = "/run/nodelet/cri";
/// The streaming server (Exec, Attach, PortForward URLs): loopback, any free port.
pub const DEFAULT_STREAMING_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The CRI unix socket.
    pub socket: PathBuf,
    /// Persistent data (images, container metadata).
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot.
    pub state: PathBuf,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// A layer unpacking to more bytes than this is rejected.
    pub max_layer_bytes: u64,
    /// OCI archives imported at start (air-gapped nodes).
    pub image_preload_dir: Option<PathBuf>,
    /// Where the streaming server listens (`ip:port`; port 0 picks a free one). Its
    /// URLs carry single-use tokens; anything but loopback exposes them to the network.
    pub streaming_addr: SocketAddr,
    pub registry: RegistrySection,
    pub runtime: RuntimeSection,
    pub cni: CniSection,
}

/// `[runtime]`: OCI runtime handlers (RuntimeClass) and the pod infra container.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Handler used when a pod names none.
    pub default_handler: String,
    /// `[runtime.handlers.NAME] path = "/usr/sbin/runc"`: handler name → binary.
    pub handlers: BTreeMap<String, HandlerSection>,
    /// Image of the infra container; empty means our built-in `cri-pause`.
    pub sandbox_image: String,
    /// Run an infra container for every pod. By default (false) only a pod that shares
    /// one PID namespace between its containers gets one (it needs a PID 1); the other
    /// pods' namespaces are pinned on files, as CRI-O's `drop_infra_ctr` does.
    pub infra_for_every_pod: bool,
    /// The `cri-monitor` binary; default: beside the running `cri`.
    pub monitor: Option<PathBuf>,
    /// Where pod network namespaces are pinned (`ip netns` lists /run/netns).
    pub netns_dir: PathBuf,
    /// The CRIU binary CheckpointContainer has the OCI runtime use: an absolute path or
    /// a name looked up in PATH.
    pub criu: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerSection {
    /// Binary: an absolute path or a name looked up in PATH.
    pub path: PathBuf,
    /// Its `--root` state directory; default `<state>/<handler>`.
    pub root: Option<PathBuf>,
}

/// `[cni]`: pod networking.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniSection {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// Subnet of the default network written when `conf_dir` has none.
    pub pod_cidr: String,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        let handler = |bin: &str| HandlerSection {
            path: bin.into(),
            root: None,
        };
        Self {
            default_handler: "runc".into(),
            handlers: BTreeMap::from([
                ("runc".to_string(), handler("runc")),
                ("crun".to_string(), handler("crun")),
            ]),
            sandbox_image: String::new(),
            infra_for_every_pod: false,
            monitor: None,
            netns_dir: "/run/netns".into(),
            criu: "criu".into(),
        }
    }
}

impl Default for CniSection {
    fn default() -> Self {
        Self {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            pod_cidr: crate::runtime::cni::DEFAULT_POD_CIDR.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Registries (host[:port]) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// `[registry.mirrors."docker.io"] endpoints = ["http://127.0.0.1:5000"]`
    pub mirrors: HashMap<String, MirrorSection>,
    /// PEM files of extra root certificates (private CAs), trusted for every registry and
    /// mirror besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// `[registry.hosts."myreg:5000"] ca_file = "/etc/nodelet/certs/myreg.pem"`: settings
    /// of one registry or mirror host.
    pub hosts: HashMap<String, HostSection>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostSection {
    /// A PEM file of root certificates trusted for this host only.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorSection {
    pub endpoints: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            root: DEFAULT_ROOT.into(),
            state: DEFAULT_STATE.into(),
            max_concurrent_downloads: 3,
            max_layer_bytes: 32 << 30,
            image_preload_dir: None,
            streaming_addr: DEFAULT_STREAMING_ADDR,
            registry: RegistrySection::default(),
            runtime: RuntimeSection::default(),
            cni: CniSection::default(),
        }
    }
}

impl Config {
    /// Reads `path`; a missing file at the default path means defaults, anywhere else
    /// it is an error.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(Error::Io {
                    what: "reading config",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text)
            .map_err(|e| Error::InvalidArgument(format!("config {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Adds a `REGISTRY=ENDPOINT` mirror given on the command line.
    pub fn add_mirror(&mut self, spec: &str) -> Result<()> {
        let (registry, endpoint) = spec
            .split_once('=')
            .filter(|(r, e)| !r.is_empty() && !e.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "registry mirror {spec:?} must be REGISTRY=ENDPOINT"
                ))
            })?;
        self.registry
            .mirrors
            .entry(registry.to_string())
            .or_default()
            .endpoints
            .push(endpoint.to_string());
        Ok(())
    }

    /// The runtime's configuration: handler binaries found (PATH is searched for bare
    /// names), state directories under `state`, helper binaries beside `cri` unless set.
    pub fn runtime_config(&self) -> Result<crate::runtime::RuntimeConfig> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let handlers = self
            .runtime
            .handlers
            .iter()
            .map(|(name, h)| {
                let handler = crate::runtime::oci::Handler {
                    name: name.clone(),
                    path: find_binary(&h.path),
                    root: h.root.clone().unwrap_or_else(|| self.state.join(name)),
                };
                (name.clone(), handler)
            })
            .collect();
        if !self
            .runtime
            .handlers
            .contains_key(&self.runtime.default_handler)
        {
            return Err(Error::InvalidArgument(format!(
                "default runtime handler {:?} is not among [runtime.handlers]",
                self.runtime.default_handler
            )));
        }
        Ok(crate::runtime::RuntimeConfig {
            root: self.root.clone(),
            handlers,
            default_handler: self.runtime.default_handler.clone(),
            sandbox_image: self.runtime.sandbox_image.clone(),
            infra_for_every_pod: self.runtime.infra_for_every_pod,
            monitor: self
                .runtime
                .monitor
                .clone()
                .unwrap_or_else(|| exe_dir.join("cri-monitor")),
            pause: exe_dir.join("cri-pause"),
            netns_dir: self.runtime.netns_dir.clone(),
            criu: find_binary(&self.runtime.criu),
            cni: crate::runtime::cni::CniConfig {
                conf_dir: self.cni.conf_dir.clone(),
                bin_dirs: self.cni.bin_dirs.clone(),
                pod_cidr: self.cni.pod_cidr.clone(),
                cache_dir: self.state.join("cni"),
            },
        })
    }

    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig {
            mirrors: self
                .registry
                .mirrors
                .iter()
                .map(|(k, v)| (k.clone(), v.endpoints.clone()))
                .collect(),
            insecure: self.registry.insecure.clone(),
            ca_files: self.registry.ca_files.clone(),
            host_ca_files: self
                .registry
                .hosts
                .iter()
                .filter_map(|(host, h)| Some((host.clone(), h.ca_file.clone()?)))
                .collect(),
        }
    }
}

/// A bare binary name looked up in PATH and the sbin directories (runc lives in
/// /usr/sbin, which a non-login PATH may lack); paths are taken as they are.
fn find_binary(path: &Path) -> PathBuf {
    if path.components().count() > 1 {
        return path.to_path_buf();
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(path))
        .find(|p| p.is_file())
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let cfg = Config::parse(
            r#"
            socket = "/tmp/x.sock"
            root = "/tmp/root"
            max_concurrent_downloads = 5
            streaming_addr = "0.0.0.0:10010"
            [registry]
            insecure = ["127.0.0.1:5000"]
            ca_files = ["/etc/nodelet/certs/ca.pem"]
            [registry.mirrors."docker.io"]
            endpoints = ["http://127.0.0.1:5001"]
            [registry.hosts."myreg:5000"]
            ca_file = "/etc/nodelet/certs/myreg.pem"
            [registry.hosts."plain:5000"]
            "#,
        )
        .expect("parse");
        assert_eq!(cfg.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(cfg.state, PathBuf::from(DEFAULT_STATE));
        assert_eq!(cfg.max_concurrent_downloads, 5);
        assert_eq!(
            cfg.streaming_addr,
            "0.0.0.0:10010".parse().expect("test fixture")
        );
        assert_eq!(Config::default().streaming_addr.to_string(), "127.0.0.1:0");
        let reg = cfg.registry_config();
        assert_eq!(reg.mirrors["docker.io"], vec!["http://127.0.0.1:5001"]);
        assert_eq!(reg.insecure, vec!["127.0.0.1:5000"]);
        assert_eq!(
            reg.ca_files,
            vec![PathBuf::from("/etc/nodelet/certs/ca.pem")]
        );
        assert_eq!(
            reg.host_ca_files,
            HashMap::from([(
                "myreg:5000".to_string(),
                PathBuf::from("/etc/nodelet/certs/myreg.pem")
            )])
        );
    }

    #[test]
    fn unknown_keys_and_bad_mirrors_are_errors() {
        for (text, word) in [
            ("sockett = \"/x\"", "sockett"),
            ("[registry.hosts.\"r:1\"]\nca_files = \"/x\"", "ca_files"),
        ] {
            let err = Config::parse(text).expect_err("typo must fail");
            assert!(err.to_string().contains(word), "{err}");
        }
        let err = Config::parse("streaming_addr = \"localhost\"").expect_err("no port");
        assert!(err.to_string().contains("streaming_addr"), "{err}");
        let mut cfg = Config::default();
        assert!(cfg.add_mirror("docker.io").is_err());
        cfg.add_mirror("docker.io=http://127.0.0.1:1").expect("ok");
        assert_eq!(cfg.registry.mirrors["docker.io"].endpoints.len(), 1);
        let missing = Config::load(Some(Path::new("/nonexistent/cri.toml")));
        assert!(missing.is_err());
    }
}
