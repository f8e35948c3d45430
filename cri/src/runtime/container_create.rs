//! `CreateContainer`: root filesystem, OCI bundle and record. The OCI runtime first
//! hears of the container at `StartContainer` (as with containerd, whose task is
//! created there): one `run` then does what `create` + `start` do in two processes.

use std::path::{Path, PathBuf};

use proto::v1;

use super::rootfs::Rootfs;
use super::{Container, Error, Namespaces, Ns, Result, Runtime, io_err, now_ns, spec};

impl Runtime {
    #[tracing::instrument(skip_all, fields(sandbox.id = %sandbox_id, container.id))]
    pub async fn create_container(
        self: &std::sync::Arc<Self>,
        sandbox_id: &str,
        config: v1::ContainerConfig,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container config has no metadata".into()))?;
        if meta.name.is_empty() {
            return Err(Error::InvalidArgument(
                "container metadata has no name".into(),
            ));
        }
        let sb = self.sandboxes.get(sandbox_id)?;
        if !sb.ready() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {} is not ready",
                sb.id
            )));
        }
        let wanted = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if wanted.is_empty() {
            return Err(Error::InvalidArgument(
                "container config has no image".into(),
            ));
        }
        let image = self
            .images
            .resolve(&wanted)
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                id: wanted.clone(),
            })?;
        let image_config = self.image_config(&image)?;
        let id = super::new_id();
        tracing::Span::current().record("container.id", id.as_str());
        let stop_signal = stop_signal(&config, &image_config)?;
        let log_path = match (&sb.config.log_directory, &config.log_path) {
            (d, p) if !d.is_empty() && !p.is_empty() => Path::new(d).join(p),
            _ => PathBuf::new(),
        };
        let resources = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        let record = Container {
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            sandbox_name: super::store::Record::name(&sb),
            config: config.clone(),
            handler: sb.handler.clone(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            created_at_ns: now_ns(),
            started_at_ns: None,
            finished_at_ns: None,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            monitor_pid: 0,
            log_path: log_path.to_string_lossy().into_owned(),
            cgroups_path: format!("{}/{}", sb.cgroup_parent.trim_end_matches('/'), id),
            resources,
            uid: 0,
            gid: 0,
            groups: vec![],
            stop_signal,
            image_volumes: vec![],
        };
        self.containers.reserve(&record)?;
        let _guard = self.lock(&id).await;
        match self
            .setup_container(&sb, record.clone(), &image, &image_config)
            .await
        {
            Ok(c) => {
                self.emit(&c, v1::ContainerEventType::ContainerCreatedEvent);
                tracing::info!(name = %meta.name, image = %wanted, "container created");
                Ok(id)
            }
            Err(e) => {
                let dir = self.containers.dir_of(&id);
                let _ = super::image_volume::unmount_image_volumes(&dir);
                let _ = Rootfs::new(&dir).unmount();
                let _ = self.containers.remove(&id);
                self.containers.release(&record);
                Err(e)
            }
        }
    }

    async fn setup_container(
        &self,
        sb: &super::Sandbox,
        mut record: Container,
        image: &crate::image::Image,
        image_config: &oci_spec::image::ImageConfiguration,
    ) -> Result<Container> {
        let dir = self.containers.dir_of(&record.id);
        std::fs::create_dir_all(&dir).map_err(io_err("creating container directory", &dir))?;
        let rootfs = Rootfs::new(&dir);
        rootfs.mount(&self.layer_paths(image)?)?;
        if !record.log_path.is_empty() {
            let path = Path::new(&record.log_path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_err("creating log directory", parent))?;
            }
        }
        let namespaces = self.container_namespaces(sb, &record.config)?;
        let (config, image_volumes) = self.prepare_image_volumes(&dir, &record.config)?;
        record.image_volumes = image_volumes;
        let spec = spec::container_spec(&spec::ContainerInput {
            id: &record.id,
            sandbox_id: &sb.id,
            config: &config,
            sandbox: &sb.config,
            image: image_config,
            rootfs: &rootfs.target,
            namespaces: &namespaces,
            files: &sb.files,
            cgroups_path: &record.cgroups_path,
            host: &self.host,
        })?;
        if let Some(user) = spec.process().as_ref().map(|p| p.user()) {
            record.uid = i64::from(user.uid());
            record.gid = i64::from(user.gid());
            record.groups = user
                .additional_gids()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(i64::from)
                .collect();
        }
        spec::write_bundle(&dir, &spec)?;
        Ok(self.containers.add(record)?)
    }

    /// The namespaces a container joins: the pod's network, IPC and UTS namespaces
    /// (pinned, or held by the infra process), and a PID namespace per its
    /// NamespaceOption.
    fn container_namespaces(
        &self,
        sb: &super::Sandbox,
        config: &v1::ContainerConfig,
    ) -> Result<Namespaces> {
        let infra =
            |kind: &str| Ns::Join(PathBuf::from(format!("/proc/{}/ns/{kind}", sb.infra_pid)));
        let join_or_host = |ns: &Ns, kind: &str| match ns {
            Ns::Host => Ns::Host,
            Ns::Join(pin) => Ns::Join(pin.clone()),
            Ns::New => infra(kind),
        };
        let opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let pid = match v1::NamespaceMode::try_from(opts.pid) {
            _ if sb.namespaces.pid == Ns::Host => Ns::Host,
            Ok(v1::NamespaceMode::Node) => Ns::Host,
            // The pod's config shares no PID namespace (kubelet sends the same mode
            // for both; a bare container config defaults to Pod): the container gets
            // its own, as CRI-O does when it drops the infra container.
            Ok(v1::NamespaceMode::Pod) if sb.pinned => Ns::New,
            Ok(v1::NamespaceMode::Pod) => infra("pid"),
            Ok(v1::NamespaceMode::Target) => {
                let target = self.containers.get(&opts.target_id)?;
                if !target.alive() || target.pid <= 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "target container {} of the PID namespace is not running",
                        target.id
                    )));
                }
                Ns::Join(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)))
            }
            Ok(v1::NamespaceMode::Container) | Err(_) => Ns::New,
        };
        Ok(Namespaces {
            network: sb.namespaces.network.clone(),
            ipc: join_or_host(&sb.namespaces.ipc, "ipc"),
            uts: join_or_host(&sb.namespaces.uts, "uts"),
            pid,
        })
    }
}

/// The signal that asks this container to stop: the CRI config's, else the image's
/// `StopSignal`, else SIGTERM.
fn stop_signal(
    config: &v1::ContainerConfig,
    image: &oci_spec::image::ImageConfiguration,
) -> Result<i32> {
    if let Ok(sig) = v1::Signal::try_from(config.stop_signal)
        && sig != v1::Signal::RuntimeDefault
    {
        return parse_signal(sig.as_str_name());
    }
    match image
        .config()
        .as_ref()
        .and_then(|c| c.stop_signal().clone())
    {
        Some(s) if !s.is_empty() => parse_signal(&s),
        _ => Ok(libc::SIGTERM),
    }
}

/// `SIGTERM`, `TERM` or `15` → 15.
pub fn parse_signal(name: &str) -> Result<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return Ok(n);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| Error::InvalidArgument(format!("unknown stop signal {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        for (name, want) in [("SIGTERM", 15), ("TERM", 15), ("9", 9), ("sigquit", 3)] {
            assert_eq!(parse_signal(name).ok(), Some(want), "{name}");
        }
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
