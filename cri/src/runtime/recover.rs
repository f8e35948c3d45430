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

/// How long recovery waits for a start that was in flight to finish.
const ADOPT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The live `cri-monitor` of container `id`, found by its command line (`--id ID`).
fn find_monitor(id: &str) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_monitor = args.first().is_some_and(|a| a.ends_with(b"cri-monitor"));
        let names_id = args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
        (is_monitor && names_id).then_some(pid)
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

    /// A created container stays created, unless the server stopped while starting it.
    /// Then its monitor may live on and finish the start: it is found by its command
    /// line and, once the runtime wrote the container's pid (a bounded wait: the start
    /// was under way), adopted as a running container. A start whose monitor is gone
    /// either ran and exited (its exit is recorded) or left a half-started container
    /// behind, which is deleted and recorded as a failed start.
    async fn recover_unstarted(self: &Arc<Self>, c: &super::Container) {
        let dir = self.containers.dir_of(&c.id);
        let pid_file = dir.join("pid");
        let exit_file = dir.join("exit");
        let monitor = find_monitor(&c.id);
        if let Some(monitor_pid) = monitor {
            // Rare and short (a start in flight when the server died): no event tells
            // when the runtime writes its pid file, so look every few milliseconds.
            let deadline = std::time::Instant::now() + ADOPT_WAIT;
            while !pid_file.exists()
                && process_of(monitor_pid, &c.id)
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pid) = pid
                && process_of(monitor_pid, &c.id)
            {
                tracing::warn!(container.id = %c.id, pid, monitor_pid, "the server stopped while starting this container; its monitor finished the start: adopted");
                if let Ok(c) = self.containers.update(&c.id, |c| {
                    c.pid = pid;
                    c.monitor_pid = monitor_pid;
                    c.started_at_ns = Some(now_ns());
                }) {
                    self.watch_exit(&c);
                }
                return;
            }
        }
        if exit_file.exists() {
            tracing::warn!(container.id = %c.id, "the server stopped while starting this container, which ran and exited meanwhile");
            let started = self
                .containers
                .update(&c.id, |c| c.started_at_ns = Some(now_ns()));
            if let Err(e) = started.map_err(super::Error::from) {
                tracing::warn!(container.id = %c.id, err = %e, "recording a start found at recovery");
            } else if let Err(e) = self.record_exit(&c.id).await {
                tracing::warn!(container.id = %c.id, err = %e, "recording an exit found at recovery");
            }
            return;
        }
        if !pid_file.exists() && monitor.is_none() {
            return;
        }
        tracing::warn!(container.id = %c.id, "the server stopped while starting this container; recording the start as failed");
        if let Some(m) = monitor {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(m),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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
