//! The runtime side of CNI 1.0: network configs from a directory, plugin binaries from bin
//! dirs, and the ADD / DEL / CHECK protocol for a pod's pinned network namespace.
//!
//! - The network is the first config file of `conf_dir` in lexical order (`*.conflist`,
//!   or a single plugin in `*.conf` / `*.json`), as libcni picks it.
//! - `setup` runs the network's chain in order, each plugin getting the previous plugin's
//!   result as `prevResult`. `lo` is not a plugin's job here: it is brought up when the
//!   namespace is created (`netns`), which spares an exec per ADD, CHECK and DEL. The final result and the
//!   network config used are cached in `cache_dir/<container id>.json`, so `teardown` and
//!   `check` work on what was set up even if `conf_dir` changed since.
//! - `teardown` is idempotent: without a cache it uses the current config and no
//!   `prevResult`; a gone netns is passed as an empty `CNI_NETNS`, as the spec says.
//!
//! Plugins are run through the `Exec` seam (a process per call, with a timeout) so the
//! protocol logic is tested with a fake.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;
use tracing::instrument;

use super::netns;

/// File name of the config written when `conf_dir` has none.
pub const DEFAULT_CONFLIST: &str = "10-nodelet.conflist";
/// Network name of the default config.
pub const DEFAULT_NETWORK: &str = "nodelet";
/// Bridge of the default config on the default pod CIDR (see [`default_bridge`]).
pub const DEFAULT_BRIDGE: &str = "nodelet0";
/// The pod CIDR of the default config unless configured.
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";
/// The CNI version of the configs we write.
pub const CNI_VERSION: &str = "1.0.0";

const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];
const CACHE_KIND: &str = "nodelet/cni-result/v1";
/// Longest plugin stderr kept in an error message.
const MAX_STDERR: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cni network config (*.conflist, *.conf, *.json) in {dir}")]
    NoNetworkConfig { dir: PathBuf },
    #[error("invalid cni network config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("invalid pod cidr {cidr:?}: {reason}")]
    InvalidPodCidr { cidr: String, reason: String },
    #[error("cni plugin {plugin:?} of network {network} not found in {dirs}")]
    PluginNotFound {
        plugin: String,
        network: String,
        dirs: String,
    },
    #[error("invalid container id {container_id:?} for cni")]
    InvalidContainerId { container_id: String },
    #[error("running cni plugin {plugin} {command} for {container_id}: {source}")]
    Spawn {
        plugin: String,
        command: Command,
        container_id: String,
        source: io::Error,
    },
    #[error("cni plugin {plugin} {command} for {container_id} timed out after {}s", timeout.as_secs())]
    Timeout {
        plugin: String,
        command: Command,
        container_id: String,
        timeout: Duration,
    },
    /// The plugin exited non-zero; `code` is the CNI error code when it printed one.
    #[error("cni plugin {plugin} {command} for {container_id} failed: {reason}")]
    Plugin {
        plugin: String,
        command: Command,
        container_id: String,
        code: Option<u64>,
        reason: String,
    },
    #[error(
        "cni plugin {plugin} {command} for {container_id} returned an invalid result: {reason}"
    )]
    InvalidResult {
        plugin: String,
        command: Command,
        container_id: String,
        reason: String,
    },
    #[error("network of {container_id} is not set up: no cni result cached")]
    NotSetUp { container_id: String },
    #[error("network namespace {path} of {container_id} does not exist")]
    NetnsMissing { container_id: String, path: PathBuf },
    #[error("cni version {version} of network {network} does not support check")]
    CheckUnsupported { network: String, version: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// Network configs (default /etc/cni/net.d).
    pub conf_dir: PathBuf,
    /// Plugin binaries, searched in order (default /opt/cni/bin, /usr/lib/cni).
    pub bin_dirs: Vec<PathBuf>,
    /// Pod CIDR(s) of the default config, e.g. "10.88.0.0/16" (comma-separated for dual
    /// stack).
    pub pod_cidr: String,
    /// Cached results (`<container id>.json`) and the default config's IPAM state.
    pub cache_dir: PathBuf,
}

/// A hostPort, as the `portMappings` capability carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    /// Empty for all addresses.
    pub host_ip: String,
}

/// The pod's DNS config, as the `dns` capability carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// One pod's attachment to the network.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// The sandbox id.
    pub container_id: &'a str,
    /// The pinned network namespace.
    pub netns: &'a Path,
    /// Interface inside the namespace, "eth0".
    pub ifname: &'a str,
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
    pub pod_uid: &'a str,
    pub port_mappings: &'a [PortMapping],
    pub dns: Option<Dns>,
}

/// What `setup` reports for the pod's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// Addresses of the pod's interfaces, in result order (the first is the primary IP).
    pub ips: Vec<IpAddr>,
    pub network_name: String,
}

/// Runs CNI plugins for pods.
#[derive(Clone)]
pub struct Cni {
    cfg: CniConfig,
    exec: Arc<dyn Exec>,
}

impl fmt::Debug for Cni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cni").field("cfg", &self.cfg).finish()
    }
}

impl Cni {
    pub fn new(cfg: CniConfig) -> Self {
        Self::with_exec(
            cfg,
            Arc::new(ProcessExec {
                timeout: PLUGIN_TIMEOUT,
            }),
        )
    }

    fn with_exec(cfg: CniConfig, exec: Arc<dyn Exec>) -> Self {
        Self { cfg, exec }
    }

    pub fn config(&self) -> &CniConfig {
        &self.cfg
    }

    /// Writes [`DEFAULT_CONFLIST`] (bridge + host-local IPAM on the pod CIDR + portmap) if
    /// `conf_dir` has no network config. Atomic: a reader sees no file or the whole file.
    pub fn ensure_default_conflist(&self) -> Result<()> {
        let dir = &self.cfg.conf_dir;
        if !config_files(dir)?.is_empty() {
            return Ok(());
        }
        let conflist = default_conflist(
            DEFAULT_NETWORK,
            &default_bridge(&self.cfg.pod_cidr),
            &self.cfg.pod_cidr,
            &self.ipam_data_dir(),
        )?;
        fs::create_dir_all(dir).map_err(io_err("creating cni config dir", dir))?;
        let path = dir.join(DEFAULT_CONFLIST);
        write_atomic(&path, &to_pretty_json(&conflist))?;
        tracing::info!(path = %path.display(), pod_cidr = %self.cfg.pod_cidr, "wrote default cni network config");
        Ok(())
    }

    /// The pod CIDR the kubelet reported (UpdateRuntimeConfig, from the Node's
    /// `spec.podCIDRs`): the default network we wrote is rewritten for it (with the
    /// bridge of that CIDR); a network config of anyone else's decides by itself.
    /// Pods already running keep their addresses. Returns whether it was rewritten.
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> Result<bool> {
        let dir = &self.cfg.conf_dir;
        let ours = dir.join(DEFAULT_CONFLIST);
        let files = config_files(dir)?;
        if pod_cidr.trim().is_empty() || files != [ours.clone()] {
            return Ok(false);
        }
        let current = NetworkConfig::from_file(&ours)?;
        let wanted = default_conflist(
            DEFAULT_NETWORK,
            &default_bridge(pod_cidr),
            pod_cidr,
            &self.ipam_data_dir(),
        )?;
        if current.name != DEFAULT_NETWORK {
            return Ok(false);
        }
        let on_disk: Value =
            serde_json::from_slice(&fs::read(&ours).map_err(io_err("reading cni config", &ours))?)
                .unwrap_or(Value::Null);
        if on_disk == wanted {
            return Ok(false);
        }
        write_atomic(&ours, &to_pretty_json(&wanted))?;
        tracing::info!(path = %ours.display(), %pod_cidr, "default cni network now on the node's pod CIDR");
        Ok(true)
    }

    /// Where the default config's host-local IPAM keeps its leases.
    pub fn ipam_data_dir(&self) -> PathBuf {
        self.cfg.cache_dir.join("host-local")
    }

    /// NetworkReady: the network config parses and all its plugins are installed.
    pub fn status(&self) -> Result<()> {
        let net = self.load_network()?;
        for plugin in &net.plugins {
            self.plugin_path(&net.name, &plugin.kind)?;
        }
        Ok(())
    }

    /// ADD: `lo` up, then the network chain; returns the pod's IPs. On failure, whatever
    /// was added is deleted again (best effort) before the error is returned.
    #[instrument(skip_all, fields(sandbox.id = att.container_id, pod.namespace = att.pod_namespace, pod.name = att.pod_name, pod.uid = att.pod_uid))]
    pub async fn setup(&self, att: &Attachment<'_>) -> Result<PodNetwork> {
        check_container_id(att.container_id)?;
        let net = self.load_network()?;
        // Every plugin must be there before anything is changed.
        for plugin in &net.plugins {
            self.plugin_path(&net.name, &plugin.kind)?;
        }
        let netns = att.netns.as_os_str().to_owned();
        let runtime = runtime_config(att);
        let mut result: Option<Value> = None;
        // Parsing guarantees a non-empty chain.
        let mut last_plugin = net.plugins.first().map_or("", |p| p.kind.as_str());
        for plugin in &net.plugins {
            let stdin = plugin_stdin(&net, plugin, result.as_ref(), &runtime);
            let added = self
                .invoke(&net, plugin, Command::Add, att, att.ifname, &netns, &stdin)
                .await;
            match added {
                Ok(Some(out)) => result = Some(out),
                Ok(None) => {}
                Err(err) => {
                    self.rollback(&net, result.as_ref(), att, &netns).await;
                    return Err(err);
                }
            }
            last_plugin = &plugin.kind;
        }

        let invalid = |reason: String| Error::InvalidResult {
            plugin: last_plugin.to_string(),
            command: Command::Add,
            container_id: att.container_id.to_string(),
            reason,
        };
        let finished = match &result {
            None => Err(invalid("the chain printed no result".into())),
            Some(result) => match result_ips(result) {
                Ok(ips) => self.write_cache(&net, att, result).map(|()| ips),
                Err(reason) => Err(invalid(reason)),
            },
        };
        match finished {
            Ok(ips) => {
                tracing::info!(?ips, network = %net.name, "pod network set up");
                Ok(PodNetwork {
                    ips,
                    network_name: net.name,
                })
            }
            Err(err) => {
                self.rollback(&net, result.as_ref(), att, &netns).await;
                Err(err)
            }
        }
    }

    /// DEL in reverse order with the cached result as `prevResult`. Idempotent: a missing
    /// cache, a gone netns and plugins reporting already deleted things are fine. The cache
    /// is removed only when every plugin succeeded, so a failed teardown can be retried.
    #[instrument(skip_all, fields(sandbox.id = att.container_id, pod.namespace = att.pod_namespace, pod.name = att.pod_name, pod.uid = att.pod_uid))]
    pub async fn teardown(&self, att: &Attachment<'_>) -> Result<()> {
        check_container_id(att.container_id)?;
        let (net, prev) = match self.read_cache(att.container_id) {
            Some(cached) => (cached.network, Some(cached.result)),
            None => match self.load_network() {
                Ok(net) => (net, None),
                Err(Error::NoNetworkConfig { dir }) => {
                    tracing::debug!(dir = %dir.display(), "no cache and no cni config: nothing to tear down");
                    return Ok(());
                }
                Err(err) => return Err(err),
            },
        };
        let netns = if netns::exists(att.netns) {
            att.netns.as_os_str().to_owned()
        } else {
            tracing::debug!(netns = %att.netns.display(), "netns is gone: deleting with an empty CNI_NETNS");
            OsString::new()
        };
        if let Some(err) = self.del_chain(&net, prev.as_ref(), att, &netns).await {
            return Err(err);
        }
        self.remove_cache(att.container_id)?;
        tracing::info!(network = %net.name, "pod network torn down");
        Ok(())
    }

    /// CHECK the chain against the cached result.
    #[instrument(skip_all, fields(sandbox.id = att.container_id, pod.namespace = att.pod_namespace, pod.name = att.pod_name, pod.uid = att.pod_uid))]
    pub async fn check(&self, att: &Attachment<'_>) -> Result<()> {
        check_container_id(att.container_id)?;
        let cached = self
            .read_cache(att.container_id)
            .ok_or_else(|| Error::NotSetUp {
                container_id: att.container_id.to_string(),
            })?;
        let net = cached.network;
        if net.disable_check {
            return Ok(());
        }
        if !supports_check(&net.cni_version) {
            return Err(Error::CheckUnsupported {
                network: net.name,
                version: net.cni_version,
            });
        }
        if !netns::exists(att.netns) {
            return Err(Error::NetnsMissing {
                container_id: att.container_id.to_string(),
                path: att.netns.to_path_buf(),
            });
        }
        let netns = att.netns.as_os_str().to_owned();
        let runtime = runtime_config(att);
        for plugin in &net.plugins {
            let stdin = plugin_stdin(&net, plugin, Some(&cached.result), &runtime);
            self.invoke(
                &net,
                plugin,
                Command::Check,
                att,
                att.ifname,
                &netns,
                &stdin,
            )
            .await?;
        }
        Ok(())
    }

    /// The network: the first config file in lexical order.
    fn load_network(&self) -> Result<NetworkConfig> {
        let dir = &self.cfg.conf_dir;
        let files = config_files(dir)?;
        let first = files.first().ok_or_else(|| Error::NoNetworkConfig {
            dir: dir.to_path_buf(),
        })?;
        NetworkConfig::from_file(first)
    }

    fn find_plugin(&self, kind: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        self.cfg
            .bin_dirs
            .iter()
            .map(|dir| dir.join(kind))
            .find(|path| {
                fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    fn plugin_path(&self, network: &str, kind: &str) -> Result<PathBuf> {
        self.find_plugin(kind).ok_or_else(|| Error::PluginNotFound {
            plugin: kind.to_string(),
            network: network.to_string(),
            dirs: self.cni_path().to_string_lossy().into_owned(),
        })
    }

    fn cni_path(&self) -> OsString {
        let mut joined = OsString::new();
        for (i, dir) in self.cfg.bin_dirs.iter().enumerate() {
            if i > 0 {
                joined.push(":");
            }
            joined.push(dir.as_os_str());
        }
        joined
    }

    /// DEL for every plugin in reverse order, continuing past failures; returns the first
    /// failure that is not about something already gone.
    async fn del_chain(
        &self,
        net: &NetworkConfig,
        prev: Option<&Value>,
        att: &Attachment<'_>,
        netns: &OsString,
    ) -> Option<Error> {
        let runtime = runtime_config(att);
        let mut first = None;
        for plugin in net.plugins.iter().rev() {
            let stdin = plugin_stdin(net, plugin, prev, &runtime);
            match self
                .invoke(net, plugin, Command::Del, att, att.ifname, netns, &stdin)
                .await
            {
                Ok(_) => {}
                Err(err) if is_already_gone(&err) => {
                    tracing::debug!(%err, "ignoring delete of something already gone");
                }
                Err(err) => {
                    tracing::warn!(%err, "cni delete failed");
                    first.get_or_insert(err);
                }
            }
        }
        first
    }

    /// Best-effort undo of a failed setup.
    async fn rollback(
        &self,
        net: &NetworkConfig,
        prev: Option<&Value>,
        att: &Attachment<'_>,
        netns: &OsString,
    ) {
        if let Some(err) = self.del_chain(net, prev, att, netns).await {
            tracing::warn!(%err, "cleaning up after a failed cni add");
        }
        if let Err(err) = self.remove_cache(att.container_id) {
            tracing::warn!(%err, "removing cni cache after a failed add");
        }
    }

    /// Runs one plugin; for ADD returns its result (`None` if it printed nothing).
    #[allow(clippy::too_many_arguments)]
    async fn invoke(
        &self,
        net: &NetworkConfig,
        plugin: &Plugin,
        command: Command,
        att: &Attachment<'_>,
        ifname: &str,
        netns: &OsString,
        stdin: &Value,
    ) -> Result<Option<Value>> {
        let path = self.plugin_path(&net.name, &plugin.kind)?;
        let env = vec![
            ("CNI_COMMAND", OsString::from(command.as_str())),
            ("CNI_CONTAINERID", OsString::from(att.container_id)),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", OsString::from(ifname)),
            ("CNI_ARGS", OsString::from(cni_args(att))),
            ("CNI_PATH", self.cni_path()),
        ];
        let inv = Invocation {
            plugin: &plugin.kind,
            path: &path,
            command,
            env,
            stdin: serde_json::to_vec(stdin).unwrap_or_default(),
        };
        tracing::debug!(plugin = %plugin.kind, %command, ifname, network = %net.name, "running cni plugin");
        let ctx = |plugin: &str| (plugin.to_string(), att.container_id.to_string());
        let stdout = self.exec.exec(&inv).await.map_err(|failure| {
            let (plugin, container_id) = ctx(&plugin.kind);
            match failure {
                ExecFailure::Io(source) => Error::Spawn {
                    plugin,
                    command,
                    container_id,
                    source,
                },
                ExecFailure::Timeout(timeout) => Error::Timeout {
                    plugin,
                    command,
                    container_id,
                    timeout,
                },
                ExecFailure::Exit {
                    status,
                    stdout,
                    stderr,
                } => {
                    let (code, reason) = failure_reason(&status, &stdout, &stderr);
                    Error::Plugin {
                        plugin,
                        command,
                        container_id,
                        code,
                        reason,
                    }
                }
            }
        })?;
        if command != Command::Add || stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        match serde_json::from_slice::<Value>(&stdout) {
            Ok(result @ Value::Object(_)) => Ok(Some(result)),
            Ok(_) => Err("the result is not a JSON object".to_string()),
            Err(err) => Err(format!("parsing the result: {err}")),
        }
        .map_err(|reason| {
            let (plugin, container_id) = ctx(&plugin.kind);
            Error::InvalidResult {
                plugin,
                command,
                container_id,
                reason,
            }
        })
    }

    fn cache_path(&self, container_id: &str) -> PathBuf {
        self.cfg.cache_dir.join(format!("{container_id}.json"))
    }

    fn write_cache(&self, net: &NetworkConfig, att: &Attachment<'_>, result: &Value) -> Result<()> {
        let record = CacheRecord {
            kind: CACHE_KIND.to_string(),
            container_id: att.container_id.to_string(),
            if_name: att.ifname.to_string(),
            network_name: net.name.clone(),
            config: net.to_json(),
            result: result.clone(),
        };
        let dir = &self.cfg.cache_dir;
        fs::create_dir_all(dir).map_err(io_err("creating cni cache dir", dir))?;
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        write_atomic(&self.cache_path(att.container_id), &bytes)
    }

    /// The cached setup; `None` when there is none or it cannot be read (logged).
    fn read_cache(&self, container_id: &str) -> Option<Cached> {
        let path = self.cache_path(container_id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "reading cni cache");
                return None;
            }
        };
        let parsed = serde_json::from_slice::<CacheRecord>(&bytes)
            .map_err(|err| err.to_string())
            .and_then(|record| {
                let network = NetworkConfig::from_value(record.config, &path)
                    .map_err(|err| err.to_string())?;
                Ok(Cached {
                    network,
                    result: record.result,
                })
            });
        match parsed {
            Ok(cached) => Some(cached),
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "ignoring unreadable cni cache");
                None
            }
        }
    }

    fn remove_cache(&self, container_id: &str) -> Result<()> {
        let path = self.cache_path(container_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err("removing cni cache", &path)(err)),
        }
    }
}

/// The bridge of the default network: `nodelet0` on the default pod CIDR, else one
/// named after the CIDR (`nodelet-<6 hex of its sha256>`, within the kernel's 15
/// characters), so two servers on one host with different pod CIDRs (a test node
/// beside a production one) never fight over one bridge's gateway address.
pub fn default_bridge(pod_cidr: &str) -> String {
    use sha2::Digest as _;
    let cidr = pod_cidr.trim();
    if cidr == DEFAULT_POD_CIDR {
        return DEFAULT_BRIDGE.to_string();
    }
    let digest = sha2::Sha256::digest(cidr.as_bytes());
    format!("nodelet-{}", &hex::encode(digest)[..6])
}

/// The default network: a bridge with host-local IPAM on `pod_cidr` (comma-separated
/// CIDRs give one range each, for dual stack) and a default route per family, then
/// portmap for hostPorts.
pub fn default_conflist(
    network: &str,
    bridge: &str,
    pod_cidr: &str,
    ipam_data_dir: &Path,
) -> Result<Value> {
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    for cidr in pod_cidr.split(',').map(str::trim) {
        let addr = parse_cidr(cidr).map_err(|reason| Error::InvalidPodCidr {
            cidr: pod_cidr.to_string(),
            reason,
        })?;
        ranges.push(json!([{ "subnet": cidr }]));
        let dst = if addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        if !routes.contains(&json!({ "dst": dst })) {
            routes.push(json!({ "dst": dst }));
        }
    }
    Ok(json!({
        "cniVersion": CNI_VERSION,
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": routes,
                    "dataDir": ipam_data_dir,
                },
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
            },
        ],
    }))
}

/// One plugin of a network: its `type` and its config object as written.
#[derive(Debug, Clone, PartialEq)]
struct Plugin {
    kind: String,
    conf: Map<String, Value>,
}

/// A network config list, normalized (a single-plugin config is a list of one).
#[derive(Debug, Clone, PartialEq)]
struct NetworkConfig {
    name: String,
    cni_version: String,
    disable_check: bool,
    plugins: Vec<Plugin>,
    source: PathBuf,
}

impl NetworkConfig {
    fn from_file(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(io_err("reading cni network config", path))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|err| Error::InvalidConfig {
            path: path.to_path_buf(),
            reason: format!("not JSON: {err}"),
        })?;
        if path.extension().is_some_and(|ext| ext == "conflist") {
            Self::from_value(value, path)
        } else {
            Self::from_single(value, path)
        }
    }

    /// A `.conf`/`.json` file: one plugin whose config also names the network.
    fn from_single(value: Value, path: &Path) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidConfig {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("not a JSON object"))?;
        if obj.contains_key("plugins") {
            return Err(invalid(
                "a plugin list must be in a .conflist file, not .conf or .json",
            ));
        }
        let mut list = Map::new();
        for key in ["name", "cniVersion"] {
            if let Some(v) = obj.get(key) {
                list.insert(key.to_string(), v.clone());
            }
        }
        list.insert("plugins".to_string(), Value::Array(vec![value.clone()]));
        Self::from_value(Value::Object(list), path)
    }

    /// A conflist object: `name`, `cniVersion`, `disableCheck`, `plugins`.
    fn from_value(value: Value, path: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        let Value::Object(mut obj) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        let name = match obj.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(invalid("missing network name".into())),
        };
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            None => "0.1.0".to_string(),
            _ => return Err(invalid("cniVersion is not a version string".into())),
        };
        let disable_check = match obj.get("disableCheck") {
            None => false,
            Some(Value::Bool(b)) => *b,
            // libcni also accepts the string form.
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(_) => return Err(invalid("disableCheck is not a boolean".into())),
        };
        let Some(Value::Array(list)) = obj.remove("plugins") else {
            return Err(invalid("missing plugins list".into()));
        };
        if list.is_empty() {
            return Err(invalid("empty plugins list".into()));
        }
        let plugins = list
            .into_iter()
            .enumerate()
            .map(|(i, plugin)| {
                let Value::Object(conf) = plugin else {
                    return Err(invalid(format!("plugin {i} is not a JSON object")));
                };
                let kind = match conf.get("type") {
                    Some(Value::String(kind)) if valid_plugin_type(kind) => kind.clone(),
                    Some(Value::String(kind)) => {
                        return Err(invalid(format!("plugin {i} has an invalid type {kind:?}")));
                    }
                    _ => return Err(invalid(format!("plugin {i} has no type"))),
                };
                Ok(Plugin { kind, conf })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name,
            cni_version,
            disable_check,
            plugins,
            source: path.to_path_buf(),
        })
    }

    /// The conflist form, as cached.
    fn to_json(&self) -> Value {
        json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins.iter().map(|p| Value::Object(p.conf.clone())).collect::<Vec<_>>(),
        })
    }
}

/// A plugin type names a file in a bin dir: no path separators, no dot files.
fn valid_plugin_type(kind: &str) -> bool {
    !kind.is_empty() && !kind.contains('/') && !kind.starts_with('.')
}

/// Container ids name cache files: no separators, no dot files.
fn check_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidContainerId {
            container_id: id.to_string(),
        })
    }
}

/// Network config files of `dir` in lexical order; a missing dir has none.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_err("reading cni config dir", dir)(err)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err("reading cni config dir", dir))?.path();
        let wanted = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| CONFIG_EXTENSIONS.contains(&ext));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `runtimeConfig` values by capability name.
fn runtime_config(att: &Attachment<'_>) -> Map<String, Value> {
    let mut rt = Map::new();
    if !att.port_mappings.is_empty() {
        let mappings = att
            .port_mappings
            .iter()
            .map(|pm| {
                let mut m = Map::new();
                m.insert("hostPort".into(), pm.host_port.into());
                m.insert("containerPort".into(), pm.container_port.into());
                m.insert("protocol".into(), pm.protocol.to_ascii_lowercase().into());
                if !pm.host_ip.is_empty() {
                    m.insert("hostIP".into(), pm.host_ip.clone().into());
                }
                Value::Object(m)
            })
            .collect();
        rt.insert("portMappings".into(), Value::Array(mappings));
    }
    if let Some(dns) = &att.dns {
        rt.insert(
            "dns".into(),
            json!({
                "servers": dns.servers,
                "searches": dns.searches,
                "options": dns.options,
            }),
        );
    }
    rt
}

/// A plugin's stdin: its config with the network's `name` and `cniVersion`, the
/// `prevResult`, and the `runtimeConfig` entries for the capabilities it declares.
fn plugin_stdin(
    net: &NetworkConfig,
    plugin: &Plugin,
    prev: Option<&Value>,
    runtime: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), net.name.clone().into());
    conf.insert("cniVersion".into(), net.cni_version.clone().into());
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let capable = |key: &str| {
        plugin
            .conf
            .get("capabilities")
            .and_then(|caps| caps.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let rt: Map<String, Value> = runtime
        .iter()
        .filter(|(key, _)| capable(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if !rt.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rt));
    }
    Value::Object(conf)
}

/// `CNI_ARGS` as the kubelet's runtimes pass them.
fn cni_args(att: &Attachment<'_>) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        att.pod_namespace, att.pod_name, att.container_id, att.pod_uid
    )
}

/// The addresses of a result: `ips[].address` (0.3.0 and later) of interfaces inside the
/// sandbox (or without an interface), or `ip4.ip`/`ip6.ip` of 0.1/0.2 results.
fn result_ips(result: &Value) -> Result<Vec<IpAddr>, String> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let mut ips = Vec::new();
    if let Some(list) = result.get("ips") {
        let list = list.as_array().ok_or("ips is not a list")?;
        for entry in list {
            let address = entry
                .get("address")
                .and_then(Value::as_str)
                .ok_or("an ips entry has no address")?;
            let on_host = entry
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| interfaces.and_then(|list| list.get(i)))
                .is_some_and(|iface| {
                    iface
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                });
            if !on_host {
                ips.push(parse_cidr(address)?);
            }
        }
    }
    for legacy in ["ip4", "ip6"] {
        if let Some(address) = result
            .get(legacy)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            ips.push(parse_cidr(address)?);
        }
    }
    Ok(ips)
}

/// The address of `addr/prefix`.
fn parse_cidr(cidr: &str) -> Result<IpAddr, String> {
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not in address/prefix form"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{cidr:?} has an invalid address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(len) if len <= max => Ok(addr),
        _ => Err(format!("{cidr:?} has an invalid prefix length")),
    }
}

/// CHECK exists from CNI 0.4.0 on.
fn supports_check(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (0, 4),
        // Unknown forms are newer than this code.
        _ => true,
    }
}

/// DEL errors that mean the thing to delete is already gone.
fn is_already_gone(err: &Error) -> bool {
    let Error::Plugin { reason, .. } = err else {
        return false;
    };
    let reason = reason.to_ascii_lowercase();
    [
        "not found",
        "no such",
        "does not exist",
        "doesn't exist",
        "cannot find",
    ]
    .iter()
    .any(|phrase| reason.contains(phrase))
}

/// The CNI error code and a message from a failed plugin's output.
fn failure_reason(status: &str, stdout: &[u8], stderr: &[u8]) -> (Option<u64>, String) {
    if let Ok(Value::Object(err)) = serde_json::from_slice::<Value>(stdout)
        && (err.contains_key("msg") || err.contains_key("code"))
    {
        let code = err.get("code").and_then(Value::as_u64);
        let text = |key: &str| err.get(key).and_then(Value::as_str).unwrap_or("").trim();
        let mut reason = match (text("msg"), text("details")) {
            ("", "") => "no message".to_string(),
            (msg, "") => msg.to_string(),
            ("", details) => details.to_string(),
            (msg, details) => format!("{msg}: {details}"),
        };
        if let Some(code) = code {
            reason.push_str(&format!(" (code {code})"));
        }
        return (code, reason);
    }
    for out in [stderr, stdout] {
        let text = String::from_utf8_lossy(out);
        let text = text.trim();
        if !text.is_empty() {
            let mut end = text.len().min(MAX_STDERR);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            return (None, format!("{} ({status})", &text[..end]));
        }
    }
    (None, status.to_string())
}

fn to_pretty_json(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Writes `path` through a temp file in the same dir, fsynced, renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("creating temp file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("writing", tmp.path()))?;
    tmp.persist(path)
        .map_err(|err| io_err("renaming into place", path)(err.error))?;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheRecord {
    kind: String,
    container_id: String,
    if_name: String,
    network_name: String,
    /// The network config list the result came from.
    config: Value,
    result: Value,
}

struct Cached {
    network: NetworkConfig,
    result: Value,
}

/// One plugin run.
#[derive(Debug)]
struct Invocation<'a> {
    plugin: &'a str,
    path: &'a Path,
    command: Command,
    env: Vec<(&'static str, OsString)>,
    stdin: Vec<u8>,
}

#[derive(Debug)]
enum ExecFailure {
    Io(io::Error),
    Timeout(Duration),
    Exit {
        status: String,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

/// How a plugin is run: a process in production, a recording fake in tests.
#[async_trait]
trait Exec: Send + Sync {
    /// Runs the plugin, returning its stdout when it exits 0.
    async fn exec(&self, inv: &Invocation<'_>) -> Result<Vec<u8>, ExecFailure>;
}

struct ProcessExec {
    timeout: Duration,
}

#[async_trait]
impl Exec for ProcessExec {
    async fn exec(&self, inv: &Invocation<'_>) -> Result<Vec<u8>, ExecFailure> {
        let mut child = tokio::process::Command::new(inv.path)
            .envs(inv.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(ExecFailure::Io)?;
        let stdin = child.stdin.take();
        let feed = async {
            if let Some(mut stdin) = stdin {
                // A plugin may exit before reading everything; its status tells.
                if let Err(err) = stdin.write_all(&inv.stdin).await {
                    tracing::debug!(plugin = inv.plugin, %err, "writing cni plugin stdin");
                }
            }
        };
        let run = async {
            let ((), out) = tokio::join!(feed, child.wait_with_output());
            out
        };
        // On timeout the child is dropped with the future, and killed.
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| ExecFailure::Timeout(self.timeout))?
            .map_err(ExecFailure::Io)?;
        tracing::debug!(plugin = inv.plugin, command = %inv.command, status = %out.status, "cni plugin exited");
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(ExecFailure::Exit {
                status: out.status.to_string(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// A recorded plugin call.
    #[derive(Debug, Clone)]
    struct Call {
        plugin: String,
        command: Command,
        env: HashMap<String, String>,
        stdin: Value,
    }

    /// Records calls; ADD echoes `prevResult` (or a fresh result) with the plugin appended
    /// to `chain`; injected failures print the given stdout and exit 1.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<Call>>,
        failures: Mutex<HashMap<(String, Command), Value>>,
        /// Successful output replacing the echo, by plugin.
        outputs: Mutex<HashMap<String, Vec<u8>>>,
    }

    impl Fake {
        fn fail(&self, plugin: &str, command: Command, stdout: Value) {
            self.failures
                .lock()
                .expect("lock")
                .insert((plugin.to_string(), command), stdout);
        }

        fn output(&self, plugin: &str, stdout: &[u8]) {
            self.outputs
                .lock()
                .expect("lock")
                .insert(plugin.to_string(), stdout.to_vec());
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().expect("lock").clone()
        }

        fn take_calls(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().expect("lock"))
        }
    }

    #[async_trait]
    impl Exec for Fake {
        async fn exec(&self, inv: &Invocation<'_>) -> Result<Vec<u8>, ExecFailure> {
            let stdin: Value = serde_json::from_slice(&inv.stdin).expect("stdin is JSON");
            let env = inv
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
                .collect();
            self.calls.lock().expect("lock").push(Call {
                plugin: inv.plugin.to_string(),
                command: inv.command,
                env,
                stdin: stdin.clone(),
            });
            let failure = self
                .failures
                .lock()
                .expect("lock")
                .get(&(inv.plugin.to_string(), inv.command))
                .cloned();
            if let Some(stdout) = failure {
                return Err(ExecFailure::Exit {
                    status: "exit status: 1".into(),
                    stdout: serde_json::to_vec(&stdout).expect("json"),
                    stderr: Vec::new(),
                });
            }
            if inv.command != Command::Add {
                return Ok(Vec::new());
            }
            if let Some(stdout) = self.outputs.lock().expect("lock").get(inv.plugin) {
                return Ok(stdout.clone());
            }
            let mut result = stdin.get("prevResult").cloned().unwrap_or_else(|| {
                json!({
                    "cniVersion": "1.0.0",
                    "interfaces": [{ "name": "eth0", "sandbox": "/ns" }],
                    "ips": [{ "interface": 0, "address": "10.88.0.5/16" }],
                    "chain": [],
                })
            });
            if let Some(Value::Array(chain)) = result.get_mut("chain") {
                chain.push(inv.plugin.into());
            }
            Ok(serde_json::to_vec(&result).expect("json"))
        }
    }

    const CHAIN: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "test-net",
        "plugins": [
            { "type": "bridge", "bridge": "br-test", "ipam": { "type": "host-local" } },
            { "type": "tuning", "capabilities": { "portMappings": false } },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    }"#;

    struct Setup {
        dir: tempfile::TempDir,
        cni: Cni,
        fake: Arc<Fake>,
    }

    impl Setup {
        fn conf_dir(&self) -> PathBuf {
            self.dir.path().join("net.d")
        }

        fn cache_file(&self, id: &str) -> PathBuf {
            self.dir.path().join("cache").join(format!("{id}.json"))
        }

        fn netns(&self) -> PathBuf {
            self.dir.path().join("no-such-netns")
        }
    }

    /// A conf dir with `10-test.conflist` (if given) and a bin dir with `bins`.
    fn setup(conflist: Option<&str>, bins: &[&str]) -> Setup {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_dir = dir.path().join("net.d");
        let bin_dir = dir.path().join("bin");
        fs::create_dir_all(&conf_dir).expect("mkdir");
        fs::create_dir_all(&bin_dir).expect("mkdir");
        if let Some(conflist) = conflist {
            fs::write(conf_dir.join("10-test.conflist"), conflist).expect("write");
        }
        for bin in bins {
            let path = bin_dir.join(bin);
            fs::write(&path, b"").expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let fake = Arc::new(Fake::default());
        let cni = Cni::with_exec(
            CniConfig {
                conf_dir,
                bin_dirs: vec![dir.path().join("missing-bin"), bin_dir],
                pod_cidr: "10.88.0.0/16".into(),
                cache_dir: dir.path().join("cache"),
            },
            fake.clone(),
        );
        Setup { dir, cni, fake }
    }

    const ALL_BINS: &[&str] = &["loopback", "bridge", "tuning", "portmap", "ptp"];

    fn ports() -> Vec<PortMapping> {
        vec![PortMapping {
            protocol: "TCP".into(),
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        }]
    }

    fn attachment<'a>(netns: &'a Path, ports: &'a [PortMapping]) -> Attachment<'a> {
        Attachment {
            container_id: "abc123",
            netns,
            ifname: "eth0",
            pod_name: "web",
            pod_namespace: "default",
            pod_uid: "uid-1",
            port_mappings: ports,
            dns: Some(Dns {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
        }
    }

    fn plugins_and_commands(calls: &[Call]) -> Vec<(&str, Command)> {
        calls
            .iter()
            .map(|c| (c.plugin.as_str(), c.command))
            .collect()
    }

    #[test]
    fn parses_network_configs() {
        type Expect = Result<(&'static str, &'static str, &'static [&'static str]), &'static str>;
        let cases: &[(&str, &str, Expect)] = &[
            (
                "a.conflist",
                CHAIN,
                Ok(("test-net", "1.0.0", &["bridge", "tuning", "portmap"])),
            ),
            (
                "a.conf",
                r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"b0"}"#,
                Ok(("single", "0.4.0", &["bridge"])),
            ),
            (
                "a.json",
                r#"{"cniVersion":"1.0.0","name":"js","type":"ptp"}"#,
                Ok(("js", "1.0.0", &["ptp"])),
            ),
            (
                "old.conflist",
                r#"{"name":"old","plugins":[{"type":"bridge"}]}"#,
                Ok(("old", "0.1.0", &["bridge"])),
            ),
            (
                "a.conf",
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                Err("must be in a .conflist"),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                Err("missing network name"),
            ),
            (
                "a.conflist",
                r#"{"name":"n","plugins":[]}"#,
                Err("empty plugins list"),
            ),
            ("a.conflist", r#"{"name":"n"}"#, Err("missing plugins list")),
            (
                "a.conflist",
                r#"{"name":"n","plugins":[{"bridge":"x"}]}"#,
                Err("plugin 0 has no type"),
            ),
            (
                "a.conflist",
                r#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                Err("invalid type"),
            ),
            ("a.conflist", "{ nope", Err("not JSON")),
            ("a.conf", r#"["bridge"]"#, Err("not a JSON object")),
        ];
        for (file, content, expect) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(file);
            fs::write(&path, content).expect("write");
            let got = NetworkConfig::from_file(&path);
            match (expect, got) {
                (Ok((name, version, types)), Ok(net)) => {
                    assert_eq!(net.name, *name, "{file}: {content}");
                    assert_eq!(net.cni_version, *version, "{file}: {content}");
                    let kinds: Vec<_> = net.plugins.iter().map(|p| p.kind.as_str()).collect();
                    assert_eq!(kinds, *types, "{file}: {content}");
                }
                (Err(want), Err(err)) => {
                    let msg = err.to_string();
                    assert!(msg.contains(want), "{file}: {content}: {msg}");
                    assert!(msg.contains(&path.display().to_string()), "{msg}");
                }
                (expect, got) => panic!("{file}: {content}: expected {expect:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn first_config_in_lexical_order_is_the_network() {
        let s = setup(None, ALL_BINS);
        let dir = s.conf_dir();
        assert!(matches!(
            s.cni.load_network(),
            Err(Error::NoNetworkConfig { .. })
        ));
        let files = [
            (
                "20-b.conflist",
                r#"{"name":"b","plugins":[{"type":"bridge"}]}"#,
            ),
            ("10-a.conf", r#"{"name":"a","type":"ptp"}"#),
            ("05-ignored.txt", r#"{"name":"txt","type":"ptp"}"#),
            ("30-c.json", r#"{"name":"c","type":"ptp"}"#),
        ];
        for (name, content) in files {
            fs::write(dir.join(name), content).expect("write");
        }
        // A directory with a config extension is not a config.
        fs::create_dir(dir.join("00-dir.conflist")).expect("mkdir");
        assert_eq!(s.cni.load_network().expect("load").name, "a");
        fs::remove_file(dir.join("10-a.conf")).expect("rm");
        assert_eq!(s.cni.load_network().expect("load").name, "b");

        let missing = Cni::new(CniConfig {
            conf_dir: s.dir.path().join("nope"),
            ..s.cni.config().clone()
        });
        assert!(matches!(
            missing.status(),
            Err(Error::NoNetworkConfig { .. })
        ));
    }

    #[test]
    fn default_conflist_routes_per_family() {
        let cases: &[(&str, Result<&[&str], ()>)] = &[
            ("10.88.0.0/16", Ok(&["0.0.0.0/0"])),
            ("fd00:10::/64", Ok(&["::/0"])),
            ("10.88.0.0/16, fd00:10::/64", Ok(&["0.0.0.0/0", "::/0"])),
            ("10.88.0.0/16,10.89.0.0/16", Ok(&["0.0.0.0/0"])),
            ("10.88.0.0", Err(())),
            ("10.88.0.0/33", Err(())),
            ("banana/8", Err(())),
            ("", Err(())),
        ];
        for (cidr, expect) in cases {
            let got = default_conflist("n", "br", cidr, Path::new("/ipam"));
            match (expect, got) {
                (Ok(routes), Ok(conf)) => {
                    let ipam = &conf["plugins"][0]["ipam"];
                    let got: Vec<_> = ipam["routes"]
                        .as_array()
                        .expect("routes")
                        .iter()
                        .filter_map(|r| r["dst"].as_str())
                        .collect();
                    assert_eq!(got, *routes, "{cidr}");
                    let subnets = ipam["ranges"].as_array().expect("ranges").len();
                    assert_eq!(subnets, cidr.split(',').count(), "{cidr}");
                }
                (Err(()), Err(err)) => {
                    assert!(matches!(err, Error::InvalidPodCidr { .. }), "{cidr}: {err}")
                }
                (expect, got) => panic!("{cidr}: expected {expect:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn default_bridge_follows_the_pod_cidr() {
        assert_eq!(default_bridge(DEFAULT_POD_CIDR), DEFAULT_BRIDGE);
        let a = default_bridge("10.89.0.0/16");
        let b = default_bridge("10.90.0.0/16");
        assert_ne!(a, b);
        assert_ne!(a, DEFAULT_BRIDGE);
        assert_eq!(a, default_bridge(" 10.89.0.0/16 "), "stable");
        assert!(a.starts_with("nodelet-") && a.len() <= 15, "{a}");
    }

    #[test]
    fn writes_default_conflist_only_when_none() {
        let s = setup(None, ALL_BINS);
        s.cni.ensure_default_conflist().expect("ensure");
        let path = s.conf_dir().join(DEFAULT_CONFLIST);
        let conf: Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        let bridge = &conf["plugins"][0];
        let expected = json!({
            "cniVersion": "1.0.0",
            "name": "nodelet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "nodelet0",
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": "10.88.0.0/16" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": s.dir.path().join("cache/host-local"),
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        assert_eq!(conf, expected, "{bridge}");
        // Only the conflist: no temp file left behind.
        let names: Vec<_> = fs::read_dir(s.conf_dir())
            .expect("readdir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(DEFAULT_CONFLIST)]);
        s.cni.status().expect("status of the default network");

        // An existing config, ours or another, is left alone.
        fs::write(&path, CHAIN).expect("write");
        s.cni.ensure_default_conflist().expect("ensure again");
        assert_eq!(fs::read_to_string(&path).expect("read"), CHAIN);
        let other = setup(Some(CHAIN), ALL_BINS);
        other.cni.ensure_default_conflist().expect("ensure");
        assert!(!other.conf_dir().join(DEFAULT_CONFLIST).exists());
    }

    #[test]
    fn the_nodes_pod_cidr_rewrites_only_our_default_network() {
        let s = setup(None, ALL_BINS);
        s.cni.ensure_default_conflist().expect("ensure");
        let path = s.conf_dir().join(DEFAULT_CONFLIST);
        assert!(s.cni.set_pod_cidr("10.244.3.0/24").expect("set"));
        let conf: Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        assert_eq!(
            conf["plugins"][0]["bridge"],
            default_bridge("10.244.3.0/24")
        );
        assert!(
            !s.cni.set_pod_cidr("10.244.3.0/24").expect("same"),
            "unchanged"
        );
        assert!(!s.cni.set_pod_cidr("").expect("empty"), "nothing reported");
        assert!(
            s.cni.set_pod_cidr("not-a-cidr").is_err(),
            "a bad CIDR is an error"
        );
        // Someone else's network config is theirs.
        let other = setup(Some(CHAIN), ALL_BINS);
        assert!(!other.cni.set_pod_cidr("10.244.3.0/24").expect("other"));
    }

    #[test]
    fn stdin_gets_name_version_prev_result_and_capable_runtime_config() {
        let net =
            NetworkConfig::from_value(serde_json::from_str(CHAIN).expect("json"), Path::new("x"))
                .expect("parse");
        let prev = json!({ "cniVersion": "1.0.0", "ips": [] });
        let ports = ports();
        let netns = PathBuf::from("/ns");
        let att = attachment(&netns, &ports);
        let rt = runtime_config(&att);
        // (plugin index, prevResult, expected runtimeConfig)
        let cases: &[(usize, Option<&Value>, Option<Value>)] = &[
            (0, None, None),
            (1, Some(&prev), None),
            (
                2,
                Some(&prev),
                Some(json!({
                    "portMappings": [
                        { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }
                    ]
                })),
            ),
        ];
        for (i, prev, runtime) in cases {
            let plugin = &net.plugins[*i];
            let stdin = plugin_stdin(&net, plugin, *prev, &rt);
            assert_eq!(stdin["name"], "test-net");
            assert_eq!(stdin["cniVersion"], "1.0.0");
            assert_eq!(stdin["type"], plugin.kind.as_str());
            assert_eq!(stdin.get("prevResult"), *prev, "plugin {i}");
            assert_eq!(stdin.get("runtimeConfig"), runtime.as_ref(), "plugin {i}");
        }
        // dns goes to plugins declaring it, hostIP only when set.
        let dns_plugin = Plugin {
            kind: "dnsy".into(),
            conf: serde_json::from_value(json!({
                "type": "dnsy",
                "capabilities": { "dns": true, "portMappings": true },
            }))
            .expect("map"),
        };
        let mut ports = ports.clone();
        ports[0].host_ip = "127.0.0.1".into();
        ports[0].protocol = "udp".into();
        let att = Attachment {
            port_mappings: &ports,
            ..att.clone()
        };
        let stdin = plugin_stdin(&net, &dns_plugin, None, &runtime_config(&att));
        assert_eq!(
            stdin["runtimeConfig"],
            json!({
                "portMappings": [
                    { "hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1" }
                ],
                "dns": {
                    "servers": ["10.96.0.10"],
                    "searches": ["default.svc.cluster.local"],
                    "options": ["ndots:5"],
                },
            })
        );
        let bare = Attachment {
            port_mappings: &[],
            dns: None,
            ..att
        };
        assert!(runtime_config(&bare).is_empty());
    }

    #[test]
    fn result_ips_of_sandbox_interfaces() {
        let v4: IpAddr = "10.88.0.5".parse().expect("ip");
        let v6: IpAddr = "fd00::5".parse().expect("ip");
        let cases: Vec<(Value, Result<Vec<IpAddr>, &str>)> = vec![
            (
                json!({
                    "interfaces": [
                        { "name": "cni0" },
                        { "name": "veth1", "mac": "aa" },
                        { "name": "eth0", "sandbox": "/run/netns/x" },
                    ],
                    "ips": [
                        { "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1" },
                        { "interface": 2, "address": "fd00::5/64" },
                        { "interface": 0, "address": "10.88.0.1/16" },
                    ],
                }),
                Ok(vec![v4, v6]),
            ),
            (
                json!({ "ips": [{ "address": "10.88.0.5/16" }] }),
                Ok(vec![v4]),
            ),
            (json!({ "ip4": { "ip": "10.88.0.5/16" } }), Ok(vec![v4])),
            (json!({ "cniVersion": "1.0.0" }), Ok(vec![])),
            (
                json!({ "ips": [{ "address": "10.88.0.5" }] }),
                Err("address/prefix"),
            ),
            (
                json!({ "ips": [{ "address": "10.88.0.500/16" }] }),
                Err("invalid address"),
            ),
            (
                json!({ "ips": [{ "gateway": "10.88.0.1" }] }),
                Err("no address"),
            ),
            (json!({ "ips": "10.88.0.5/16" }), Err("not a list")),
        ];
        for (result, expect) in cases {
            match (expect, result_ips(&result)) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{result}"),
                (Err(want), Err(got)) => assert!(got.contains(want), "{result}: {got}"),
                (expect, got) => panic!("{result}: expected {expect:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn cni_args_carry_the_pod() {
        let netns = PathBuf::from("/ns");
        let att = attachment(&netns, &[]);
        assert_eq!(
            cni_args(&att),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=uid-1"
        );
    }

    #[test]
    fn failure_reasons() {
        // (stdout, stderr, code, reason)
        type Case = (&'static [u8], &'static [u8], Option<u64>, &'static str);
        let cases: &[Case] = &[
            (
                br#"{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no bridge"}"#,
                b"",
                Some(7),
                "bad config: no bridge (code 7)",
            ),
            (
                br#"{"code":11,"msg":"try later"}"#,
                b"",
                Some(11),
                "try later (code 11)",
            ),
            (b"", b"panic: oops\n", None, "panic: oops (exit status: 2)"),
            (b"garbage", b"", None, "garbage (exit status: 2)"),
            (b"", b"", None, "exit status: 2"),
        ];
        for (stdout, stderr, code, reason) in cases {
            let got = failure_reason("exit status: 2", stdout, stderr);
            assert_eq!(got, (*code, reason.to_string()));
        }
        assert!(supports_check("1.0.0") && supports_check("0.4.0"));
        assert!(!supports_check("0.3.1") && !supports_check("0.1.0"));
        for id in ["", ".hidden", "a/b", "../x", "a b"] {
            assert!(check_container_id(id).is_err(), "{id:?}");
        }
        check_container_id("0123abcdef-x_y.z").expect("valid id");
    }

    #[tokio::test]
    async fn setup_threads_results_through_the_chain() {
        let s = setup(Some(CHAIN), ALL_BINS);
        let ports = ports();
        let netns = s.netns();
        let att = attachment(&netns, &ports);
        let net = s.cni.setup(&att).await.expect("setup");
        assert_eq!(net.network_name, "test-net");
        assert_eq!(net.ips, vec!["10.88.0.5".parse::<IpAddr>().expect("ip")]);

        let calls = s.fake.calls();
        assert_eq!(
            plugins_and_commands(&calls),
            [
                ("bridge", Command::Add),
                ("tuning", Command::Add),
                ("portmap", Command::Add),
            ]
        );
        for call in &calls {
            let env = &call.env;
            assert_eq!(env["CNI_COMMAND"], "ADD");
            assert_eq!(env["CNI_CONTAINERID"], "abc123");
            assert_eq!(env["CNI_NETNS"], netns.display().to_string());
            assert_eq!(env["CNI_IFNAME"], "eth0");
            assert_eq!(env["CNI_ARGS"], cni_args(&att));
            let bins = s.dir.path().join("bin");
            let want_path = format!(
                "{}:{}",
                s.dir.path().join("missing-bin").display(),
                bins.display()
            );
            assert_eq!(env["CNI_PATH"], want_path);
        }
        // Each plugin gets the result of the one before it.
        assert_eq!(calls[0].stdin.get("prevResult"), None);
        assert_eq!(calls[1].stdin["prevResult"]["chain"], json!(["bridge"]));
        assert_eq!(
            calls[2].stdin["prevResult"]["chain"],
            json!(["bridge", "tuning"])
        );
        assert!(calls[2].stdin["runtimeConfig"]["portMappings"].is_array());
        assert!(calls[0].stdin.get("runtimeConfig").is_none());

        let cached: Value =
            serde_json::from_slice(&fs::read(s.cache_file("abc123")).expect("cache"))
                .expect("json");
        assert_eq!(
            cached["result"]["chain"],
            json!(["bridge", "tuning", "portmap"])
        );
        assert_eq!(cached["config"]["name"], "test-net");
        assert_eq!(cached["containerId"], "abc123");
    }

    #[tokio::test]
    async fn failed_add_deletes_the_chain_and_reports_the_plugin() {
        let s = setup(Some(CHAIN), ALL_BINS);
        s.fake.fail(
            "tuning",
            Command::Add,
            json!({ "cniVersion": "1.0.0", "code": 7, "msg": "invalid sysctl", "details": "net.x" }),
        );
        let netns = s.netns();
        let att = attachment(&netns, &[]);
        let err = s.cni.setup(&att).await.expect_err("setup must fail");
        assert!(
            matches!(&err, Error::Plugin { plugin, command: Command::Add, code: Some(7), .. } if plugin == "tuning"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "cni plugin tuning ADD for abc123 failed: invalid sysctl: net.x (code 7)"
        );
        let calls = s.fake.calls();
        assert_eq!(
            plugins_and_commands(&calls[2..]),
            [
                ("portmap", Command::Del),
                ("tuning", Command::Del),
                ("bridge", Command::Del),
            ]
        );
        assert_eq!(calls[2].stdin["prevResult"]["chain"], json!(["bridge"]));
        assert!(!s.cache_file("abc123").exists());
    }

    #[tokio::test]
    async fn invalid_results_fail_the_add() {
        // (plugin, its stdout, expected reason); an empty output keeps the previous result.
        let cases: &[(&str, &[u8], Option<&str>)] = &[
            ("portmap", b"not json", Some("parsing the result")),
            ("portmap", b"[1]", Some("not a JSON object")),
            (
                "portmap",
                br#"{"ips":[{"address":"nope"}]}"#,
                Some("address/prefix"),
            ),
            ("portmap", b"  \n", None),
            ("bridge", b"", Some("the chain printed no result")),
        ];
        for (plugin, stdout, expect) in cases {
            let chain = if *plugin == "bridge" {
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#
            } else {
                CHAIN
            };
            let s = setup(Some(chain), ALL_BINS);
            s.fake.output(plugin, stdout);
            let netns = s.netns();
            let att = attachment(&netns, &[]);
            let got = s.cni.setup(&att).await;
            match (expect, got) {
                (None, Ok(net)) => assert_eq!(net.ips.len(), 1),
                (Some(want), Err(err)) => {
                    assert!(
                        matches!(&err, Error::InvalidResult { plugin: p, .. } if p == plugin),
                        "{err:?}"
                    );
                    assert!(err.to_string().contains(want), "{err}");
                    let dels = s
                        .fake
                        .calls()
                        .iter()
                        .filter(|c| c.command == Command::Del)
                        .count();
                    assert!(dels > 0, "{plugin}: the chain is deleted again");
                    assert!(!s.cache_file("abc123").exists());
                }
                (expect, got) => panic!("{plugin} {stdout:?}: expected {expect:?}, got {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn missing_plugins() {
        // The loopback plugin is not needed: `lo` comes up with the namespace.
        let s = setup(Some(CHAIN), &["bridge", "tuning", "portmap"]);
        let netns = s.netns();
        let att = attachment(&netns, &[]);
        s.cni.setup(&att).await.expect("setup without loopback");
        assert_eq!(s.fake.calls()[0].plugin, "bridge");

        // A chain plugin missing: status says which, setup fails before running anything.
        let s = setup(Some(CHAIN), &["loopback", "bridge", "tuning"]);
        let err = s.cni.status().expect_err("status");
        assert!(
            matches!(&err, Error::PluginNotFound { plugin, network, .. } if plugin == "portmap" && network == "test-net"),
            "{err:?}"
        );
        assert!(err.to_string().contains("bin"), "{err}");
        let err = s.cni.setup(&att).await.expect_err("setup");
        assert!(matches!(err, Error::PluginNotFound { .. }), "{err:?}");
        assert!(s.fake.calls().is_empty(), "nothing ran");
    }

    #[tokio::test]
    async fn teardown_uses_the_cached_config_and_is_idempotent() {
        let s = setup(Some(CHAIN), ALL_BINS);
        let netns = s.netns();
        let att = attachment(&netns, &[]);
        s.cni.setup(&att).await.expect("setup");
        s.fake.take_calls();
        // The config changes after setup: teardown still deletes what was set up.
        fs::write(
            s.conf_dir().join("10-test.conflist"),
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"ptp"}]}"#,
        )
        .expect("write");

        s.cni.teardown(&att).await.expect("teardown");
        let calls = s.fake.take_calls();
        assert_eq!(
            plugins_and_commands(&calls),
            [
                ("portmap", Command::Del),
                ("tuning", Command::Del),
                ("bridge", Command::Del),
            ],
            "the chain only, with the netns gone"
        );
        for call in &calls {
            assert_eq!(
                call.env["CNI_NETNS"], "",
                "a gone netns is an empty CNI_NETNS"
            );
            assert_eq!(call.stdin["name"], "test-net");
            assert_eq!(
                call.stdin["prevResult"]["chain"],
                json!(["bridge", "tuning", "portmap"])
            );
        }
        assert!(!s.cache_file("abc123").exists());

        // Second time: no cache, the current config, no prevResult; plugins complaining
        // that things are gone do not fail it.
        s.fake.fail(
            "ptp",
            Command::Del,
            json!({ "code": 999, "msg": "failed to find plugin interface: Link not found" }),
        );
        s.cni.teardown(&att).await.expect("second teardown");
        let calls = s.fake.take_calls();
        assert_eq!(plugins_and_commands(&calls), [("ptp", Command::Del)]);
        assert!(calls[0].stdin.get("prevResult").is_none());

        // Nothing cached and no config at all: nothing to do.
        fs::remove_file(s.conf_dir().join("10-test.conflist")).expect("rm");
        s.cni.teardown(&att).await.expect("teardown without config");
        assert!(s.fake.calls().is_empty());
    }

    #[tokio::test]
    async fn failed_teardown_keeps_the_cache_for_a_retry() {
        let s = setup(Some(CHAIN), ALL_BINS);
        let netns = s.netns();
        let att = attachment(&netns, &[]);
        s.cni.setup(&att).await.expect("setup");
        s.fake.take_calls();
        s.fake.fail(
            "tuning",
            Command::Del,
            json!({ "code": 5, "msg": "permission denied" }),
        );
        let err = s.cni.teardown(&att).await.expect_err("teardown");
        assert!(
            matches!(&err, Error::Plugin { plugin, command: Command::Del, .. } if plugin == "tuning"),
            "{err:?}"
        );
        // The other plugins were still asked to delete.
        assert_eq!(s.fake.calls().len(), 3);
        assert!(s.cache_file("abc123").exists());
    }

    #[tokio::test]
    async fn check_needs_a_cached_setup() {
        let s = setup(Some(CHAIN), ALL_BINS);
        let netns = s.netns();
        let att = attachment(&netns, &[]);
        let err = s.cni.check(&att).await.expect_err("check before setup");
        assert!(matches!(err, Error::NotSetUp { .. }), "{err:?}");
        s.cni.setup(&att).await.expect("setup");
        let err = s.cni.check(&att).await.expect_err("check without netns");
        assert!(matches!(err, Error::NetnsMissing { .. }), "{err:?}");

        let cases = [
            (r#""cniVersion":"0.3.1""#, Some("does not support check")),
            (r#""cniVersion":"1.0.0","disableCheck":true"#, None),
        ];
        for (fields, expect) in cases {
            let s = setup(
                Some(&format!(
                    r#"{{{fields},"name":"n","plugins":[{{"type":"bridge"}}]}}"#
                )),
                ALL_BINS,
            );
            s.cni.setup(&att).await.expect("setup");
            s.fake.take_calls();
            match (expect, s.cni.check(&att).await) {
                (None, Ok(())) => {}
                (Some(want), Err(err)) => assert!(err.to_string().contains(want), "{err}"),
                (expect, got) => panic!("{fields}: expected {expect:?}, got {got:?}"),
            }
            assert!(s.fake.calls().is_empty(), "{fields}");
        }
    }

    #[tokio::test]
    async fn process_exec_reports_results_errors_and_timeouts() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        let echo = script(
            "echo",
            r#"printf '{"cmd":"%s","stdin":' "$CNI_COMMAND"; cat; printf '}'"#,
        );
        let fail = script(
            "fail",
            r#"cat >/dev/null; echo '{"code":4,"msg":"bad"}'; echo noise >&2; exit 1"#,
        );
        let slow = script("slow", "exec sleep 30");
        let exec = ProcessExec {
            timeout: Duration::from_millis(300),
        };
        fn inv(path: &Path) -> Invocation<'_> {
            Invocation {
                plugin: "p",
                path,
                command: Command::Add,
                env: vec![("CNI_COMMAND", "ADD".into())],
                stdin: br#"{"x":1}"#.to_vec(),
            }
        }
        let out = exec.exec(&inv(&echo)).await.expect("echo");
        assert_eq!(
            serde_json::from_slice::<Value>(&out).expect("json"),
            json!({ "cmd": "ADD", "stdin": { "x": 1 } })
        );
        match exec.exec(&inv(&fail)).await {
            Err(ExecFailure::Exit { stdout, stderr, .. }) => {
                assert_eq!(
                    failure_reason("exit status: 1", &stdout, &stderr),
                    (Some(4), "bad (code 4)".to_string())
                );
            }
            other => panic!("expected an exit failure, got {other:?}"),
        }
        assert!(matches!(
            exec.exec(&inv(&slow)).await,
            Err(ExecFailure::Timeout(_))
        ));
        assert!(matches!(
            exec.exec(&inv(&dir.path().join("missing"))).await,
            Err(ExecFailure::Io(_))
        ));
    }
}
