//! `ContainerStatus` and `ListContainers`.

use proto::v1;

use super::{Container, Result, Runtime, labels_match};

impl Runtime {
    pub fn container_status(&self, id: &str, verbose: bool) -> Result<v1::ContainerStatusResponse> {
        let c = self.containers.get(id)?;
        let mut info = std::collections::HashMap::new();
        if verbose {
            let detail = serde_json::json!({
                "sandboxID": c.sandbox_id,
                "pid": c.pid,
                "monitorPid": c.monitor_pid,
                "runtimeHandler": c.handler,
                "cgroupsPath": c.cgroups_path,
                "bundle": self.containers.dir_of(&c.id),
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(v1::ContainerStatusResponse {
            status: Some(self.container_status_of(&c)),
            info,
        })
    }

    pub(super) fn container_status_of(&self, c: &Container) -> v1::ContainerStatus {
        let meta = c.metadata();
        // kubelet shows `image` in the pod status: a name, as containerd reports it
        // (the first repo tag) when the container was created from the image id.
        let mut image = c.config.image.clone().unwrap_or_default();
        let hex = c.image_id.trim_start_matches("sha256:");
        let by_id = image.image == c.image_id
            || (!image.image.is_empty()
                && hex.starts_with(image.image.trim_start_matches("sha256:")));
        if by_id
            && let Some(tag) = self
                .images
                .resolve(&c.image_id)
                .and_then(|i| i.repo_tags.first().cloned())
        {
            image.image = tag;
        }
        v1::ContainerStatus {
            id: c.id.clone(),
            metadata: Some(meta),
            state: c.state() as i32,
            created_at: c.created_at_ns,
            started_at: c.started_at_ns.unwrap_or_default(),
            finished_at: c.finished_at_ns.unwrap_or_default(),
            exit_code: c.exit_code,
            image: Some(image),
            image_ref: c.image_ref.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: super::image_volume::status_mounts(&c.config.mounts, &c.image_volumes),
            log_path: c.log_path.clone(),
            resources: Some(v1::ContainerResources {
                linux: Some(c.resources.clone()),
                windows: None,
            }),
            image_id: c.image_id.clone(),
            user: Some(v1::ContainerUser {
                linux: Some(v1::LinuxContainerUser {
                    uid: c.uid,
                    gid: c.gid,
                    supplemental_groups: c.groups.clone(),
                }),
            }),
            stop_signal: c.config.stop_signal,
        }
    }

    pub fn list_containers(&self, filter: Option<&v1::ContainerFilter>) -> Vec<v1::Container> {
        self.containers
            .list()
            .into_iter()
            .filter(|c| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                        && f.state.as_ref().is_none_or(|s| s.state == c.state() as i32)
                        && labels_match(&c.config.labels, &f.label_selector)
                }
            })
            .map(|c| self.container_of(&c))
            .collect()
    }

    fn container_of(&self, c: &Container) -> v1::Container {
        v1::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.sandbox_id.clone(),
            metadata: c.config.metadata.clone(),
            image: c.config.image.clone(),
            image_ref: c.image_ref.clone(),
            state: c.state() as i32,
            created_at: c.created_at_ns,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            image_id: c.image_id.clone(),
        }
    }

    /// Whether any container still uses the image (RemoveImage refuses then).
    pub fn image_in_use(&self, image_id: &str) -> Option<String> {
        self.containers
            .list()
            .into_iter()
            .find(|c| {
                c.image_id == image_id || c.image_volumes.iter().any(|v| v.image_id == image_id)
            })
            .map(|c| c.id)
    }
}
