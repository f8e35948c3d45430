//! The runtime side of the streaming verbs (`Exec`, `Attach`, `PortForward`):
//! processes and sockets wired to channels that the streaming server
//! (`crate::streaming`) fills from and drains to its clients.
//!
//! Exec runs `runc exec --process FILE` in the foreground, so its exit status is the
//! process's. Without a TTY the process gets pipes. With one, runc needs a terminal of
//! its own when it stays in the foreground (`--console-socket` is only accepted with
//! `--detach`, and a detached exec's exit status would be lost to whoever reaps it): we
//! open a pseudo-terminal, hand runc the slave as its stdio, and runc relays between it
//! and the container's console, which it sizes from ours on start and on SIGWINCH.
//!
//! Attach connects to the container's `cri-monitor` on its attach socket
//! ([`monitor::attach`]): output frames go to the client's stdout/stderr, the client's
//! stdin and resizes go to the monitor, and the end of the client's stdin becomes the
//! monitor's close-stdin (which closes the container's stdin if it is `stdin_once`).
//! It ends when the monitor closes the socket (the container exited), when the client
//! stops taking output, or, as containerd does, when the client's stdin ends and the
//! container is not `stdin_once` (a detach). The streaming server drops it when the
//! client's connection ends; the container runs on either way.
//!
//! Port-forward connects to `127.0.0.1:<port>` inside the pod's network namespace from
//! a short-lived std thread that joins it (`setns` changes only the calling thread, and
//! must never run on a tokio worker), then hands the connected socket to tokio.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use proto::v1;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use super::logfmt::Stream;
use super::monitor::{self, AttachReader, AttachWriter};
use super::{Container, Error, Result, Runtime, io_err};

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

    /// The container `id` if an attach with these options may start: it is running,
    /// was created with stdin if `stdin` is asked for, and has a TTY exactly when `tty`
    /// is asked for (whether its process has a terminal cannot change once it runs).
    pub fn attachable(&self, id: &str, stdin: bool, tty: bool) -> Result<Container> {
        let c = self.containers.get(id)?;
        if !c.running() {
            return Err(not_running(&c.id, c.state()));
        }
        if stdin && !c.config.stdin {
            return Err(Error::InvalidArgument(format!(
                "cannot attach stdin to container {}: it was created without stdin",
                c.id
            )));
        }
        if tty != c.config.tty {
            return Err(Error::InvalidArgument(format!(
                "attach with tty={tty} to container {}, which was created with tty={}",
                c.id, c.config.tty
            )));
        }
        Ok(c)
    }

    /// Wires `io` to the stdio of the running container `id` through its monitor until
    /// the container exits, the client stops taking output, or the client detaches
    /// (see the module docs).
    #[tracing::instrument(skip_all, fields(container.id = %id, tty = io.tty))]
    pub async fn attach_stream(&self, id: &str, io: StreamIo) -> Result<()> {
        let c = self.attachable(id, io.stdin.is_some(), io.tty)?;
        let bundle = self.containers.dir_of(&c.id);
        let attached = match monitor::attach(&bundle).await {
            Ok(a) => a,
            // No monitor listens: the container exited since its record was read.
            Err(monitor::Error::Attach { ref source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(not_running(&c.id, v1::ContainerState::ContainerExited));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::debug!("attached to the monitor");
        let (reader, writer) = attached.split();
        let StreamIo {
            stdin,
            stdout,
            stderr,
            resize,
            ..
        } = io;
        tokio::select! {
            done = copy_output(reader, stdout, stderr) => done,
            () = feed_input(writer, stdin, resize, c.config.stdin_once) => {
                tracing::debug!("the client's stdin ended: detached");
                Ok(())
            }
        }
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

fn not_running(id: &str, state: v1::ContainerState) -> Error {
    let state = match state {
        v1::ContainerState::ContainerCreated => "created but not started",
        v1::ContainerState::ContainerExited => "exited",
        v1::ContainerState::ContainerRunning | v1::ContainerState::ContainerUnknown => {
            "not running"
        }
    };
    Error::FailedPrecondition(format!("cannot attach to container {id}: it is {state}"))
}

/// Copies the container's output to the client's channels (dropping a stream the client
/// did not ask for) until the monitor closes the socket, which it does once the
/// container exited and its output was delivered, or until the client stops taking it.
async fn copy_output(
    mut from: AttachReader,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
) -> Result<()> {
    while let Some((stream, data)) = from.next().await? {
        let to = match stream {
            Stream::Stdout => &stdout,
            Stream::Stderr => &stderr,
        };
        if let Some(tx) = to
            && tx.send(data).await.is_err()
        {
            tracing::debug!("the client stopped taking output");
            return Ok(());
        }
    }
    Ok(())
}

/// Feeds the client's stdin and resizes to the monitor. The end of the client's stdin
/// is sent as close-stdin; then, unless the container is `stdin_once`, this returns
/// (the client detached). Otherwise it never returns: `to` must stay open, or the
/// monitor would take the closed socket for a client that left.
async fn feed_input(
    mut to: AttachWriter,
    mut stdin: Option<mpsc::Receiver<Bytes>>,
    mut resize: Option<mpsc::Receiver<TermSize>>,
    stdin_once: bool,
) {
    // Once a write fails the monitor is gone (the container exited): the output side
    // sees the end of the socket and finishes the attach.
    let mut open = true;
    loop {
        // Resizes first: a client that resizes and then types expects the typed
        // command to see the new size.
        tokio::select! {
            biased;
            size = recv(&mut resize) => match size {
                Some(size) if open => {
                    if let Err(e) = to.resize(size.width, size.height).await {
                        tracing::debug!(err = %e, "resizing through the monitor");
                        open = false;
                    }
                }
                Some(_) => {}
                None => resize = None,
            },
            data = recv(&mut stdin) => match data {
                Some(data) if open => {
                    if let Err(e) = to.stdin(&data).await {
                        tracing::debug!(err = %e, "writing stdin to the monitor");
                        open = false;
                    }
                }
                Some(_) => {}
                None => {
                    stdin = None;
                    if open && let Err(e) = to.close_stdin().await {
                        tracing::debug!(err = %e, "closing stdin through the monitor");
                        open = false;
                    }
                    if !stdin_once {
                        return;
                    }
                }
            },
        }
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

    /// Frames a fake monitor read from an attach client, stdin joined.
    #[derive(Debug, PartialEq, Eq)]
    enum Input {
        Stdin(Vec<u8>),
        Resize(u16, u16),
        Close,
    }

    fn decode_input(wire: &[u8]) -> Vec<Input> {
        let mut got = Vec::new();
        monitor::InputDecoder::new().feed(wire, &mut |i| match i {
            monitor::AttachInput::Stdin(b) => got.push(Input::Stdin(b.to_vec())),
            monitor::AttachInput::Resize { width, height } => {
                got.push(Input::Resize(width, height))
            }
            monitor::AttachInput::CloseStdin => got.push(Input::Close),
        });
        got
    }

    /// A listener where a monitor would be, and a client attached to it.
    async fn fake_monitor(bundle: &Path) -> (tokio::net::UnixStream, AttachReader, AttachWriter) {
        let listener = tokio::net::UnixListener::bind(monitor::attach_socket_path(bundle))
            .expect("test fixture");
        let attached = monitor::attach(bundle).await.expect("test fixture");
        let (server, _) = listener.accept().await.expect("test fixture");
        let (reader, writer) = attached.split();
        (server, reader, writer)
    }

    #[tokio::test]
    async fn attach_input_reaches_the_monitor_in_order() {
        use futures::FutureExt as _;
        for stdin_once in [false, true] {
            let dir = tempfile::tempdir().expect("test fixture");
            let (mut server, _reader, writer) = fake_monitor(dir.path()).await;
            let (stdin_tx, stdin_rx) = mpsc::channel(4);
            let (resize_tx, resize_rx) = mpsc::channel(4);
            stdin_tx
                .send(Bytes::from_static(b"abc"))
                .await
                .expect("test fixture");
            resize_tx
                .send(TermSize {
                    width: 80,
                    height: 24,
                })
                .await
                .expect("test fixture");
            drop((stdin_tx, resize_tx));
            // Everything is queued, so one poll does all there is to do. The end of
            // stdin detaches unless the container is stdin_once.
            let done = feed_input(writer, Some(stdin_rx), Some(resize_rx), stdin_once)
                .now_or_never()
                .is_some();
            assert_eq!(done, !stdin_once);
            let mut wire = Vec::new();
            server.read_to_end(&mut wire).await.expect("test fixture");
            assert_eq!(
                decode_input(&wire),
                vec![
                    Input::Resize(80, 24),
                    Input::Stdin(b"abc".to_vec()),
                    Input::Close
                ],
                "stdin_once={stdin_once}"
            );
        }
    }

    #[tokio::test]
    async fn attach_output_goes_to_the_streams_asked_for_until_the_monitor_closes() {
        let dir = tempfile::tempdir().expect("test fixture");
        let (mut server, reader, _writer) = fake_monitor(dir.path()).await;
        let mut wire = Vec::new();
        for (stream, data) in [
            (Stream::Stdout, &b"out"[..]),
            (Stream::Stderr, b"err"),
            (Stream::Stdout, b"more"),
        ] {
            let len = u32::try_from(data.len()).expect("test fixture");
            wire.extend_from_slice(&monitor::output_header(stream, len));
            wire.extend_from_slice(data);
        }
        server.write_all(&wire).await.expect("test fixture");
        drop(server);
        let (tx, mut rx) = mpsc::channel(8);
        copy_output(reader, Some(tx), None)
            .await
            .expect("a clean end");
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, b"outmore");
    }

    #[test]
    fn exit_codes_of_signals() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
