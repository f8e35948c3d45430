//! Running the `cri` binary as a user does, and talking to it over its unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use proto::v1::image_service_client::ImageServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Path of a workspace binary built next to the running test executable.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target dir")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not built: run `cargo build --workspace --bins` (cargo test --workspace does it)",
            path.display()
        );
    }
    Ok(path)
}

/// A gRPC channel over a unix socket.
pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// A running `cri` server with its own root, socket and log.
pub struct CriServer {
    child: Option<Child>,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    spawn: Spawn,
}

/// How the server process is started, beyond its flags.
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Capabilities (kernel numbers) dropped from the server's bounding set before it
    /// starts, as in a nested container or a kind node whose set lacks some.
    pub drop_bounding_caps: Vec<u32>,
}

impl CriServer {
    /// Starts `cri` with state under `root` (kept across restarts) and extra flags.
    pub fn start(root: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(root, args, Spawn::default())
    }

    /// [`CriServer::start`] with a process set up as `spawn` says (kept across restarts).
    pub fn start_with(root: &Path, args: &[&str], spawn: Spawn) -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            socket: root.join("cri.sock"),
            root: root.to_path_buf(),
            log: root.join("cri.log"),
            args: args.iter().map(|s| s.to_string()).collect(),
            spawn,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(binary("cri")?);
        let drop = self.spawn.drop_bounding_caps.clone();
        if !drop.is_empty() {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only prctl(2) between fork and exec, no allocation.
            unsafe {
                cmd.pre_exec(move || {
                    for cap in &drop {
                        if libc::prctl(libc::PR_CAPBSET_DROP, *cap as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("--config")
            .arg(self.root.join("cri.toml"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--root")
            .arg(self.root.join("root"))
            .arg("--state")
            .arg(self.root.join("state"))
            .args(&self.args)
            .env("RUST_LOG", "info,cri=debug")
            .envs(self.spawn.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning cri")?;
        if !self.root.join("cri.toml").exists() {
            std::fs::write(self.root.join("cri.toml"), "")?;
        }
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits (bounded) until the server answers on its socket.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "cri exited with {status} before serving; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("cri did not serve within 60s; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes the TOML config used by the next (re)start.
    pub fn write_config(root: &Path, toml: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(root)?;
        std::fs::write(root.join("cri.toml"), toml)?;
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn runtime(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect(&self.socket).await?))
    }

    pub async fn images(&self) -> anyhow::Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(connect(&self.socket).await?))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("kill failed: {}", std::io::Error::last_os_error());
        }
        Ok(child.wait()?)
    }

    /// Starts again on the same root and socket.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.spawn()
    }
}

impl Drop for CriServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
