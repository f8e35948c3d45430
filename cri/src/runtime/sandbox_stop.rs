//! `StopPodSandbox` and `RemovePodSandbox`. Both are idempotent: a missing sandbox, a
//! network namespace already gone or an infra process already dead is not an error.

use std::time::Duration;

use super::rootfs::{self, Rootfs};
use super::sandbox_run::CniArgs;
use super::{Ns, Result, Runtime, monitor, netns, now_ns};

/// How long the infra process gets to leave after SIGKILL before we stop waiting.
const INFRA_EXIT_WAIT: Duration = Duration::from_secs(10);

impl Runtime {
    #[tracing::instrument(skip_all, fields(sandbox.id = %id))]
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let Ok(sb) = self.sandboxes.get(id) else {
            return Ok(());
        };
        // Containers first (each takes its own lock), then the sandbox itself.
        for c in self.containers.list() {
            if c.sandbox_id == sb.id && c.alive() {
                self.stop_container(&c.id, 0).await?;
            }
        }
        let _guard = self.lock(&sb.id).await;
        self.teardown_sandbox(&sb.id).await?;
        if self.sandboxes.get(&sb.id)?.stopped_at_ns.is_none() {
            self.sandboxes
                .update(&sb.id, |s| s.stopped_at_ns = Some(now_ns()))?;
            tracing::info!("sandbox stopped");
        }
        Ok(())
    }

    /// Kills the infra container (or unpins the namespaces), releases the pod network
    /// and /dev/shm. Every step
    /// tolerates work already done, so it serves StopPodSandbox, RemovePodSandbox and
    /// cleanup after a failed RunPodSandbox alike.
    pub(super) async fn teardown_sandbox(&self, id: &str) -> Result<()> {
        let sb = self.sandboxes.get(id)?;
        if !sb.pinned {
            let handler = self.handler(&sb.handler)?.clone();
            handler.kill(&sb.id, libc::SIGKILL, true).await?;
            if sb.monitor_pid > 0 {
                let _ =
                    tokio::time::timeout(INFRA_EXIT_WAIT, monitor::wait_exit(sb.monitor_pid)).await;
            }
            handler.delete(&sb.id).await?;
        }
        if let Some(ns) = &sb.netns {
            let args = CniArgs::of(&sb);
            self.cni.teardown(&args.attachment(&sb.id, ns)).await?;
            netns::remove(ns)?;
        }
        if sb.pinned {
            for ns in [&sb.namespaces.ipc, &sb.namespaces.uts] {
                if let Ns::Join(pin) = ns {
                    netns::remove(pin)?;
                }
            }
        }
        if let Some(shm) = &sb.files.shm {
            rootfs::unmount(shm)?;
        }
        Rootfs::new(&self.sandboxes.dir_of(&sb.id)).unmount()?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(sandbox.id = %id))]
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let Ok(sb) = self.sandboxes.get(id) else {
            return Ok(());
        };
        for c in self.containers.list() {
            if c.sandbox_id == sb.id {
                self.remove_container(&c.id).await?;
            }
        }
        let _guard = self.lock(&sb.id).await;
        self.teardown_sandbox(&sb.id).await?;
        if sb.cgroup_parent == super::default_cgroup_parent(&sb.id)
            && let Err(e) = super::cgroups::remove(&sb.cgroup_parent)
        {
            tracing::warn!(cgroup = %sb.cgroup_parent, err = %e, "removing pod cgroup");
        }
        self.sandboxes.remove(&sb.id)?;
        drop(_guard);
        self.forget_lock(&sb.id);
        tracing::info!("sandbox removed");
        Ok(())
    }
}
