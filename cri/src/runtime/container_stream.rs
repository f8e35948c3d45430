//! The runtime side of the streaming verbs (`Exec`, `PortForward`; `Attach` is not
//! available): processes and sockets wired to channels that the streaming server
//! (`crate::streaming`) fills from and drains to its clients.
//!
//! Exec runs `runc exec --process FILE` in the foreground, so its exit status is the
//! process's. Without a TTY the process gets pipes. With one, runc needs a terminal of
//! its own when it stays in the foreground (`--console-socket` is only accepted with
//! `--detach`, and a detached exec's exit status would be lost to whoever reaps it): we
//! open a pseudo-terminal, hand runc the slave as its stdio, and runc relays between it
//! and the container's console, which it sizes from ours on start and on SIGWINCH.
//!
//! Port-forward connects to `127.0.0.1:<port>` inside the pod's network namespace from
//! a short-lived std thread that joins it (`setns` changes only the calling thread, and
//! must never run on a tokio worker), then hands the connected socket to tokio.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use super::{Error, Result, Runtime, io_err};

/// How long output may keep flowing after the process exited (a background child can
/// hold the pipes open forever).
const DRAIN: Duration = Duration::from_secs(5);
/// Bound on connecting to a port in a pod.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 32 << 10;

/// A terminal size, as the clients' resize messages carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// The client's side of a streaming session, as channels. A `None` stream was not
/// requested. Dropping `stdout`/`stderr` ends them for the client; `stdin` ends when the
/// client closes it.
#[derive(Debug, Default)]
pub struct StreamIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    pub tty: bool,
}

impl Runtime {
    /// Fails unless `id` is a running container (what `Exec` checks before it hands out
    /// a URL).
    pub fn check_exec(&self, id: &str) -> Result<()> {
        self.running_container(id).map(drop)
    }

    /// Fails unless `id` is a ready sandbox (what `PortForward` checks).
    pub fn check_port_forward(&self, id: &str) -> Result<()> {
        let sb = self.sandboxes.get(id)?;
        if !sb.ready() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {} is not ready",
                sb.id
            )));
        }
        Ok(())
    }

    /// Runs `cmd` in a running container wired to `io`; returns its exit code.
    #[tracing::instrument(skip_all, fields(container.id = %id, tty = io.tty))]
    pub async fn exec_stream(&self, id: &str, cmd: &[String], io: StreamIo) -> Result<i32> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        let c = self.running_container(id)?;
        let process = self.exec_process_file(&c, cmd, io.tty)?;
        let handler = self.handler(&c.handler)?.clone();
        let pid_file = process.path().with_extension("pid");
        let log_file = process.path().with_extension("log");
        let mut command = tokio::process::Command::new(&handler.path);
        command
            .arg("--root")
            .arg(&handler.root)
            .arg("--log")
            .arg(&log_file)
            .arg("--log-format")
            .arg("json")
            .arg("exec")
            .arg("--process")
            .arg(process.path())
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&c.id)
            .kill_on_drop(true);
        tracing::debug!(runtime = %handler.name, "oci runtime exec (streaming)");
        let status = if io.tty {
            run_with_tty(command, io).await
        } else {
            run_with_pipes(command, io).await
        };
        let started = pid_file.exists();
        let message = runtime_error(&log_file);
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(&log_file);
        let status = status.map_err(io_err("running oci runtime exec", &handler.path))?;
        if !started {
            // The runtime failed before the process ran (no such executable, the
            // container stopped meanwhile…): that is an error, not an exit code.
            return Err(Error::FailedPrecondition(format!(
                "exec {cmd:?} in container {}: {}",
                c.id,
                message.unwrap_or_else(|| format!("runtime exited with {status}"))
            )));
        }
        Ok(exit_code(status))
    }

    /// A TCP connection to `127.0.0.1:port` in the sandbox's network namespace (the
    /// host's for host-network pods).
    #[tracing::instrument(skip_all, fields(sandbox.id = %sandbox_id, port))]
    pub async fn port_forward_connect(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream> {
        let sb = self.sandboxes.get(sandbox_id)?;
        if !sb.ready() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {} is not ready",
                sb.id
            )));
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let Some(netns) = sb.netns.clone() else {
            let connect = tokio::net::TcpStream::connect(addr);
            return match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(r) => r.map_err(io_err("connecting to the host's port", addr.to_string())),
                Err(_) => Err(Error::DeadlineExceeded(format!(
                    "connecting to {addr} timed out"
                ))),
            };
        };
        let (tx, rx) = oneshot::channel();
        let path = netns.clone();
        std::thread::Builder::new()
            .name("netns-connect".into())
            .spawn(move || {
                let _ = tx.send(connect_in_netns(&path, addr));
            })
            .map_err(io_err("starting a thread to enter", &netns))?;
        let stream = rx
            .await
            .map_err(|_| Error::FailedPrecondition("netns connect thread died".into()))?
            .map_err(io_err(
                "connecting to 127.0.0.1 in network namespace",
                &netns,
            ))?;
        stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
            .map_err(io_err("registering the pod connection from", &netns))
    }
}

/// Runs on its own thread: joins the network namespace, then connects. The thread
/// ends right after, so nothing else ever runs in the pod's namespace by accident.
fn connect_in_netns(
    netns: &Path,
    addr: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(netns)?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
    std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

/// The last error runc logged (`--log-format json`), if any.
fn runtime_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .filter_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .next_back()
}

/// Copies a reader to a channel until EOF, an error, or the receiver leaves.
async fn pump(mut from: impl AsyncRead + Unpin, to: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits for output tasks to finish, at most `DRAIN` in all, then stops them.
async fn drain(tasks: Vec<tokio::task::JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + DRAIN;
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
        }
    }
}

async fn run_with_pipes(
    mut command: tokio::process::Command,
    io: StreamIo,
) -> std::io::Result<std::process::ExitStatus> {
    let piped = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    command
        .stdin(piped(io.stdin.is_some()))
        .stdout(piped(io.stdout.is_some()))
        .stderr(piped(io.stderr.is_some()));
    let mut child = command.spawn()?;
    let stdin = match (child.stdin.take(), io.stdin) {
        (Some(mut pipe), Some(mut rx)) => Some(tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    return;
                }
            }
            // The client closed stdin: the process sees EOF when `pipe` drops.
        })),
        _ => None,
    };
    let mut outputs = Vec::new();
    if let (Some(r), Some(tx)) = (child.stdout.take(), io.stdout) {
        outputs.push(tokio::spawn(pump(r, tx)));
    }
    if let (Some(r), Some(tx)) = (child.stderr.take(), io.stderr) {
        outputs.push(tokio::spawn(pump(r, tx)));
    }
    let status = child.wait().await;
    if let Some(t) = stdin {
        t.abort();
    }
    drain(outputs).await;
    status
}

async fn run_with_tty(
    mut command: tokio::process::Command,
    io: StreamIo,
) -> std::io::Result<std::process::ExitStatus> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    sys::make_raw(&pty.slave)?;
    command
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    let mut child = command.spawn()?;
    // The command holds the slave's copies: drop them, so the master reads EOF (EIO)
    // once runc and everything it started are gone.
    drop(command);
    let runc_pid = child.id();
    set_nonblocking(&pty.master)?;
    let sizer = pty.master.try_clone()?;
    let mut to_master =
        tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(pty.master.try_clone()?)?;
    // A pty master reads EIO once the last slave is closed: `pump` ends there.
    let from_master = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(pty.master)?;
    let mut outputs = Vec::new();
    if let Some(tx) = io.stdout {
        outputs.push(tokio::spawn(pump(from_master, tx)));
    }
    let input = {
        let (mut stdin, mut resize) = (io.stdin, io.resize);
        tokio::spawn(async move {
            loop {
                // Resizes first: a client that resizes and then types expects the
                // typed command to see the new size.
                tokio::select! {
                    biased;
                    size = recv(&mut resize) => match size {
                        Some(size) => {
                            if let Err(e) = sys::set_size(&sizer, size) {
                                tracing::debug!(err = %e, "resizing the exec terminal");
                            }
                            // runc copies our size to the container's console on SIGWINCH.
                            if let Some(pid) = runc_pid.and_then(|p| i32::try_from(p).ok()) {
                                let _ = nix::sys::signal::kill(
                                    nix::unistd::Pid::from_raw(pid),
                                    nix::sys::signal::Signal::SIGWINCH,
                                );
                            }
                        }
                        None => resize = None,
                    },
                    data = recv(&mut stdin) => match data {
                        Some(data) => {
                            if to_master.write_all(&data).await.is_err() {
                                return;
                            }
                        }
                        None => stdin = None,
                    },
                    else => return,
                }
            }
        })
    };
    let status = child.wait().await;
    input.abort();
    drain(outputs).await;
    status
}

/// Receives from an optional channel; never resolves for `None`, so a `select!` branch
/// on a stream that was not requested (or has ended) stays quiet.
async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The two terminal calls nix has no safe wrapper for that fits.
mod sys {
    use std::os::fd::{AsFd, AsRawFd as _};

    use super::TermSize;

    /// Raw mode on our side of the pty, so nothing is echoed or translated before runc
    /// puts it in raw mode itself.
    pub(super) fn make_raw(fd: impl AsFd) -> std::io::Result<()> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let mut t = tcgetattr(&fd)?;
        cfmakeraw(&mut t);
        tcsetattr(&fd, SetArg::TCSANOW, &t)?;
        Ok(())
    }

    /// `TIOCSWINSZ` on the master: the size the slave's side reads.
    pub(super) fn set_size(fd: impl AsFd, size: TermSize) -> std::io::Result<()> {
        let ws = libc::winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to a
        // live local; the descriptor is borrowed and open for the call.
        let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_error_takes_the_last_error_line() {
        let dir = tempfile::tempdir().expect("test fixture");
        let log = dir.path().join("exec.log");
        std::fs::write(
            &log,
            concat!(
                "{\"level\":\"warning\",\"msg\":\"noise\",\"time\":\"t\"}\n",
                "{\"level\":\"error\",\"msg\":\"first\",\"time\":\"t\"}\n",
                "not json\n",
                "{\"level\":\"error\",\"msg\":\"exec failed: no such file\",\"time\":\"t\"}\n",
            ),
        )
        .expect("test fixture");
        assert_eq!(
            runtime_error(&log).as_deref(),
            Some("exec failed: no such file")
        );
        assert_eq!(runtime_error(&dir.path().join("missing")), None);
    }

    #[tokio::test]
    async fn pty_carries_input_output_and_size() {
        // Our pty plumbing with a plain program standing in for runc: `stty size` reads
        // the size we set through the master.
        let pty = nix::pty::openpty(None, None).expect("test fixture");
        sys::make_raw(&pty.slave).expect("test fixture");
        sys::set_size(
            &pty.master,
            TermSize {
                width: 123,
                height: 45,
            },
        )
        .expect("test fixture");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "read line; echo got:$line; stty size"])
            .stdin(Stdio::from(pty.slave.try_clone().expect("test fixture")))
            .stdout(Stdio::from(pty.slave.try_clone().expect("test fixture")))
            .stderr(Stdio::from(pty.slave));
        let mut child = cmd.spawn().expect("test fixture");
        drop(cmd);
        set_nonblocking(&pty.master).expect("test fixture");
        let mut w = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(
            pty.master.try_clone().expect("test fixture"),
        )
        .expect("test fixture");
        let r = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(pty.master)
            .expect("test fixture");
        w.write_all(b"hello\n").await.expect("test fixture");
        let (tx, mut rx) = mpsc::channel(16);
        let reader = tokio::spawn(pump(r, tx));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        reader.await.expect("test fixture");
        assert!(child.wait().await.expect("test fixture").success());
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("got:hello"), "{text:?}");
        assert!(text.contains("45 123"), "{text:?}");
    }

    #[test]
    fn exit_codes_of_signals() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
