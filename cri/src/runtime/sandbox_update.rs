//! `UpdatePodSandboxResources`: the kubelet tells the runtime a pod's new summed
//! resources and overhead after an in-place resize. The kubelet owns and resizes the pod
//! cgroup itself; the runtime records the new values in the sandbox's config (where
//! RunPodSandbox put the first ones), so they survive a restart and show in the
//! verbose PodSandboxStatus, as containerd records them.

use proto::v1;

use super::{Result, Runtime};

impl Runtime {
    #[tracing::instrument(skip_all, fields(sandbox.id = %id))]
    pub async fn update_pod_sandbox_resources(
        &self,
        id: &str,
        overhead: Option<v1::LinuxContainerResources>,
        resources: Option<v1::LinuxContainerResources>,
    ) -> Result<()> {
        let sb = self.sandboxes.get(id)?;
        let _guard = self.lock(&sb.id).await;
        self.sandboxes.update(&sb.id, |sb| {
            let linux = sb.config.linux.get_or_insert_with(Default::default);
            if overhead.is_some() {
                linux.overhead = overhead;
            }
            if resources.is_some() {
                linux.resources = resources;
            }
        })?;
        tracing::info!("pod sandbox resources updated");
        Ok(())
    }
}
