//! `PodSandboxStatus` and `ListPodSandbox`.

use proto::v1;

use super::{Result, Runtime, Sandbox, labels_match};

impl Runtime {
    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<v1::PodSandboxStatusResponse> {
        let sb = self.sandboxes.get(id)?;
        let mut info = std::collections::HashMap::new();
        if verbose {
            let pin = |ns: &super::Ns| match ns {
                super::Ns::Join(p) => Some(p.clone()),
                _ => None,
            };
            let linux = sb.config.linux.as_ref();
            let oci_resources = super::container_update::oci_resources;
            let detail = serde_json::json!({
                "pid": sb.infra_pid,
                "infraContainer": !sb.pinned,
                "pins": {
                    "net": pin(&sb.namespaces.network),
                    "ipc": if sb.pinned { pin(&sb.namespaces.ipc) } else { None },
                    "uts": if sb.pinned { pin(&sb.namespaces.uts) } else { None },
                },
                "monitorPid": sb.monitor_pid,
                "netns": sb.netns,
                "runtimeHandler": sb.handler,
                "cgroupParent": sb.cgroup_parent,
                "ips": sb.ips,
                // As last set by RunPodSandbox or UpdatePodSandboxResources.
                "resources": linux.and_then(|l| l.resources.as_ref()).map(|r| oci_resources(r, true)),
                "overhead": linux.and_then(|l| l.overhead.as_ref()).map(|r| oci_resources(r, true)),
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(v1::PodSandboxStatusResponse {
            status: Some(self.sandbox_status_of(&sb)),
            info,
            containers_statuses: vec![],
            timestamp: super::now_ns(),
        })
    }

    pub(super) fn sandbox_status_of(&self, sb: &Sandbox) -> v1::PodSandboxStatus {
        let mut ips = sb.ips.iter();
        v1::PodSandboxStatus {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            state: sb.state() as i32,
            created_at: sb.created_at_ns,
            network: Some(v1::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips.map(|ip| v1::PodIp { ip: ip.clone() }).collect(),
            }),
            linux: Some(v1::LinuxPodSandboxStatus {
                namespaces: Some(v1::Namespace {
                    options: Some(sb.namespace_options()),
                }),
            }),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: sb.handler.clone(),
        }
    }

    pub fn list_pod_sandboxes(&self, filter: Option<&v1::PodSandboxFilter>) -> Vec<v1::PodSandbox> {
        self.sandboxes
            .list()
            .into_iter()
            .filter(|sb| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || sb.id.starts_with(&f.id))
                        && f.state
                            .as_ref()
                            .is_none_or(|s| s.state == sb.state() as i32)
                        && labels_match(&sb.config.labels, &f.label_selector)
                }
            })
            .map(|sb| v1::PodSandbox {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                state: sb.state() as i32,
                created_at: sb.created_at_ns,
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
                runtime_handler: sb.handler.clone(),
            })
            .collect()
    }
}
