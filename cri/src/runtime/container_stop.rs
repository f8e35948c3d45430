//! `StopContainer`, `RemoveContainer`, and the watcher that records a container's exit
//! when its monitor leaves.

use std::sync::Arc;
use std::time::Duration;

use proto::v1;
use tokio::sync::watch;

use super::rootfs::Rootfs;
use super::{Container, Result, Runtime, cgroups, monitor, now_ns};

impl Runtime {
    /// Starts the task that waits for the container's monitor to exit (event-driven, by
    /// pidfd) and records the exit. One per live container.
    pub(super) fn watch_exit(self: &Arc<Self>, c: &Container) {
        let (tx, _) = watch::channel(false);
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.id.clone(), tx);
        let rt = Arc::clone(self);
        let id = c.id.clone();
        let monitor_pid = c.monitor_pid;
        tokio::spawn(async move {
            if let Err(e) = monitor::wait_exit(monitor_pid).await {
                tracing::warn!(container.id = %id, err = %e, "waiting for monitor");
            }
            if let Err(e) = rt.record_exit(&id).await {
                tracing::warn!(container.id = %id, err = %e, "recording container exit");
            }
            if let Some(tx) = rt
                .exits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id)
            {
                let _ = tx.send(true);
            }
        });
    }

    /// Reads the exit the monitor left, the OOM counter of the container's cgroup, and
    /// deletes the container from the OCI runtime.
    pub(super) async fn record_exit(&self, id: &str) -> Result<()> {
        let c = self.containers.get(id)?;
        if !c.alive() {
            return Ok(());
        }
        let dir = self.containers.dir_of(&c.id);
        let exit = monitor::read_exit(&dir.join("exit"))?;
        let oom = cgroups::oom_killed(&c.cgroups_path);
        let handler = self.handler(&c.handler)?.clone();
        if let Err(e) = handler.delete(&c.id).await {
            tracing::warn!(container.id = %c.id, err = %e, "deleting exited container");
        }
        let c = self.containers.update(&c.id, |c| {
            match &exit {
                Some(x) => {
                    c.exit_code = x.exit_code;
                    c.finished_at_ns = Some(x.finished_at_ns);
                }
                None => {
                    c.exit_code = 255;
                    c.finished_at_ns = Some(now_ns());
                    c.message = "the container's monitor exited without recording an exit".into();
                }
            }
            if c.reason.is_empty() {
                c.reason = if oom {
                    "OOMKilled"
                } else if exit.is_none() {
                    "Unknown"
                } else if c.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .into();
            }
        })?;
        tracing::info!(container.id = %c.id, exit_code = c.exit_code, reason = %c.reason, "container exited");
        self.emit(&c, v1::ContainerEventType::ContainerStoppedEvent);
        Ok(())
    }

    /// Waits until the exit of `id` is recorded, or `limit` passes. True if exited.
    async fn wait_recorded(&self, id: &str, limit: Duration) -> bool {
        let rx = self
            .exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|tx| tx.subscribe());
        let Some(mut rx) = rx else {
            return true;
        };
        tokio::time::timeout(limit, rx.wait_for(|done| *done))
            .await
            .is_ok()
    }

    /// Sends the stop signal, waits `timeout` seconds, then SIGKILL. A container that
    /// is missing or already exited is not an error; one never started has nothing to
    /// stop and stays created (as with containerd).
    #[tracing::instrument(skip_all, fields(container.id = %id))]
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Ok(c) = self.containers.get(id) else {
            return Ok(());
        };
        let _guard = self.lock(&c.id).await;
        let c = self.containers.get(&c.id)?;
        if !c.alive() || c.unstarted() {
            return Ok(());
        }
        let handler = self.handler(&c.handler)?.clone();
        if timeout > 0 && c.running() {
            tracing::debug!(signal = c.stop_signal, timeout, "stopping container");
            handler.kill(&c.id, c.stop_signal, false).await?;
            if self
                .wait_recorded(&c.id, Duration::from_secs(timeout as u64))
                .await
            {
                return Ok(());
            }
            tracing::info!(timeout, "container ignored its stop signal; killing it");
        }
        handler.kill(&c.id, libc::SIGKILL, true).await?;
        if !self.wait_recorded(&c.id, Duration::from_secs(30)).await {
            tracing::warn!("container did not exit 30 s after SIGKILL");
        }
        Ok(())
    }

    /// Removes a container, killing it first if it runs. Missing is not an error.
    #[tracing::instrument(skip_all, fields(container.id = %id))]
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Ok(c) = self.containers.get(id) else {
            return Ok(());
        };
        if c.alive() {
            self.stop_container(&c.id, 0).await?;
        }
        let _guard = self.lock(&c.id).await;
        let Ok(c) = self.containers.get(&c.id) else {
            return Ok(());
        };
        if !c.unstarted() {
            let handler = self.handler(&c.handler)?.clone();
            handler.delete(&c.id).await?;
        }
        let dir = self.containers.dir_of(&c.id);
        super::image_volume::unmount_image_volumes(&dir)?;
        Rootfs::new(&dir).unmount()?;
        self.containers.remove(&c.id)?;
        self.cpu_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.cgroups_path);
        self.emit(&c, v1::ContainerEventType::ContainerDeletedEvent);
        drop(_guard);
        self.forget_lock(&c.id);
        tracing::info!("container removed");
        Ok(())
    }
}
