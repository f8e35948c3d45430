//! `StartContainer`: runs the user process of a created container.

use proto::v1;

use super::{Error, Result, Runtime, now_ns};

impl Runtime {
    #[tracing::instrument(skip_all, fields(container.id = %id))]
    pub async fn start_container(&self, id: &str) -> Result<()> {
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
                // As containerd does: the container is exited with the reason, and the
                // process waiting in `create` is killed so its monitor records the exit.
                let message = e.to_string();
                self.containers.update(&c.id, |c| {
                    c.reason = "StartError".into();
                    c.message = message;
                })?;
                let _ = handler.kill(&c.id, libc::SIGKILL, true).await;
                Err(e.into())
            }
        }
    }
}
