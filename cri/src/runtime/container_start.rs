//! `StartContainer`: the OCI runtime runs the created container under its monitor.

use std::path::PathBuf;
use std::sync::Arc;

use proto::v1;

use super::{Container, Error, Result, Runtime, monitor, now_ns};

impl Runtime {
    #[tracing::instrument(skip_all, fields(container.id = %id))]
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let c = self.containers.get(id)?;
        let _guard = self.lock(&c.id).await;
        let c = self.containers.get(&c.id)?;
        if c.state() != v1::ContainerState::ContainerCreated {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not created",
                c.id,
                c.state().as_str_name()
            )));
        }
        if c.monitor_pid > 0 {
            return self.start_legacy(&c).await;
        }
        match self.run_under_monitor(&c).await {
            Ok(started) => {
                let c = self.containers.update(&c.id, |c| {
                    c.pid = started.container_pid;
                    c.monitor_pid = started.monitor_pid;
                    c.started_at_ns = Some(now_ns());
                })?;
                self.watch_exit(&c);
                self.emit(&c, v1::ContainerEventType::ContainerStartedEvent);
                tracing::info!(pid = c.pid, "container started");
                Ok(())
            }
            Err(e) => {
                // As containerd does: the container is exited with the reason (the
                // monitor left no runtime container behind).
                let message = e.to_string();
                let c = self.containers.update(&c.id, |c| {
                    c.reason = "StartError".into();
                    c.message = message;
                    c.exit_code = 128;
                    c.finished_at_ns = Some(now_ns());
                })?;
                self.emit(&c, v1::ContainerEventType::ContainerStoppedEvent);
                Err(e)
            }
        }
    }

    /// Runs a created container under a new monitor (`<runtime> run --detach`).
    async fn run_under_monitor(&self, c: &Container) -> Result<monitor::Started> {
        let dir = self.containers.dir_of(&c.id);
        let handler = self.handler(&c.handler)?.clone();
        Ok(monitor::spawn(
            &self.cfg.monitor,
            &monitor::MonitorSpec {
                id: c.id.clone(),
                bundle: dir.clone(),
                runtime: handler.path.clone(),
                runtime_root: handler.root.clone(),
                exit_file: dir.join("exit"),
                log_path: (!c.log_path.is_empty()).then(|| PathBuf::from(&c.log_path)),
                stdin: c.config.stdin,
                stdin_once: c.config.stdin_once,
                tty: c.config.tty,
            },
        )
        .await?)
    }

    /// A container created by an earlier version, whose monitor ran `<runtime>
    /// create` at CreateContainer: `<runtime> start` it.
    async fn start_legacy(&self, c: &Container) -> Result<()> {
        let handler = self.handler(&c.handler)?.clone();
        match handler.start(&c.id).await {
            Ok(()) => {
                let c = self
                    .containers
                    .update(&c.id, |c| c.started_at_ns = Some(now_ns()))?;
                self.emit(&c, v1::ContainerEventType::ContainerStartedEvent);
                tracing::info!("container started");
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                self.containers.update(&c.id, |c| {
                    c.reason = "StartError".into();
                    c.message = message;
                })?;
                // Its monitor records the exit of the killed init.
                let _ = handler.kill(&c.id, libc::SIGKILL, true).await;
                Err(e.into())
            }
        }
    }
}
