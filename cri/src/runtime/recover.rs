//! Recovery before serving: containers keep running under their monitors while the
//! server is down; at start every record is checked against its monitor and the exit
//! it left, exits that happened meanwhile are recorded, and live ones are watched again.

use std::sync::Arc;

use super::{Runtime, now_ns};

/// Whether `pid` is still the monitor (or infra process) of object `id`, not a process
/// that reused the pid after a reboot.
fn process_of(pid: i32, id: &str) -> bool {
    pid > 0
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == id.as_bytes()))
            .unwrap_or(false)
}

/// Whether every namespace pin of a pinned sandbox is still there (a reboot drops them).
fn pins_exist(sb: &super::Sandbox) -> bool {
    [
        &sb.namespaces.network,
        &sb.namespaces.ipc,
        &sb.namespaces.uts,
    ]
    .into_iter()
    .all(|ns| match ns {
        super::Ns::Join(pin) => super::netns::exists(pin),
        _ => true,
    })
}

impl Runtime {
    pub(super) async fn recover(self: &Arc<Self>) {
        let mut running = 0;
        for c in self.containers.list() {
            if !c.alive() {
                continue;
            }
            if c.unstarted() {
                self.recover_unstarted(&c).await;
                continue;
            }
            if process_of(c.monitor_pid, &c.id) {
                running += 1;
                self.watch_exit(&c);
            } else if let Err(e) = self.record_exit(&c.id).await {
                tracing::warn!(container.id = %c.id, err = %e, "recording an exit found at recovery");
            }
        }
        let mut ready = 0;
        for sb in self.sandboxes.list() {
            if sb.stopped_at_ns.is_some() {
                continue;
            }
            if sb.pinned {
                if sb.ready_at_ns.is_some() && pins_exist(&sb) {
                    ready += 1;
                    self.check_network(&sb);
                    continue;
                }
                tracing::warn!(sandbox.id = %sb.id, "pod namespaces not (or no longer) pinned; sandbox not ready");
            } else if sb.infra_pid > 0 && process_of(sb.monitor_pid, &sb.id) {
                ready += 1;
                self.watch_infra(&sb);
                self.check_network(&sb);
                continue;
            } else {
                tracing::warn!(sandbox.id = %sb.id, "infra process gone; sandbox not ready");
            }
            let _ = self.sandboxes.update(&sb.id, |s| {
                s.infra_exited_at_ns.get_or_insert_with(now_ns);
            });
        }
        tracing::info!(
            sandboxes = self.sandboxes.list().len(),
            ready,
            containers = self.containers.list().len(),
            running,
            "recovered runtime state"
        );
    }

    /// A created container stays created, unless the server stopped while starting it
    /// (the runtime wrote its pid file): that start is recorded as failed and whatever
    /// it left running is killed, as its monitor is unknown.
    async fn recover_unstarted(&self, c: &super::Container) {
        let pid_file = self.containers.dir_of(&c.id).join("pid");
        if !pid_file.exists() {
            return;
        }
        tracing::warn!(container.id = %c.id, "the server stopped while starting this container; recording the start as failed");
        if let Ok(handler) = self.handler(&c.handler).cloned()
            && let Err(e) = handler.delete(&c.id).await
        {
            tracing::warn!(container.id = %c.id, err = %e, "deleting a half-started container");
        }
        let _ = self.containers.update(&c.id, |c| {
            c.reason = "StartError".into();
            c.message = "the runtime stopped while the container was starting".into();
            c.exit_code = 128;
            c.finished_at_ns = Some(now_ns());
        });
    }

    /// CNI CHECK of a recovered pod's network, in the background (it must not delay
    /// serving): a network changed while the server was down is reported, not repaired
    /// (kubelet recreates the sandbox of a pod whose network is gone).
    fn check_network(self: &Arc<Self>, sb: &super::Sandbox) {
        let Some(ns) = sb.netns.clone() else {
            return;
        };
        let rt = Arc::clone(self);
        let sb = sb.clone();
        tokio::spawn(async move {
            let args = super::sandbox_run::CniArgs::of(&sb);
            if let Err(e) = rt.cni.check(&args.attachment(&sb.id, &ns)).await {
                tracing::warn!(sandbox.id = %sb.id, err = %e, "pod network check failed after recovery");
            }
        });
    }

    /// Marks the sandbox not ready when its infra process dies (kubelet then recreates
    /// the pod's sandbox).
    pub(super) fn watch_infra(self: &Arc<Self>, sb: &super::Sandbox) {
        let rt = Arc::clone(self);
        let id = sb.id.clone();
        let monitor_pid = sb.monitor_pid;
        tokio::spawn(async move {
            if let Err(e) = super::monitor::wait_exit(monitor_pid).await {
                tracing::warn!(sandbox.id = %id, err = %e, "waiting for infra monitor");
            }
            if let Ok(sb) = rt.sandboxes.get(&id)
                && sb.stopped_at_ns.is_none()
                && sb.infra_exited_at_ns.is_none()
            {
                tracing::warn!(sandbox.id = %id, "infra process exited; sandbox not ready");
                let _ = rt
                    .sandboxes
                    .update(&id, |s| s.infra_exited_at_ns = Some(now_ns()));
            }
        });
    }
}
