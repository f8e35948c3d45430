//! `ExecSync` and `ReopenContainerLog`.

use std::time::Duration;

use super::{Container, Error, Result, Runtime, io_err, monitor};

/// kubelet reads at most this much exec output; more is cut, as containerd does.
const MAX_OUTPUT: usize = 16 << 20;

/// What an `ExecSync` returns.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl Runtime {
    /// Runs `cmd` in a running container with the container's environment, user and
    /// working directory; `timeout` seconds (0: none) then the process is killed.
    #[tracing::instrument(skip_all, fields(container.id = %id))]
    pub async fn exec_sync(&self, id: &str, cmd: &[String], timeout: i64) -> Result<ExecResult> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        let c = self.running_container(id)?;
        let file = self.exec_process_file(&c, cmd, false)?;
        let handler = self.handler(&c.handler)?.clone();
        let limit = (timeout > 0).then(|| Duration::from_secs(timeout as u64));
        let mut out = handler.exec(&c.id, file.path(), limit).await?;
        if out.timed_out {
            return Err(Error::DeadlineExceeded(format!(
                "command {cmd:?} in container {} timed out after {timeout} s",
                c.id
            )));
        }
        out.stdout.truncate(MAX_OUTPUT);
        out.stderr.truncate(MAX_OUTPUT);
        Ok(ExecResult {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        })
    }

    /// The container `id`, which must be running to exec in it.
    pub(super) fn running_container(&self, id: &str) -> Result<Container> {
        let c = self.containers.get(id)?;
        if !c.running() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        Ok(c)
    }

    /// Writes the `--process` file of an exec: the bundle's `process` with `cmd` as its
    /// arguments (so the container's environment, user and working directory apply),
    /// in the container's directory. It is removed when the returned file drops.
    pub(super) fn exec_process_file(
        &self,
        c: &Container,
        cmd: &[String],
        terminal: bool,
    ) -> Result<tempfile::NamedTempFile> {
        let dir = self.containers.dir_of(&c.id);
        let spec_path = dir.join("config.json");
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&spec_path).map_err(io_err("reading spec", &spec_path))?,
        )
        .map_err(|e| {
            Error::FailedPrecondition(format!("bundle spec {}: {e}", spec_path.display()))
        })?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(terminal);
        let file = tempfile::Builder::new()
            .prefix("exec-")
            .suffix(".json")
            .tempfile_in(&dir)
            .map_err(io_err("creating exec process file", &dir))?;
        std::fs::write(file.path(), process.to_string())
            .map_err(io_err("writing exec process", file.path()))?;
        Ok(file)
    }

    /// Asks the monitor to reopen the log file (kubelet rotated it).
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let c = self.containers.get(id)?;
        if !c.running() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        monitor::reopen_log(c.monitor_pid)?;
        Ok(())
    }
}
