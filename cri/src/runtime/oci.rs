//! The OCI runtime binary (runc, crun) behind named handlers (RuntimeClass).
//!
//! Creation goes through the monitor (`cri-monitor` runs `create` so it can own the
//! container's stdio); everything else the server runs itself: `start`, `kill`,
//! `delete`, `state`, `exec`, `update`, `events --stats`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{runtime} {command} {id}: {message}")]
    Failed {
        runtime: String,
        command: &'static str,
        id: String,
        message: String,
    },
    #[error("running {runtime} {command} {id}: {source}")]
    Spawn {
        runtime: String,
        command: &'static str,
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{runtime} {command} {id} did not finish within {timeout:?}")]
    Timeout {
        runtime: String,
        command: &'static str,
        id: String,
        timeout: Duration,
    },
    #[error("{runtime} {command} {id}: unreadable output: {reason}")]
    Output {
        runtime: String,
        command: &'static str,
        id: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One configured runtime handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// The RuntimeClass handler name (`runc`, `crun`, …).
    pub name: String,
    /// The runtime binary.
    pub path: PathBuf,
    /// Its state directory (`--root`).
    pub root: PathBuf,
}

/// What `state` reports.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct State {
    pub id: String,
    /// `created`, `running`, `paused`, `stopped`.
    pub status: String,
    #[serde(default)]
    pub pid: i32,
}

/// Output of a finished command: exit code, stdout, stderr.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// Runtime calls are short; a hung runtime must not hang an RPC forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Handler {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Runs one runtime command to completion and fails on a non-zero exit.
    async fn run(&self, command: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>> {
        tracing::debug!(runtime = %self.name, command, container.id = id, "oci runtime call");
        let mut cmd = self.command();
        cmd.args(args);
        self.finish(cmd, command, id, CALL_TIMEOUT).await
    }

    /// Waits (at most `timeout`) for a prepared runtime command; its stdout, or the
    /// error with its stderr on a non-zero exit.
    async fn finish(
        &self,
        mut cmd: Command,
        command: &'static str,
        id: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| Error::Timeout {
                runtime: self.name(),
                command,
                id: id.into(),
                timeout,
            })?
            .map_err(|source| Error::Spawn {
                runtime: self.name(),
                command,
                id: id.into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Failed {
                runtime: self.name(),
                command,
                id: id.into(),
                message: runtime_message(&out.stderr),
            });
        }
        Ok(out.stdout)
    }

    /// `start`: runs the user process of a created container.
    pub async fn start(&self, id: &str) -> Result<()> {
        self.run("start", id, &["start", id]).await.map(drop)
    }

    /// `kill`: sends `signal` (to every process of the container with `all`). A container
    /// that is already gone is not an error.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        match self.run("kill", id, &args).await {
            Err(Error::Failed { message, .. }) if is_gone(&message) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `delete --force`: removes the container and its cgroup. Missing is not an error.
    pub async fn delete(&self, id: &str) -> Result<()> {
        match self.run("delete", id, &["delete", "--force", id]).await {
            Err(Error::Failed { message, .. }) if is_gone(&message) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `state`, or `None` when the runtime does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<State>> {
        match self.run("state", id, &["state", id]).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| Error::Output {
                    runtime: self.name(),
                    command: "state",
                    id: id.into(),
                    reason: e.to_string(),
                }),
            Err(Error::Failed { message, .. }) if is_gone(&message) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `checkpoint --leave-running`: CRIU dumps the running container's processes into
    /// `image_path` (`work_path` gets its logs). runc is told which CRIU binary to use.
    pub async fn checkpoint(
        &self,
        id: &str,
        criu: &Path,
        image_path: &Path,
        work_path: &Path,
        timeout: Duration,
    ) -> Result<()> {
        tracing::debug!(runtime = %self.name, container.id = id, "oci runtime checkpoint");
        let mut cmd = self.command();
        if self.path.file_name().is_some_and(|n| n == "runc") {
            cmd.arg("--criu").arg(criu);
        }
        cmd.arg("checkpoint")
            .arg("--image-path")
            .arg(image_path)
            .arg("--work-path")
            .arg(work_path)
            .arg("--leave-running")
            .arg(id);
        self.finish(cmd, "checkpoint", id, timeout).await.map(drop)
    }

    /// `update --resources FILE` with an OCI `LinuxResources` JSON document.
    pub async fn update(&self, id: &str, resources_json: &Path) -> Result<()> {
        let path = resources_json.to_string_lossy();
        self.run("update", id, &["update", "--resources", &path, id])
            .await
            .map(drop)
    }

    /// `exec --process FILE`: runs a process in the container and collects its output,
    /// killing it when `timeout` passes (`None`: no limit).
    pub async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        timeout: Option<Duration>,
    ) -> Result<Output> {
        tracing::debug!(runtime = %self.name, container.id = id, "oci runtime exec");
        let pid_file = process_json.with_extension("pid");
        let mut cmd = self.command();
        cmd.arg("exec")
            .arg("--process")
            .arg(process_json)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            runtime: self.name(),
            command: "exec",
            id: id.into(),
            source,
        })?;
        let pid = child.id();
        let wait = child.wait_with_output();
        let out = match timeout {
            None => wait.await,
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(out) => out,
                Err(_) => {
                    // SIGKILL cannot be forwarded by the runtime: kill the exec'd process
                    // itself (its pid file), then the runtime (dropping the future already
                    // did, by kill_on_drop).
                    let exec_pid = std::fs::read_to_string(&pid_file)
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok());
                    for p in exec_pid.into_iter().chain(pid.map(|p| p as i32)) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let _ = std::fs::remove_file(&pid_file);
                    return Ok(Output {
                        exit_code: -1,
                        timed_out: true,
                        ..Output::default()
                    });
                }
            },
        }
        .map_err(|source| Error::Spawn {
            runtime: self.name(),
            command: "exec",
            id: id.into(),
            source,
        })?;
        let _ = std::fs::remove_file(&pid_file);
        let exit_code = match (out.status.code(), out.status.status_signal()) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        };
        Ok(Output {
            exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
            timed_out: false,
        })
    }
}

trait StatusSignal {
    fn status_signal(&self) -> Option<i32>;
}

impl StatusSignal for std::process::ExitStatus {
    fn status_signal(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(self)
    }
}

/// runc and crun say a container does not exist (or is already stopped) in these words.
fn is_gone(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist")
        || m.contains("not found")
        || m.contains("no such file")
        || m.contains("container not running")
        || m.contains("process already finished")
}

/// The useful part of a runtime's stderr: runc prints `time=… level=error msg="…"`
/// lines; keep the messages, or the whole text when it is not in that shape.
fn runtime_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let msgs: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.split_once("msg=")
                .map(|(_, m)| m.trim().trim_matches('"'))
        })
        .collect();
    if msgs.is_empty() {
        text.trim().to_string()
    } else {
        msgs.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "time=\"2024\" level=error msg=\"container does not exist\"\n",
                "container does not exist",
            ),
            ("plain failure\n", "plain failure"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(runtime_message(input.as_bytes()), *want, "{input:?}");
        }
    }

    #[test]
    fn gone_messages() {
        assert!(is_gone("container \"x\" does not exist"));
        assert!(is_gone("container not running"));
        assert!(!is_gone("permission denied"));
    }
}
