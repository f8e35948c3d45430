//! `RunPodSandbox`: files, /dev/shm, the pinned network namespace configured through
//! CNI, and what holds the pod's IPC and UTS namespaces: pins of their own, or (for a pod
//! that shares one PID namespace, which needs a PID 1) an infra container.

use std::path::{Path, PathBuf};

use proto::v1;

use super::rootfs::{self, Rootfs};
use super::{Error, Namespaces, Ns, Result, Runtime, Sandbox, SandboxFiles, io_err};
use super::{cni, monitor, netns, now_ns, spec};

/// containerd's default size of a pod's /dev/shm.
const SHM_SIZE: u64 = 64 << 20;

impl Runtime {
    #[tracing::instrument(skip_all, fields(pod.name, pod.uid, sandbox.id))]
    pub async fn run_pod_sandbox(
        self: &std::sync::Arc<Self>,
        config: v1::PodSandboxConfig,
        handler: &str,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("sandbox config has no metadata".into()))?;
        if meta.name.is_empty() || meta.uid.is_empty() || meta.namespace.is_empty() {
            return Err(Error::InvalidArgument(
                "sandbox metadata needs name, uid and namespace".into(),
            ));
        }
        let handler_name = if handler.is_empty() {
            self.cfg.default_handler.clone()
        } else {
            handler.to_string()
        };
        self.handler(&handler_name)?;
        let id = super::new_id();
        let span = tracing::Span::current();
        span.record("pod.name", meta.name.as_str());
        span.record("pod.uid", meta.uid.as_str());
        span.record("sandbox.id", id.as_str());

        let dir = self.sandboxes.dir_of(&id);
        let ns_opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_net = ns_opts.network == v1::NamespaceMode::Node as i32;
        let host_ipc = ns_opts.ipc == v1::NamespaceMode::Node as i32;
        let host_pid = ns_opts.pid == v1::NamespaceMode::Node as i32;
        let pinned = !self.cfg.infra_for_every_pod && ns_opts.pid != v1::NamespaceMode::Pod as i32;
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| super::default_cgroup_parent(&id));
        let netns_path =
            (!host_net).then(|| self.cfg.netns_dir.join(format!("nodelet-{}", &id[..16])));
        let files = SandboxFiles {
            hostname: dir.join("hostname"),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            shm: (!host_ipc).then(|| dir.join("shm")),
        };
        // A pinned pod's IPC and UTS namespaces are pinned in its directory; its
        // containers each get their own PID namespace (`New`), as the pod shares none.
        let own = |kind: &str| {
            if pinned {
                Ns::Join(dir.join("ns").join(kind))
            } else {
                Ns::New
            }
        };
        let namespaces = Namespaces {
            network: netns_path.clone().map_or(Ns::Host, Ns::Join),
            ipc: if host_ipc { Ns::Host } else { own("ipc") },
            uts: if host_net { Ns::Host } else { own("uts") },
            pid: if host_pid { Ns::Host } else { Ns::New },
        };
        let record = Sandbox {
            id: id.clone(),
            config: config.clone(),
            handler: handler_name,
            created_at_ns: now_ns(),
            netns: netns_path,
            ips: vec![],
            infra_pid: 0,
            monitor_pid: 0,
            cgroup_parent,
            files,
            namespaces,
            pinned,
            ready_at_ns: None,
            stopped_at_ns: None,
            infra_exited_at_ns: None,
        };
        self.sandboxes.reserve(&record)?;
        // The record is on disk before anything is created on the host, so a crash
        // midway leaves something recovery and StopPodSandbox can clean up.
        let record = match self.sandboxes.add(record.clone()) {
            Ok(r) => r,
            Err(e) => {
                self.sandboxes.release(&record);
                return Err(e.into());
            }
        };
        let _guard = self.lock(&id).await;
        match self.setup_sandbox(&record).await {
            Ok(()) => {
                if let Ok(sb) = self.sandboxes.get(&id)
                    && !sb.pinned
                {
                    self.watch_infra(&sb);
                }
                tracing::info!(ips = ?self.sandboxes.get(&id).map(|s| s.ips).unwrap_or_default(), "sandbox ready");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(err = %e, "sandbox failed; cleaning up");
                if let Err(clean) = self.teardown_sandbox(&id).await {
                    tracing::warn!(err = %clean, "cleaning up a failed sandbox");
                }
                let _ = self.sandboxes.remove(&id);
                Err(e)
            }
        }
    }

    async fn setup_sandbox(&self, sb: &Sandbox) -> Result<()> {
        let sysctls = spec::validate_sysctls(
            &sb.config
                .linux
                .as_ref()
                .map(|l| l.sysctls.clone())
                .unwrap_or_default(),
            &sb.namespaces,
        )?;
        write_files(sb)?;
        if let Some(shm) = &sb.files.shm {
            rootfs::mount_tmpfs(shm, Some(SHM_SIZE))?;
        }
        if sb.pinned {
            return self.setup_pinned(sb, &sysctls).await;
        }
        if let Some(ns) = &sb.netns {
            netns::create(ns)?;
        }
        let dir = self.sandboxes.dir_of(&sb.id);
        // The pod network and the infra container only share the pinned netns, which
        // exists now: set both up at once (CNI plugins and the OCI runtime are each
        // tens of milliseconds of exec), unless the infra must set sysctls of the
        // interfaces CNI creates.
        if sysctls.keys().any(|k| k.starts_with("net.")) {
            self.setup_network_of_infra_pod(sb).await?;
            return self.start_infra(sb, &dir).await;
        }
        let (net, infra) = tokio::join!(
            self.setup_network_of_infra_pod(sb),
            self.start_infra(sb, &dir)
        );
        net.and(infra)
    }

    /// A pod without an infra process: its namespaces are created and pinned, the
    /// network set up, then its sysctls written in its namespaces.
    async fn setup_pinned(
        &self,
        sb: &Sandbox,
        sysctls: &std::collections::HashMap<String, String>,
    ) -> Result<()> {
        let pin = |ns: &Ns| match ns {
            Ns::Join(p) => Some(p.clone()),
            _ => None,
        };
        let (ipc, uts) = (pin(&sb.namespaces.ipc), pin(&sb.namespaces.uts));
        netns::create_pod(&netns::PodNamespaces {
            net: sb.netns.as_deref(),
            ipc: ipc.as_deref(),
            uts: uts.as_deref(),
            hostname: &sb.config.hostname,
        })?;
        let ips = self.setup_network(sb).await?;
        let mut sysctls: Vec<(String, String)> = sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sysctls.sort();
        netns::apply_sysctls(sb.netns.as_deref(), ipc.as_deref(), &sysctls)?;
        self.sandboxes.update(&sb.id, |s| {
            s.ips = ips;
            s.ready_at_ns = Some(now_ns());
        })?;
        Ok(())
    }

    /// CNI ADD; the pod's IPs, primary first (none with host networking).
    async fn setup_network(&self, sb: &Sandbox) -> Result<Vec<String>> {
        let Some(ns) = &sb.netns else {
            return Ok(vec![]);
        };
        let args = CniArgs::of(sb);
        let net = self.cni.setup(&args.attachment(&sb.id, ns)).await?;
        Ok(net.ips.iter().map(|ip| ip.to_string()).collect())
    }

    async fn setup_network_of_infra_pod(&self, sb: &Sandbox) -> Result<()> {
        let ips = self.setup_network(sb).await?;
        self.sandboxes.update(&sb.id, |s| s.ips = ips)?;
        Ok(())
    }

    async fn start_infra(&self, sb: &Sandbox, dir: &Path) -> Result<()> {
        let handler = self.handler(&sb.handler)?.clone();
        let (root, args, extra_mounts) = self.infra_rootfs(dir).await?;
        let cgroups_path = format!("{}/{}", sb.cgroup_parent.trim_end_matches('/'), sb.id);
        let spec = spec::sandbox_spec(&spec::SandboxInput {
            id: &sb.id,
            config: &sb.config,
            rootfs: &root,
            args,
            extra_mounts,
            namespaces: &sb.namespaces,
            cgroups_path: &cgroups_path,
            host: &self.host,
        })?;
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).map_err(io_err("creating bundle", &bundle))?;
        spec::write_bundle(&bundle, &spec)?;
        let started = monitor::spawn(
            &self.cfg.monitor,
            &monitor::MonitorSpec {
                id: sb.id.clone(),
                bundle: bundle.clone(),
                runtime: handler.path.clone(),
                runtime_root: handler.root.clone(),
                exit_file: bundle.join("exit"),
                log_path: None,
                stdin: false,
                stdin_once: false,
                tty: false,
            },
        )
        .await?;
        self.sandboxes.update(&sb.id, |s| {
            s.monitor_pid = started.monitor_pid;
            s.infra_pid = started.container_pid;
        })?;
        Ok(())
    }

    /// Root, command and extra mounts of the infra container: the configured pause
    /// image, or our own `cri-pause` binary in an empty read-only root that sees the
    /// host's shared libraries.
    async fn infra_rootfs(
        &self,
        dir: &Path,
    ) -> Result<(PathBuf, Vec<String>, Vec<oci_spec::runtime::Mount>)> {
        if !self.cfg.sandbox_image.is_empty() {
            let image = match self.images.resolve(&self.cfg.sandbox_image) {
                Some(i) => i,
                None => {
                    self.images
                        .pull(&self.cfg.sandbox_image, &Default::default())
                        .await?
                }
            };
            let config = self.image_config(&image)?;
            let layers = self.layer_paths(&image)?;
            let rootfs = Rootfs::new(dir);
            rootfs.mount(&layers)?;
            let c = config.config().clone().unwrap_or_default();
            let args: Vec<String> = c
                .entrypoint()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(c.cmd().clone().unwrap_or_default())
                .collect();
            if args.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "sandbox image {} has no entrypoint or command",
                    self.cfg.sandbox_image
                )));
            }
            return Ok((rootfs.target, args, vec![]));
        }
        let root = dir.join("pause-root");
        std::fs::create_dir_all(&root).map_err(io_err("creating infra root", &root))?;
        let mut mounts = vec![bind_ro(&self.cfg.pause, Path::new("/pause"))?];
        for lib in [
            "/lib",
            "/lib32",
            "/lib64",
            "/libx32",
            "/usr/lib",
            "/usr/lib64",
        ] {
            let host = Path::new(lib);
            let Ok(meta) = std::fs::symlink_metadata(host) else {
                continue;
            };
            let inside = root.join(lib.trim_start_matches('/'));
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(host).map_err(io_err("reading link", host))?;
                if let Some(parent) = inside.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
                }
                match std::os::unix::fs::symlink(&target, &inside) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("linking", &inside)(e)),
                }
            } else if meta.is_dir() {
                mounts.push(bind_ro(host, host)?);
            }
        }
        Ok((root, vec!["/pause".into()], mounts))
    }

    /// The image config (entrypoint, env, user, stop signal) of a stored image.
    pub(crate) fn image_config(
        &self,
        image: &crate::image::Image,
    ) -> Result<oci_spec::image::ImageConfiguration> {
        let bytes = self.images.content().read(&image.id)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Image(crate::image::Error::BadConfig {
                digest: image.id.clone(),
                reason: e.to_string(),
            })
        })
    }

    /// Unpacked layer directories of an image, base first.
    pub(crate) fn layer_paths(&self, image: &crate::image::Image) -> Result<Vec<PathBuf>> {
        image
            .layers
            .iter()
            .map(|l| self.images.layer_path(&l.chain_id).map_err(Error::from))
            .collect()
    }
}

/// What CNI is told about a pod, the same for ADD and DEL.
pub(super) struct CniArgs {
    meta: v1::PodSandboxMetadata,
    ports: Vec<cni::PortMapping>,
    dns: Option<cni::Dns>,
}

impl CniArgs {
    pub(super) fn of(sb: &Sandbox) -> Self {
        Self {
            meta: sb.metadata(),
            ports: port_mappings(&sb.config),
            dns: sb.config.dns_config.as_ref().map(|d| cni::Dns {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
        }
    }

    pub(super) fn attachment<'a>(&'a self, id: &'a str, netns: &'a Path) -> cni::Attachment<'a> {
        cni::Attachment {
            container_id: id,
            netns,
            ifname: "eth0",
            pod_name: &self.meta.name,
            pod_namespace: &self.meta.namespace,
            pod_uid: &self.meta.uid,
            port_mappings: &self.ports,
            dns: self.dns.clone(),
        }
    }
}

fn bind_ro(source: &Path, destination: &Path) -> Result<oci_spec::runtime::Mount> {
    oci_spec::runtime::MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            "ro".to_string(),
            "nosuid".to_string(),
        ])
        .build()
        .map_err(|e| Error::InvalidArgument(format!("mount {}: {e}", destination.display())))
}

fn port_mappings(config: &v1::PodSandboxConfig) -> Vec<cni::PortMapping> {
    config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| cni::PortMapping {
            protocol: match v1::Protocol::try_from(p.protocol) {
                Ok(v1::Protocol::Udp) => "udp",
                Ok(v1::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .into(),
            container_port: p.container_port as u16,
            host_port: p.host_port as u16,
            host_ip: p.host_ip.clone(),
        })
        .collect()
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf of the pod.
fn write_files(sb: &Sandbox) -> Result<()> {
    let host_net = sb.netns.is_none();
    let hostname = if sb.config.hostname.is_empty() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    } else {
        sb.config.hostname.clone()
    };
    // Plain writes: the sandbox is not ready before they are done, and a crash midway
    // tears it down, so no reader ever sees a torn file.
    let write =
        |path: &Path, text: &[u8]| std::fs::write(path, text).map_err(io_err("writing", path));
    write(&sb.files.hostname, format!("{hostname}\n").as_bytes())?;
    let hosts = if host_net {
        std::fs::read("/etc/hosts").unwrap_or_default()
    } else {
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".to_vec()
    };
    write(&sb.files.hosts, &hosts)?;
    let resolv = match &sb.config.dns_config {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            resolv_conf(d)
        }
        _ => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    write(&sb.files.resolv_conf, &resolv)
}

fn resolv_conf(d: &v1::DnsConfig) -> Vec<u8> {
    let mut out = String::new();
    for s in &d.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !d.searches.is_empty() {
        out.push_str(&format!("search {}\n", d.searches.join(" ")));
    }
    if !d.options.is_empty() {
        out.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            String::from_utf8_lossy(&resolv_conf(&d)),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn host_ports_only_become_cni_mappings() {
        let cfg = v1::PodSandboxConfig {
            port_mappings: vec![
                v1::PortMapping {
                    protocol: v1::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                v1::PortMapping {
                    protocol: 0,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        };
        let m = port_mappings(&cfg);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].protocol.as_str(), m[0].host_port), ("udp", 5353));
    }
}
