//! Spawning and watching `cri-monitor`, the per-container monitor process, and the
//! files it leaves behind.
//!
//! The monitor (`src/bin/cri-monitor.rs`) runs `<runtime> run --detach` for one container,
//! owns the container's stdio, writes the CRI log, reaps the container and records its
//! exit in an exit file. It outlives the CRI server: it forks itself once at start (the
//! process we spawn exits at once and we reap it), and the forked copy calls `setsid`,
//! so the monitor is never our child and survives our restart or `kill -9`.
//!
//! # Sync protocol
//! The monitor writes JSON lines ([`SyncMessage`]) on its stdout (or `--sync-fd N`):
//! first `{"started":{"monitor_pid":N}}` after it detached, then exactly one of
//! `{"running":{"container_pid":N}}` or `{"failed":{"message":"…"}}`, and closes it.
//!
//! # Exit file
//! When the container's init process exits the monitor drains its output (until EOF or
//! about a second more) and writes [`ExitRecord`] as JSON atomically (temp file, fsync,
//! rename). It does not delete the container from the runtime: the caller does, after
//! reading what it needs (OOM counters) from the container's cgroup.
//!
//! # Attach socket
//! From before it reports `running` until the container exited, the monitor listens
//! on `<bundle>/attach.sock` (unix stream socket, mode 0600; [`attach_socket_path`]).
//! A path longer than `sun_path` holds is reached through a descriptor of the bundle
//! directory instead, as `/proc/self/fd/<dirfd>/attach.sock` ([`attach_address`]);
//! the monitor binds and [`attach`] connects by the same rule. Any number of clients
//! may attach; each gets what the container writes from the moment it connected.
//!
//! Every message is a frame: 1 byte kind, 4 bytes big-endian payload length, payload.
//! - monitor → client: kind 1 = stdout, 2 = stderr (with a TTY everything is stdout).
//!   When the container exited and its output is drained the monitor closes the
//!   socket: the client reads EOF.
//! - client → monitor: kind 0 = stdin bytes (used only if the container was created
//!   with `--stdin`), kind 4 = resize, payload width and height as two big-endian u16
//!   (TTY only), kind 5 = end of this client's stdin. Other kinds are skipped.
//!
//! With `--stdin-once` the first end of a client's stdin closes the container's stdin
//! (with a TTY: sends the terminal's EOF character): a kind 5 frame, or the client's
//! socket ending (EOF, or the client being dropped) after it sent stdin. Without it,
//! stdin stays open for later clients and kind 5 changes nothing.
//!
//! A client that does not take its output is dropped once more than
//! [`ATTACH_CLIENT_BUFFER`] bytes are queued for it: it never slows the container or
//! the log. Its connection ends, possibly inside a frame. A container that does not read its stdin makes the monitor stop reading
//! from clients (backpressure) rather than queue without bound.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::logfmt::Stream;

/// How long [`spawn`] waits for the monitor to report the outcome of `run`.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of spawning and watching monitors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("start monitor {bin} for container {id}")]
    Spawn {
        id: String,
        bin: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("create container {id}: {message}")]
    Create { id: String, message: String },
    #[error("monitor of container {id} did not report within {timeout:?}")]
    Timeout { id: String, timeout: Duration },
    #[error("monitor of container {id} broke the sync protocol: {message}")]
    Protocol { id: String, message: String },
    #[error("open pidfd of process {pid}")]
    Pidfd {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("read exit file {path}")]
    ReadExit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse exit file {path}")]
    ParseExit {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("signal monitor process {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("invalid monitor arguments: {0}")]
    Args(String),
    #[error("attach to {path}")]
    Attach {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attach socket {path}")]
    AttachIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attach socket {path}: {message}")]
    AttachProtocol { path: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one monitor is asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    /// The container id, as known to the OCI runtime.
    pub id: String,
    /// The OCI bundle (holds `config.json`; the monitor writes `pid` and `runtime.log`).
    pub bundle: PathBuf,
    /// The OCI runtime binary (runc, crun).
    pub runtime: PathBuf,
    /// The runtime's state directory (`--root`).
    pub runtime_root: PathBuf,
    /// Where the monitor records the exit.
    pub exit_file: PathBuf,
    /// The CRI log file; output is discarded when `None`.
    pub log_path: Option<PathBuf>,
    /// Give the container a stdin pipe that stays open (instead of /dev/null).
    pub stdin: bool,
    /// Close the container's stdin after the first attached client leaves.
    pub stdin_once: bool,
    /// The container has a terminal (`process.terminal` in the spec); its output is
    /// logged as stdout.
    pub tty: bool,
}

impl MonitorSpec {
    /// The `cri-monitor` command line for this spec (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(16);
        let mut pair = |k: &str, v: &OsStr| {
            a.push(k.into());
            a.push(v.to_os_string());
        };
        pair("--id", OsStr::new(&self.id));
        pair("--bundle", self.bundle.as_os_str());
        pair("--runtime", self.runtime.as_os_str());
        pair("--runtime-root", self.runtime_root.as_os_str());
        pair("--exit-file", self.exit_file.as_os_str());
        if let Some(p) = &self.log_path {
            pair("--log-path", p.as_os_str());
        }
        for (on, flag) in [
            (self.stdin, "--stdin"),
            (self.stdin_once, "--stdin-once"),
            (self.tty, "--tty"),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        a
    }
}

/// The full command line of `cri-monitor`, as the binary parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorArgs {
    pub spec: MonitorSpec,
    /// Extra global options for the runtime, placed before `run` (`--runtime-arg`).
    pub runtime_args: Vec<OsString>,
    /// Where the sync messages go (`--sync-fd`, default 1 = stdout).
    pub sync_fd: RawFd,
}

/// Usage text of `cri-monitor`.
pub const USAGE: &str = "usage: cri-monitor --id ID --bundle DIR --runtime PATH \
--runtime-root DIR --exit-file FILE [--log-path FILE] [--stdin] [--stdin-once] [--tty] \
[--runtime-arg ARG]... [--sync-fd N]";

/// Parses the `cri-monitor` command line (without the program name). `--flag value`
/// and `--flag=value` are both accepted.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<MonitorArgs> {
    let mut it = args.into_iter();
    let (mut id, mut bundle, mut runtime, mut root, mut exit_file) = (None, None, None, None, None);
    let mut log_path = None;
    let (mut stdin, mut stdin_once, mut tty) = (false, false, false);
    let mut runtime_args = Vec::new();
    let mut sync_fd: RawFd = 1;
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .map_err(|a| Error::Args(format!("option is not UTF-8: {a:?}")))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(OsString::from(v))),
            _ => (arg, None),
        };
        let mut value = || -> Result<OsString> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .ok_or_else(|| Error::Args(format!("{name} needs a value"))),
            }
        };
        match name.as_str() {
            "--id" => {
                let v = value()?;
                id = Some(
                    v.into_string()
                        .map_err(|v| Error::Args(format!("--id is not UTF-8: {v:?}")))?,
                );
            }
            "--bundle" => bundle = Some(PathBuf::from(value()?)),
            "--runtime" => runtime = Some(PathBuf::from(value()?)),
            "--runtime-root" => root = Some(PathBuf::from(value()?)),
            "--exit-file" => exit_file = Some(PathBuf::from(value()?)),
            "--log-path" => log_path = Some(PathBuf::from(value()?)),
            "--runtime-arg" => runtime_args.push(value()?),
            "--sync-fd" => {
                let v = value()?;
                sync_fd = v
                    .to_str()
                    .and_then(|s| s.parse::<RawFd>().ok())
                    .filter(|fd| *fd >= 0)
                    .ok_or_else(|| Error::Args(format!("--sync-fd: not a descriptor: {v:?}")))?;
            }
            "--stdin" | "--stdin-once" | "--tty" if inline.is_some() => {
                return Err(Error::Args(format!("{name} takes no value")));
            }
            "--stdin" => stdin = true,
            "--stdin-once" => stdin_once = true,
            "--tty" => tty = true,
            other => return Err(Error::Args(format!("unknown option {other:?}"))),
        }
    }
    let need = |v: Option<PathBuf>, name: &str| {
        v.ok_or_else(|| Error::Args(format!("{name} is required")))
    };
    let id = id.ok_or_else(|| Error::Args("--id is required".into()))?;
    if id.is_empty() {
        return Err(Error::Args("--id is empty".into()));
    }
    Ok(MonitorArgs {
        spec: MonitorSpec {
            id,
            bundle: need(bundle, "--bundle")?,
            runtime: need(runtime, "--runtime")?,
            runtime_root: need(root, "--runtime-root")?,
            exit_file: need(exit_file, "--exit-file")?,
            log_path,
            stdin,
            stdin_once,
            tty,
        },
        runtime_args,
        sync_fd,
    })
}

/// One line of the sync protocol, monitor → caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMessage {
    /// The monitor detached; this is its pid.
    Started { monitor_pid: i32 },
    /// `<runtime> run --detach` succeeded; the container's init process runs.
    Running { container_pid: i32 },
    /// The runtime failed; the monitor exits and left no container behind.
    Failed { message: String },
}

/// A monitor that reported a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub monitor_pid: i32,
    pub container_pid: i32,
}

/// How the container's init process ended, as the monitor records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128 + the signal number when killed by a signal.
    pub exit_code: i32,
    /// When the monitor reaped the process, in nanoseconds since the Unix epoch.
    pub finished_at_ns: i64,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
}

/// Spawns `cri-monitor` for `spec` and waits (at most [`SYNC_TIMEOUT`]) until it
/// reports the outcome of `<runtime> run`. A failed run is [`Error::Create`]
/// with the runtime's own message; the monitor has then exited.
#[tracing::instrument(skip_all, fields(container.id = %spec.id))]
pub async fn spawn(monitor_bin: &Path, spec: &MonitorSpec) -> Result<Started> {
    spawn_with_timeout(monitor_bin, spec, SYNC_TIMEOUT).await
}

/// [`spawn`] with an explicit timeout for the sync messages.
pub async fn spawn_with_timeout(
    monitor_bin: &Path,
    spec: &MonitorSpec,
    timeout: Duration,
) -> Result<Started> {
    let id = spec.id.clone();
    let mut child = tokio::process::Command::new(monitor_bin)
        .args(spec.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            id: id.clone(),
            bin: monitor_bin.to_path_buf(),
            source,
        })?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(protocol(&id, "monitor stdio pipes missing"));
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut monitor_pid: Option<i32> = None;

    let outcome = tokio::time::timeout(timeout, async {
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(e) => return Err(protocol(&id, &format!("read sync pipe: {e}"))),
            };
            let msg: SyncMessage = serde_json::from_str(&line)
                .map_err(|e| protocol(&id, &format!("bad sync message {line:?}: {e}")))?;
            match msg {
                SyncMessage::Started { monitor_pid: pid } => monitor_pid = Some(pid),
                other => return Ok(Some(other)),
            }
        }
    })
    .await;

    // The process we spawned forks and exits at once; reap it.
    let first = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;

    match outcome {
        Ok(Ok(Some(SyncMessage::Running { container_pid }))) => {
            let monitor_pid = monitor_pid.ok_or_else(|| protocol(&id, "running before started"))?;
            tracing::debug!(monitor_pid, container_pid, "container running");
            Ok(Started {
                monitor_pid,
                container_pid,
            })
        }
        Ok(Ok(Some(SyncMessage::Failed { message }))) => Err(Error::Create { id, message }),
        Ok(Ok(Some(SyncMessage::Started { .. }))) => Err(protocol(&id, "started twice")),
        Ok(Ok(None)) => {
            // The monitor died before it reported: its stderr says why.
            let mut text = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut text))
                .await;
            let status = match first {
                Ok(Ok(s)) => format!("{s}"),
                _ => "unknown status".to_string(),
            };
            let text = text.trim();
            Err(protocol(
                &id,
                &if text.is_empty() {
                    format!("exited without a report ({status})")
                } else {
                    format!("exited without a report ({status}): {text}")
                },
            ))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            if let Some(pid) = monitor_pid.filter(|p| *p > 0) {
                // A hung run: stop the monitor; the caller cleans up the container.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            Err(Error::Timeout { id, timeout })
        }
    }
}

fn protocol(id: &str, message: &str) -> Error {
    Error::Protocol {
        id: id.to_string(),
        message: message.to_string(),
    }
}

/// Resolves when the process `pid` exits. Event-driven through a pidfd, so it also
/// works for a monitor that is not our child (after a server restart). Resolves at
/// once if there is no such process.
pub async fn wait_exit(pid: i32) -> Result<()> {
    if pid <= 0 {
        return Ok(());
    }
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(source) => return Err(Error::Pidfd { pid, source }),
    };
    // SAFETY: an OwnedFd keeps its descriptor open, and `as_raw_fd` returns the same
    // number, for as long as the AsyncFd owns it.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|source| Error::Pidfd {
            pid,
            source: source.into(),
        })?;
    // A pidfd becomes readable once the process has exited, and stays so.
    let _ready = fd
        .readable()
        .await
        .map_err(|source| Error::Pidfd { pid, source })?;
    Ok(())
}

/// `pidfd_open(2)` (Linux ≥ 5.3): a descriptor that refers to process `pid` and
/// polls readable when it exits. Neither libc nor nix wraps it, so this calls the
/// syscall directly.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or
    // -1; no memory is passed to the kernel.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the exit record; `None` if the monitor has not written it (yet).
pub fn read_exit(exit_file: &Path) -> Result<Option<ExitRecord>> {
    let data = match std::fs::read(exit_file) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::ReadExit {
                path: exit_file.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|source| Error::ParseExit {
            path: exit_file.to_path_buf(),
            source,
        })
}

/// Asks the monitor to reopen the container's log file (`ReopenContainerLog`: the
/// kubelet renamed it and wants new output in a new file at the same path).
pub fn reopen_log(monitor_pid: i32) -> Result<()> {
    if monitor_pid <= 0 {
        return Err(Error::Signal {
            pid: monitor_pid,
            source: Errno::ESRCH,
        });
    }
    kill(Pid::from_raw(monitor_pid), Signal::SIGUSR1).map_err(|source| Error::Signal {
        pid: monitor_pid,
        source,
    })
}

/// Whether process `pid` exists and has not exited (a zombie counts as exited).
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: comm may contain spaces and parentheses; the state follows the
    // last `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// Name of the attach socket in the bundle.
pub const ATTACH_SOCKET: &str = "attach.sock";
/// Output the monitor queues for one attached client before it drops the client.
pub const ATTACH_CLIENT_BUFFER: usize = 1 << 20;
/// Bytes of a frame header: kind and big-endian payload length.
pub const FRAME_HEADER: usize = 5;
/// Frame kind, client → monitor: bytes for the container's stdin.
pub const FRAME_STDIN: u8 = 0;
/// Frame kind, monitor → client: the container's stdout (everything with a TTY).
pub const FRAME_STDOUT: u8 = 1;
/// Frame kind, monitor → client: the container's stderr.
pub const FRAME_STDERR: u8 = 2;
/// Frame kind, client → monitor: terminal size, width and height as big-endian u16.
pub const FRAME_RESIZE: u8 = 4;
/// Frame kind, client → monitor: this client's stdin ended.
pub const FRAME_CLOSE_STDIN: u8 = 5;
/// Largest output frame [`AttachReader`] accepts (the monitor sends at most 16 KiB).
const MAX_OUTPUT_FRAME: usize = 1 << 20;
/// Largest stdin frame [`AttachWriter::stdin`] sends; longer input is split.
const MAX_STDIN_FRAME: usize = 32 * 1024;
/// `sun_path` of `sockaddr_un`, including the terminating NUL.
const SUN_PATH: usize = 108;

/// `<bundle>/attach.sock`, where the monitor of the container in `bundle` listens.
/// Use [`attach_address`] to bind or connect: this path may be too long to.
pub fn attach_socket_path(bundle: &Path) -> PathBuf {
    bundle.join(ATTACH_SOCKET)
}

/// A name under which a socket in a directory can be bound or connected to.
#[derive(Debug)]
pub struct SocketAddress {
    path: PathBuf,
    /// The directory, opened `O_PATH`, when `path` goes through `/proc/self/fd`.
    _dir: Option<std::fs::File>,
}

impl SocketAddress {
    /// The path to pass to bind/connect; valid while `self` lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How to reach `<bundle>/attach.sock` by name: that path when it fits `sun_path`
/// (107 bytes), else `/proc/self/fd/<N>/attach.sock` where N is a descriptor of the
/// bundle directory held by the returned value. The monitor binds and [`attach`]
/// connects by this same rule.
pub fn attach_address(bundle: &Path) -> io::Result<SocketAddress> {
    socket_address(bundle, ATTACH_SOCKET)
}

fn socket_address(dir: &Path, name: &str) -> io::Result<SocketAddress> {
    let path = dir.join(name);
    if path.as_os_str().len() < SUN_PATH {
        return Ok(SocketAddress { path, _dir: None });
    }
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    Ok(SocketAddress {
        path: PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd())),
        _dir: Some(d),
    })
}

/// The header of an output frame of `len` bytes of `stream`.
pub fn output_header(stream: Stream, len: u32) -> [u8; FRAME_HEADER] {
    let kind = match stream {
        Stream::Stdout => FRAME_STDOUT,
        Stream::Stderr => FRAME_STDERR,
    };
    frame_header(kind, len)
}

fn frame_header(kind: u8, len: u32) -> [u8; FRAME_HEADER] {
    let l = len.to_be_bytes();
    [kind, l[0], l[1], l[2], l[3]]
}

/// What an attach client asks of the monitor, as [`InputDecoder`] yields it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachInput<'a> {
    /// Bytes for the container's stdin: a frame's payload, possibly in pieces.
    Stdin(&'a [u8]),
    /// A new terminal size.
    Resize { width: u16, height: u16 },
    /// The client's stdin ended.
    CloseStdin,
}

/// Decodes the frames an attach client sends, from reads of any size. Stdin payloads
/// are passed on as they arrive, so nothing but a header is buffered.
#[derive(Debug, Default)]
pub struct InputDecoder {
    header: [u8; FRAME_HEADER],
    /// Header bytes received of the current frame.
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    resize: [u8; 4],
    resize_have: usize,
}

impl InputDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the client, calling `emit` for what they complete.
    pub fn feed<'a>(&mut self, mut data: &'a [u8], emit: &mut impl FnMut(AttachInput<'a>)) {
        while !data.is_empty() {
            if self.have < FRAME_HEADER {
                let n = (FRAME_HEADER - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == FRAME_HEADER {
                    let [_, a, b, c, d] = self.header;
                    self.left = u32::from_be_bytes([a, b, c, d]) as usize;
                    self.resize_have = 0;
                    if self.left == 0 {
                        self.end_frame(emit);
                    }
                }
                continue;
            }
            let n = self.left.min(data.len());
            let (chunk, rest) = data.split_at(n);
            match self.header[0] {
                FRAME_STDIN => emit(AttachInput::Stdin(chunk)),
                FRAME_RESIZE => {
                    let take = (self.resize.len() - self.resize_have).min(chunk.len());
                    self.resize[self.resize_have..self.resize_have + take]
                        .copy_from_slice(&chunk[..take]);
                    self.resize_have += take;
                }
                _ => {}
            }
            self.left -= n;
            data = rest;
            if self.left == 0 {
                self.end_frame(emit);
            }
        }
    }

    fn end_frame<'a>(&mut self, emit: &mut impl FnMut(AttachInput<'a>)) {
        match self.header[0] {
            FRAME_RESIZE if self.resize_have == self.resize.len() => {
                let [w0, w1, h0, h1] = self.resize;
                emit(AttachInput::Resize {
                    width: u16::from_be_bytes([w0, w1]),
                    height: u16::from_be_bytes([h0, h1]),
                });
            }
            FRAME_CLOSE_STDIN => emit(AttachInput::CloseStdin),
            _ => {}
        }
        self.have = 0;
    }
}

/// A connection to a container's monitor: its live output and a way to its stdin and
/// terminal. Split it to read and write from different tasks.
#[derive(Debug)]
pub struct Attached {
    reader: AttachReader,
    writer: AttachWriter,
}

impl Attached {
    pub fn split(self) -> (AttachReader, AttachWriter) {
        (self.reader, self.writer)
    }
}

/// Attaches to the container whose bundle is `bundle`. Fails (with the socket's
/// `NotFound` or `ConnectionRefused` as the source) when no monitor listens there: the
/// container is not running.
pub async fn attach(bundle: &Path) -> Result<Attached> {
    let path = attach_socket_path(bundle);
    let addr = attach_address(bundle).map_err(|source| Error::Attach {
        path: path.clone(),
        source,
    })?;
    let sock = UnixStream::connect(addr.path())
        .await
        .map_err(|source| Error::Attach {
            path: path.clone(),
            source,
        })?;
    drop(addr);
    let (r, w) = sock.into_split();
    Ok(Attached {
        reader: AttachReader {
            sock: r,
            buf: BytesMut::new(),
            path: path.clone(),
        },
        writer: AttachWriter { sock: w, path },
    })
}

/// The container's output, one frame at a time.
#[derive(Debug)]
pub struct AttachReader {
    sock: OwnedReadHalf,
    buf: BytesMut,
    path: PathBuf,
}

impl AttachReader {
    /// The next chunk of output; `None` once the container exited and everything it
    /// wrote was delivered. A client the monitor dropped for falling behind reads what
    /// its socket held, then `None` or [`Error::AttachProtocol`] (the connection may
    /// end inside a frame).
    pub async fn next(&mut self) -> Result<Option<(Stream, Bytes)>> {
        loop {
            if self.buf.len() >= FRAME_HEADER {
                let [kind, a, b, c, d] = [
                    self.buf[0],
                    self.buf[1],
                    self.buf[2],
                    self.buf[3],
                    self.buf[4],
                ];
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                let stream = match kind {
                    FRAME_STDOUT => Stream::Stdout,
                    FRAME_STDERR => Stream::Stderr,
                    other => return Err(self.protocol(format!("unknown frame kind {other}"))),
                };
                if len > MAX_OUTPUT_FRAME {
                    return Err(self.protocol(format!("frame of {len} bytes")));
                }
                if self.buf.len() >= FRAME_HEADER + len {
                    self.buf.advance(FRAME_HEADER);
                    return Ok(Some((stream, self.buf.split_to(len).freeze())));
                }
                self.buf.reserve(FRAME_HEADER + len - self.buf.len());
            } else {
                self.buf.reserve(16 * 1024);
            }
            let n = self
                .sock
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| Error::AttachIo {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.protocol(format!(
                    "connection ended inside a frame ({} bytes pending)",
                    self.buf.len()
                )));
            }
        }
    }

    /// The output as a stream of frames.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<(Stream, Bytes)>> {
        futures::stream::try_unfold(self, |mut r| async move {
            Ok(r.next().await?.map(|frame| (frame, r)))
        })
    }

    fn protocol(&self, message: String) -> Error {
        Error::AttachProtocol {
            path: self.path.clone(),
            message,
        }
    }
}

/// The container's stdin and terminal. Dropping it ends this client's stdin (which,
/// with `stdin_once`, closes the container's stdin if this client sent any).
#[derive(Debug)]
pub struct AttachWriter {
    sock: OwnedWriteHalf,
    path: PathBuf,
}

impl AttachWriter {
    /// Sends bytes to the container's stdin (ignored unless it was created with stdin).
    pub async fn stdin(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_STDIN_FRAME) {
            // A chunk is at most MAX_STDIN_FRAME bytes, far below u32::MAX.
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let mut frame = Vec::with_capacity(FRAME_HEADER + chunk.len());
            frame.extend_from_slice(&frame_header(FRAME_STDIN, len));
            frame.extend_from_slice(chunk);
            self.send(&frame).await?;
        }
        Ok(())
    }

    /// Resizes the container's terminal (ignored without a TTY).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let mut frame = [0u8; FRAME_HEADER + 4];
        frame[..FRAME_HEADER].copy_from_slice(&frame_header(FRAME_RESIZE, 4));
        frame[FRAME_HEADER..FRAME_HEADER + 2].copy_from_slice(&width.to_be_bytes());
        frame[FRAME_HEADER + 2..].copy_from_slice(&height.to_be_bytes());
        self.send(&frame).await
    }

    /// Ends this client's stdin: with `stdin_once` the container's stdin is closed.
    /// Output keeps coming on the reader.
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.send(&frame_header(FRAME_CLOSE_STDIN, 0)).await
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.sock
            .write_all(bytes)
            .await
            .map_err(|source| Error::AttachIo {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd as _;

    fn spec() -> MonitorSpec {
        MonitorSpec {
            id: "abc".into(),
            bundle: "/b".into(),
            runtime: "/usr/sbin/runc".into(),
            runtime_root: "/run/r".into(),
            exit_file: "/b/exit".into(),
            log_path: Some("/var/log/pods/x/0.log".into()),
            stdin: true,
            stdin_once: false,
            tty: true,
        }
    }

    #[test]
    fn args_round_trip() -> Result<()> {
        let s = spec();
        let parsed = parse_args(s.args())?;
        assert_eq!(parsed.spec, s);
        assert_eq!(parsed.sync_fd, 1);
        assert!(parsed.runtime_args.is_empty());
        Ok(())
    }

    #[test]
    fn args_table() {
        let base = [
            "--id",
            "x",
            "--bundle",
            "/b",
            "--runtime",
            "r",
            "--runtime-root",
            "/s",
            "--exit-file",
            "/e",
        ];
        /// (sync fd, number of runtime args) or a part of the error message
        type Want<'a> = Result<(RawFd, usize), &'a str>;
        let cases: &[(&[&str], Want)] = &[
            (&[], Ok((1, 0))),
            (&["--sync-fd", "5"], Ok((5, 0))),
            (
                &["--sync-fd=7", "--runtime-arg", "--systemd-cgroup"],
                Ok((7, 1)),
            ),
            (&["--sync-fd", "-1"], Err("--sync-fd")),
            (&["--bogus"], Err("unknown option")),
            (&["--tty=1"], Err("takes no value")),
            (&["--log-path"], Err("needs a value")),
        ];
        for (extra, want) in cases {
            let args = base.iter().chain(extra.iter()).map(OsString::from);
            match (parse_args(args), want) {
                (Ok(a), Ok((fd, n))) => {
                    assert_eq!((a.sync_fd, a.runtime_args.len()), (*fd, *n), "{extra:?}")
                }
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{extra:?}: {e}"),
                (got, want) => panic!("{extra:?}: got {got:?}, want {want:?}"),
            }
        }
        let missing = parse_args(["--id", "x"].map(OsString::from));
        assert!(matches!(missing, Err(Error::Args(m)) if m.contains("--bundle")));
    }

    #[test]
    fn sync_messages_are_one_json_line() -> Result<(), serde_json::Error> {
        let m = SyncMessage::Failed {
            message: "line 1\nline 2".into(),
        };
        let text = serde_json::to_string(&m)?;
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<SyncMessage>(&text)?, m);
        assert_eq!(
            serde_json::to_string(&SyncMessage::Running { container_pid: 7 })?,
            r#"{"running":{"container_pid":7}}"#
        );
        Ok(())
    }

    #[test]
    fn read_exit_missing_ok_and_corrupt() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("exit");
        assert_eq!(read_exit(&path)?, None);
        std::fs::write(&path, r#"{"exit_code":137,"finished_at_ns":5,"signal":9}"#)?;
        assert_eq!(
            read_exit(&path)?,
            Some(ExitRecord {
                exit_code: 137,
                finished_at_ns: 5,
                signal: Some(9)
            })
        );
        std::fs::write(&path, "{")?;
        let err = read_exit(&path).err().ok_or("corrupt file accepted")?;
        assert!(err.to_string().contains(&path.display().to_string()));
        Ok(())
    }

    #[test]
    fn alive_and_wait_for_missing_pids() -> Result<(), Box<dyn std::error::Error>> {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
        assert!(!alive(-1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // A pid above pid_max never exists.
        rt.block_on(wait_exit(i32::MAX))?;
        let fd = pidfd_open(std::process::id() as i32)?;
        assert!(fd.as_raw_fd() >= 0);
        Ok(())
    }

    #[derive(Debug, PartialEq, Eq)]
    enum In {
        Stdin(Vec<u8>),
        Resize(u16, u16),
        Close,
    }

    /// Decodes `wire` fed in pieces of `step` bytes, joining stdin pieces.
    fn decode(wire: &[u8], step: usize) -> Vec<In> {
        let mut d = InputDecoder::new();
        let mut got: Vec<In> = Vec::new();
        for piece in wire.chunks(step) {
            d.feed(piece, &mut |i| match (i, got.last_mut()) {
                (AttachInput::Stdin(b), Some(In::Stdin(prev))) => prev.extend_from_slice(b),
                (AttachInput::Stdin(b), _) => got.push(In::Stdin(b.to_vec())),
                (AttachInput::Resize { width, height }, _) => got.push(In::Resize(width, height)),
                (AttachInput::CloseStdin, _) => got.push(In::Close),
            });
        }
        got
    }

    #[test]
    fn input_frames_table() {
        let stdin = [&frame_header(FRAME_STDIN, 3)[..], b"abc"].concat();
        let resize = [&frame_header(FRAME_RESIZE, 4)[..], &[0, 80, 0, 24]].concat();
        let close = frame_header(FRAME_CLOSE_STDIN, 0).to_vec();
        let empty_stdin = frame_header(FRAME_STDIN, 0).to_vec();
        let short_resize = [&frame_header(FRAME_RESIZE, 2)[..], &[0, 80]].concat();
        let long_resize = [&frame_header(FRAME_RESIZE, 6)[..], &[1, 0, 0, 50, 9, 9]].concat();
        let unknown = [&frame_header(9, 2)[..], b"zz"].concat();
        let table: Vec<(Vec<u8>, Vec<In>)> = vec![
            (Vec::new(), vec![]),
            (stdin.clone(), vec![In::Stdin(b"abc".to_vec())]),
            (resize.clone(), vec![In::Resize(80, 24)]),
            (close.clone(), vec![In::Close]),
            (empty_stdin, vec![]),
            (short_resize, vec![]),
            (long_resize, vec![In::Resize(256, 50)]),
            (
                [&unknown[..], &stdin, &resize, &close].concat(),
                vec![In::Stdin(b"abc".to_vec()), In::Resize(80, 24), In::Close],
            ),
        ];
        for (wire, want) in &table {
            for step in [1, 2, 3, 7, 4096] {
                assert_eq!(&decode(wire, step), want, "{wire:?} in steps of {step}");
            }
        }
    }

    #[test]
    fn socket_address_short_and_long() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let short = attach_address(dir.path())?;
        assert_eq!(short.path(), attach_socket_path(dir.path()));
        let long_dir = dir.path().join("d".repeat(120));
        std::fs::create_dir(&long_dir)?;
        let long = attach_address(&long_dir)?;
        let p = long.path().to_string_lossy().into_owned();
        assert!(
            p.starts_with("/proc/self/fd/") && p.ends_with("/attach.sock"),
            "{p}"
        );
        assert!(p.len() < SUN_PATH);
        // Binding through the short name creates the socket at the long path.
        let _l = std::os::unix::net::UnixListener::bind(long.path())?;
        assert!(attach_socket_path(&long_dir).exists());
        assert!(attach_address(&dir.path().join("missing").join("d".repeat(120))).is_err());
        Ok(())
    }

    #[test]
    fn output_frames_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (a, mut b) = UnixStream::pair()?;
            let (r, _w) = a.into_split();
            let mut reader = AttachReader {
                sock: r,
                buf: BytesMut::new(),
                path: PathBuf::from("pair"),
            };
            let mut wire = Vec::new();
            wire.extend_from_slice(&output_header(Stream::Stdout, 2));
            wire.extend_from_slice(b"hi");
            wire.extend_from_slice(&output_header(Stream::Stderr, 0));
            wire.extend_from_slice(&output_header(Stream::Stderr, 3));
            wire.extend_from_slice(b"err");
            b.write_all(&wire).await?;
            b.write_all(&[7, 0, 0, 0, 0]).await?;
            assert_eq!(
                reader.next().await?,
                Some((Stream::Stdout, Bytes::from_static(b"hi")))
            );
            assert_eq!(reader.next().await?, Some((Stream::Stderr, Bytes::new())));
            assert_eq!(
                reader.next().await?,
                Some((Stream::Stderr, Bytes::from_static(b"err")))
            );
            assert!(matches!(
                reader.next().await,
                Err(Error::AttachProtocol { .. })
            ));
            Ok::<_, Box<dyn std::error::Error>>(())
        })
    }
}
