//! `cri-monitor`: the per-container monitor (our conmon / containerd shim, but tiny).
//!
//! ```text
//! cri-monitor --id ID --bundle DIR --runtime PATH --runtime-root DIR --exit-file FILE
//!             [--log-path FILE] [--stdin] [--stdin-once] [--tty]
//!             [--runtime-arg ARG]... [--sync-fd N]
//! ```
//!
//! Life of a monitor:
//! 1. Parses its arguments (a usage error exits 2 before anything else), then forks:
//!    the parent exits 0 at once, the child calls `setsid` and carries on. The monitor
//!    is therefore never the CRI server's child and outlives it.
//! 2. Reports `{"started":{"monitor_pid":N}}` on the sync fd (default stdout), becomes
//!    a child subreaper and blocks SIGCHLD/SIGUSR1/SIGTERM/SIGINT/SIGHUP into a signalfd.
//!    Listens on the attach socket, `<bundle>/attach.sock` (mode 0600).
//! 3. Runs `<runtime> --root R --log <bundle>/runtime.log --log-format json [ARG…]
//!    run --detach --bundle B --pid-file <bundle>/pid [--console-socket S] ID` with the
//!    container's stdout/stderr on pipes it owns (with `--tty`: the pty master received
//!    over the console socket). The init process the runtime leaves running is
//!    reparented to the monitor (one runtime process where `create` + `start` are two).
//! 4. Reports `{"running":{"container_pid":N}}`, or `{"failed":{"message":…}}` after a
//!    best-effort `<runtime> delete --force` and exits 1. Its own stdio then points to
//!    /dev/null, its stderr to `<bundle>/monitor.log`.
//! 5. Copies output to the CRI log (see `cri::runtime::logfmt`) and to attached
//!    clients, feeds their stdin and resizes to the container (the protocol is in
//!    `cri::runtime::monitor`, "Attach socket"), reopens the log on SIGUSR1, forwards
//!    SIGTERM/SIGINT/SIGHUP to the container's init, reaps every child.
//! 6. When init exits: drains output until EOF or one more second, stops listening,
//!    writes the exit file atomically, gives clients up to a second to take what is
//!    queued for them, closes them and exits 0. Deleting the container is left to the
//!    caller.
//!
//! Synchronous std + nix + libc only, one thread and one poll(2) loop: no async
//! runtime, no logging framework.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cri::runtime::logfmt::{LogWriter, Stream};
use cri::runtime::monitor::{
    self, AttachInput, ExitRecord, InputDecoder, MonitorArgs, SocketAddress, SyncMessage,
};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// How long output is still collected after the container's init exited, for
/// processes (in a shared pid namespace) that keep the pipes open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// One read from a container pipe.
const READ_BUF: usize = 16 * 1024;
/// Reads per pipe per wakeup, so one chatty stream cannot starve signal handling.
const READS_PER_WAKEUP: usize = 16;
/// Stdin bytes queued for the container; beyond this clients are not read.
const STDIN_BUFFER: usize = 64 * 1024;
/// Attached clients at most; more connections are closed at once.
const MAX_CLIENTS: usize = 128;
/// How long clients may take to read what is queued for them once the container exited.
const CLIENT_FLUSH: Duration = Duration::from_secs(1);
/// A buffer that grew beyond this is freed when it empties, to keep the RSS small.
const KEEP_CAPACITY: usize = 64 * 1024;

fn main() {
    let argv: Vec<_> = std::env::args_os().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", monitor::USAGE);
        return;
    }
    let args = match monitor::parse_args(argv).and_then(absolute_paths) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cri-monitor: {e}\n{}", monitor::USAGE);
            std::process::exit(2);
        }
    };
    match sys::fork() {
        Ok(sys::Forked::Parent) => return,
        Ok(sys::Forked::Child) => {}
        Err(e) => {
            eprintln!("cri-monitor: fork: {e}");
            std::process::exit(1);
        }
    }
    // Whatever else the caller let us inherit would stay open as long as the container
    // runs (and keep its pipes from reaching EOF).
    sys::close_inherited(args.sync_fd);
    let mut sync = match SyncPipe::take(args.sync_fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cri-monitor: sync fd {}: {e}", args.sync_fd);
            std::process::exit(1);
        }
    };
    std::process::exit(match run(&args, &mut sync) {
        Ok(()) => 0,
        Err(Failure::Create(message)) => {
            sync.send(&SyncMessage::Failed { message });
            1
        }
        Err(Failure::Late(message)) => {
            eprintln!("cri-monitor: {}: {message}", args.spec.id);
            1
        }
    });
}

/// Makes the paths absolute: the monitor leaves the caller's working directory. A
/// bare runtime name (`runc`) stays as it is, to be found on PATH.
fn absolute_paths(mut args: MonitorArgs) -> monitor::Result<MonitorArgs> {
    let abs = |p: &mut PathBuf| -> monitor::Result<()> {
        *p = std::path::absolute(&*p)
            .map_err(|e| monitor::Error::Args(format!("path {}: {e}", p.display())))?;
        Ok(())
    };
    let s = &mut args.spec;
    abs(&mut s.bundle)?;
    abs(&mut s.runtime_root)?;
    abs(&mut s.exit_file)?;
    if let Some(p) = s.log_path.as_mut() {
        abs(p)?;
    }
    if s.runtime.components().count() > 1 {
        abs(&mut s.runtime)?;
    }
    Ok(args)
}

/// Why the monitor gives up.
enum Failure {
    /// Before the container was reported running: sent on the sync pipe.
    Create(String),
    /// After: only our stderr (`monitor.log`) hears about it.
    Late(String),
}

fn create_err(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Create(format!("{what}: {e}"))
}

fn run(args: &MonitorArgs, sync: &mut SyncPipe) -> Result<(), Failure> {
    let spec = &args.spec;
    nix::unistd::setsid().map_err(|e| create_err("setsid", e))?;
    sync.send(&SyncMessage::Started {
        monitor_pid: std::process::id() as i32,
    });
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| create_err("become subreaper", e))?;
    // Do not pin the caller's working directory (or its mount).
    nix::unistd::chdir("/").map_err(|e| create_err("chdir /", e))?;

    // Blocked signals are read from a signalfd. std's Command clears the signal mask
    // in the children it starts, so the runtime and the container do not inherit it.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| create_err("block signals", e))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| create_err("signalfd", e))?;

    // Fail now rather than after the container ran if the exit cannot be recorded.
    match spec.exit_file.parent() {
        Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {}
        _ => {
            return Err(Failure::Create(format!(
                "exit file directory of {} does not exist",
                spec.exit_file.display()
            )));
        }
    }
    let mut log = match &spec.log_path {
        Some(p) => Some(
            LogWriter::open(p).map_err(|e| create_err(&format!("open log {}", p.display()), e))?,
        ),
        None => None,
    };

    // Before `running`: the caller may attach as soon as it hears of the container.
    let (listener, address) = listen(&spec.bundle).map_err(|e| {
        create_err(
            &format!(
                "listen on {}",
                monitor::attach_socket_path(&spec.bundle).display()
            ),
            e,
        )
    })?;

    let created = match run_container(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(address.path());
            return Err(e);
        }
    };
    sync.send(&SyncMessage::Running {
        container_pid: created.pid.as_raw(),
    });
    detach_stdio(&spec.bundle);
    sync.close();

    let mut sources = created.sources;
    let mut attach = Attach {
        listener: Some(listener),
        address,
        clients: Vec::new(),
        stdin: Stdin::new(created.stdin, spec.tty),
        console: created.console,
        stdin_once: spec.stdin_once,
    };
    let exit = watch(&signals, created.pid, &mut sources, &mut log, &mut attach);
    attach.stop();
    let written = write_exit_file(&spec.exit_file, &exit)
        .map_err(|e| Failure::Late(format!("write exit file {}: {e}", spec.exit_file.display())));
    attach.close_clients(Instant::now() + CLIENT_FLUSH);
    written
}

/// Binds the attach socket, mode 0600, replacing a stale one.
fn listen(bundle: &Path) -> io::Result<(UnixListener, SocketAddress)> {
    use nix::sys::stat::{Mode, umask};
    let address = monitor::attach_address(bundle)?;
    let _ = std::fs::remove_file(address.path());
    // The socket file gets 0777 & !umask; single-threaded, so the umask is ours alone.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(address.path());
    umask(old);
    let listener = bound?;
    listener.set_nonblocking(true)?;
    Ok((listener, address))
}

/// A container the runtime runs, with the monitor's ends of its stdio.
struct Created {
    pid: Pid,
    sources: Vec<Source>,
    /// Where the container's stdin is written, with `--stdin`: the writing end of its
    /// stdin pipe (held so it stays open), or the pty master.
    stdin: Option<File>,
    /// The pty master (a second descriptor of it), with `--tty`.
    console: Option<File>,
}

/// One output stream of the container.
struct Source {
    file: File,
    stream: Stream,
    open: bool,
}

fn runtime_command(args: &MonitorArgs) -> Command {
    let spec = &args.spec;
    let mut c = Command::new(&spec.runtime);
    c.arg("--root")
        .arg(&spec.runtime_root)
        .arg("--log")
        .arg(spec.bundle.join("runtime.log"))
        .arg("--log-format")
        .arg("json")
        .args(&args.runtime_args);
    c
}

fn run_container(args: &MonitorArgs) -> Result<Created, Failure> {
    let spec = &args.spec;
    let pid_file = spec.bundle.join("pid");
    let runtime_log = spec.bundle.join("runtime.log");
    let _ = std::fs::remove_file(&pid_file);
    let log_offset = std::fs::metadata(&runtime_log).map_or(0, |m| m.len());

    let devnull = || File::open("/dev/null").map_err(|e| create_err("open /dev/null", e));
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| create_err("pipe", e));

    // What the runtime's stderr says matters only when it fails; with a terminal
    // it is not the container's stderr, so give it a pipe of its own.
    let (err_r, err_w) = pipe()?;
    let mut stdin_keep = None;
    let mut sources = Vec::new();
    let mut cmd = runtime_command(args);
    cmd.arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(&spec.bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    let mut console_socket = None;
    if spec.tty {
        let path = console_socket_path(&spec.bundle);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| create_err(&format!("listen on {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| create_err("console socket", e))?;
        cmd.arg("--console-socket").arg(&path);
        cmd.stdin(devnull()?).stdout(devnull()?);
        console_socket = Some((listener, path));
    } else {
        let (out_r, out_w) = pipe()?;
        sources.push(Source {
            file: File::from(out_r),
            stream: Stream::Stdout,
            open: true,
        });
        cmd.stdout(out_w);
        if spec.stdin {
            let (in_r, in_w) = pipe()?;
            cmd.stdin(in_r);
            let _ = sys::set_nonblocking(in_w.as_fd());
            stdin_keep = Some(File::from(in_w));
        } else {
            cmd.stdin(devnull()?);
        }
    }
    // Without a terminal the runtime's stderr is the container's stderr.
    cmd.stderr(err_w);
    let err_file = File::from(err_r);
    if !spec.tty {
        sources.push(Source {
            file: err_file.try_clone().map_err(|e| create_err("dup", e))?,
            stream: Stream::Stderr,
            open: true,
        });
    }

    cmd.arg(&spec.id);
    let mut child = cmd
        .spawn()
        .map_err(|e| create_err(&format!("run {}", spec.runtime.display()), e))?;
    // Our copies of the child's ends are closed now (`cmd` owns and drops them).
    drop(cmd);

    let (status, pty) = match &console_socket {
        Some((listener, _)) => wait_with_console(&mut child, listener),
        None => (child.wait(), Ok(None)),
    };
    if let Some((_, path)) = &console_socket {
        let _ = std::fs::remove_file(path);
    }
    for s in &sources {
        let _ = sys::set_nonblocking(s.file.as_fd());
    }
    let _ = sys::set_nonblocking(err_file.as_fd());

    let failure = match (&status, &pty) {
        (Err(e), _) => Some(format!("wait for {}: {e}", spec.runtime.display())),
        (Ok(st), _) if !st.success() => {
            Some(runtime_error(&runtime_log, log_offset, &err_file, *st))
        }
        (Ok(_), Err(e)) => Some(format!("receive console: {e}")),
        (Ok(_), Ok(None)) if spec.tty => Some("runtime sent no console".to_string()),
        _ => None,
    };
    let pid = match failure {
        Some(message) => Err(message),
        None => {
            read_pid(&pid_file).map_err(|e| format!("read pid file {}: {e}", pid_file.display()))
        }
    };
    let pid = match pid {
        Ok(pid) => pid,
        Err(message) => {
            delete_container(args);
            return Err(Failure::Create(message));
        }
    };
    let mut console = None;
    if let Ok(Some(master)) = pty {
        let file = File::from(master);
        // Non-blocking is a property of the open file: the copies below share it.
        let _ = sys::set_nonblocking(file.as_fd());
        console = file.try_clone().ok();
        if spec.stdin {
            stdin_keep = file.try_clone().ok();
        }
        sources.push(Source {
            file,
            stream: Stream::Stdout,
            open: true,
        });
    }
    Ok(Created {
        pid,
        sources,
        stdin: stdin_keep,
        console,
    })
}

/// Waits for `runtime run` while accepting its console socket connection.
fn wait_with_console(
    child: &mut Child,
    listener: &UnixListener,
) -> (io::Result<ExitStatus>, io::Result<Option<OwnedFd>>) {
    let mut pty: io::Result<Option<OwnedFd>> = Ok(None);
    let accept = |pty: &mut io::Result<Option<OwnedFd>>| {
        if !matches!(pty, Ok(None)) {
            return;
        }
        match listener.accept() {
            Ok((conn, _)) => *pty = sys::recv_fd(conn.as_fd()).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => *pty = Err(e),
        }
    };
    loop {
        accept(&mut pty);
        match child.try_wait() {
            Ok(Some(st)) => {
                // The runtime may have sent the console just before it exited.
                accept(&mut pty);
                return (Ok(st), pty);
            }
            Ok(None) => {}
            Err(e) => return (Err(e), pty),
        }
        let mut fds = [libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // The runtime's exit is not pollable here (SIGCHLD is blocked for the
        // signalfd), so look at it every 20 ms while the runtime runs.
        let _ = sys::poll(&mut fds, 20);
    }
}

/// `<bundle>/console.sock`, or a name in the temp dir when that path is too long for
/// a unix socket address.
fn console_socket_path(bundle: &Path) -> PathBuf {
    let p = bundle.join("console.sock");
    if p.as_os_str().len() < 100 {
        p
    } else {
        std::env::temp_dir().join(format!("cri-monitor-{}.sock", std::process::id()))
    }
}

/// The runtime's own explanation of a failed run: the `error` entries it logged,
/// else its stderr, else its exit status.
fn runtime_error(log: &Path, offset: u64, stderr: &File, status: ExitStatus) -> String {
    let mut msgs = Vec::new();
    if let Ok(mut f) = File::open(log) {
        let mut text = String::new();
        if std::io::Seek::seek(&mut f, io::SeekFrom::Start(offset)).is_ok()
            && f.read_to_string(&mut text).is_ok()
        {
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("");
                if matches!(level, "error" | "fatal" | "panic")
                    && let Some(m) = v.get("msg").and_then(|m| m.as_str())
                    && !msgs.iter().any(|x| x == m)
                {
                    msgs.push(m.to_string());
                }
            }
        }
    }
    if !msgs.is_empty() {
        return msgs.join("; ");
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut r = stderr;
    while buf.len() < 64 * 1024 {
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    if text.is_empty() {
        format!("runtime run failed ({status})")
    } else {
        text.to_string()
    }
}

fn read_pid(path: &Path) -> io::Result<Pid> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad pid {text:?}")))
}

/// Best effort: leave no half-created container behind.
fn delete_container(args: &MonitorArgs) {
    let _ = runtime_command(args)
        .arg("delete")
        .arg("--force")
        .arg(&args.spec.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // The container's init, if any, was our child after run.
    while let Ok(Some(_)) = sys::reap_any() {}
}

/// Our stdin and stdout go to /dev/null, stderr to `<bundle>/monitor.log`: nothing
/// keeps the caller's pipes open and a write never hits a closed pipe.
fn detach_stdio(bundle: &Path) {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(bundle.join("monitor.log"));
        match err {
            Ok(f) => {
                let _ = nix::unistd::dup2_stderr(&f);
            }
            Err(_) => {
                let _ = nix::unistd::dup2_stderr(&null);
            }
        }
    }
}

/// What one entry of the poll set stands for.
#[derive(Clone, Copy)]
enum Slot {
    Signals,
    Source(usize),
    Listener,
    Client(usize),
    Stdin,
}

/// Copies output, serves attached clients and reaps children until the container's
/// init exited and its output is drained; returns how it exited.
fn watch(
    signals: &SignalFd,
    init: Pid,
    sources: &mut [Source],
    log: &mut Option<LogWriter>,
    attach: &mut Attach,
) -> ExitRecord {
    let mut buf = vec![0u8; READ_BUF];
    let mut exited: Option<(ExitRecord, Instant)> = reap(init);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(8);
    let mut slots: Vec<Slot> = Vec::with_capacity(8);
    loop {
        let timeout_ms = match &exited {
            None => -1,
            Some((_, at)) => {
                let left = DRAIN_AFTER_EXIT.saturating_sub(at.elapsed());
                if left.is_zero() || sources.iter().all(|s| !s.open) {
                    break;
                }
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        };
        fds.clear();
        slots.clear();
        let mut add = |fd: i32, events: libc::c_short, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        add(signals.as_raw_fd(), libc::POLLIN, Slot::Signals);
        // Before the output: a client that connected before output arrived gets it,
        // even when the monitor sees both in one wakeup.
        if let Some(l) = &attach.listener {
            add(l.as_raw_fd(), libc::POLLIN, Slot::Listener);
        }
        for (i, s) in sources.iter().enumerate().filter(|(_, s)| s.open) {
            add(s.file.as_raw_fd(), libc::POLLIN, Slot::Source(i));
        }
        attach.poll_set(&mut add);
        match sys::poll(&mut fds, timeout_ms) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("cri-monitor: poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        // Signals first: a reopen requested before output arrived applies to it.
        if fds[0].revents != 0 {
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        let reaped = reap(init);
                        if exited.is_none() {
                            exited = reaped;
                        }
                    }
                    Ok(Signal::SIGUSR1) => {
                        if let Some(l) = log.as_mut()
                            && let Err(e) = l.reopen()
                        {
                            eprintln!("cri-monitor: reopen {}: {e}", l.path().display());
                        }
                    }
                    Ok(sig @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP))
                        if exited.is_none() =>
                    {
                        let _ = kill(init, sig);
                    }
                    _ => {}
                }
            }
        }
        for (pfd, slot) in fds.iter().zip(&slots).skip(1) {
            if pfd.revents == 0 {
                continue;
            }
            match *slot {
                Slot::Signals => {}
                Slot::Source(i) => drain(&mut sources[i], &mut buf, log, attach),
                Slot::Listener => attach.accept(),
                Slot::Client(i) => attach.serve(i, pfd.revents, &mut buf),
                Slot::Stdin => attach.stdin.flush(),
            }
        }
        attach.remove_dead();
    }
    if let Some(l) = log.as_mut() {
        for s in sources.iter() {
            l.finish(s.stream);
        }
        if l.dropped() > 0 {
            eprintln!(
                "cri-monitor: {} log records could not be written",
                l.dropped()
            );
        }
    }
    match exited {
        Some((rec, _)) => rec,
        // Unreachable: the loop only ends after init exited.
        None => ExitRecord {
            exit_code: -1,
            finished_at_ns: now_ns(),
            signal: None,
        },
    }
}

/// Reads what is available from one stream into the log and to attached clients;
/// closes it at EOF.
fn drain(src: &mut Source, buf: &mut [u8], log: &mut Option<LogWriter>, attach: &mut Attach) {
    for _ in 0..READS_PER_WAKEUP {
        match src.file.read(buf) {
            Ok(0) => {
                src.open = false;
                break;
            }
            Ok(n) => {
                if let Some(l) = log.as_mut() {
                    l.write(src.stream, &buf[..n]);
                }
                attach.broadcast(src.stream, &buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // EIO: the pty's other side is gone. Anything else: the pipe is unusable.
            Err(_) => {
                src.open = false;
                break;
            }
        }
    }
    if !src.open
        && let Some(l) = log.as_mut()
    {
        l.finish(src.stream);
    }
}

/// The attach socket, its clients, and the container's stdin and terminal they use.
struct Attach {
    /// `None` once the container exited.
    listener: Option<UnixListener>,
    /// The name the listener is bound to (kept reachable to remove it at the end).
    address: SocketAddress,
    clients: Vec<Client>,
    stdin: Stdin,
    /// The pty master, for resizes; `None` without a TTY.
    console: Option<File>,
    stdin_once: bool,
}

impl Attach {
    /// Adds the clients and the container's stdin to the poll set, if they need
    /// watching (the listener is added by the caller, ahead of the output).
    fn poll_set(&self, add: &mut impl FnMut(i32, libc::c_short, Slot)) {
        // Clients are not read while the container's stdin is backed up.
        let readable = self.stdin.room() > 0;
        for (i, c) in self.clients.iter().enumerate() {
            let mut events = 0;
            if c.reading && readable {
                events |= libc::POLLIN;
            }
            if c.queued() > 0 {
                events |= libc::POLLOUT;
            }
            // With no events, poll still reports a hang-up: wanted unless already seen.
            if events != 0 || !c.hung_up {
                add(c.sock.as_raw_fd(), events, Slot::Client(i));
            }
        }
        if let Some(f) = self.stdin.waiting() {
            add(f.as_raw_fd(), libc::POLLOUT, Slot::Stdin);
        }
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        for _ in 0..READS_PER_WAKEUP {
            match listener.accept() {
                Ok((sock, _)) => {
                    if self.clients.len() < MAX_CLIENTS && sock.set_nonblocking(true).is_ok() {
                        self.clients.push(Client::new(sock));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: all taken; anything else: that connection is lost.
                Err(_) => break,
            }
        }
    }

    /// Queues output for every client.
    fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        // Reads are at most READ_BUF long.
        let Ok(len) = u32::try_from(data.len()) else {
            return;
        };
        let header = monitor::output_header(stream, len);
        for c in self.clients.iter_mut().filter(|c| !c.dead) {
            let was_idle = c.queued() == 0;
            c.queue(&header, data);
            // Most of the time the socket has room: write now, buffer nothing.
            if was_idle && !c.dead {
                c.flush();
            }
        }
    }

    /// Handles poll events of client `i`.
    fn serve(&mut self, i: usize, revents: libc::c_short, buf: &mut [u8]) {
        let Attach {
            clients,
            stdin,
            console,
            stdin_once,
            ..
        } = self;
        let Some(c) = clients.get_mut(i) else {
            return;
        };
        if revents & libc::POLLOUT != 0 {
            c.flush();
        }
        let mut did_read = false;
        if revents & libc::POLLIN != 0 && !c.dead {
            did_read = true;
            for _ in 0..READS_PER_WAKEUP {
                let room = stdin.room().min(buf.len());
                if room == 0 || !c.reading || c.dead {
                    break;
                }
                match (&c.sock).read(&mut buf[..room]) {
                    Ok(0) => {
                        c.reading = false;
                        // The end of a client's socket ends its stdin.
                        if *stdin_once && c.sent_stdin {
                            stdin.end();
                        }
                    }
                    Ok(n) => {
                        let sent_stdin = &mut c.sent_stdin;
                        c.input.feed(&buf[..n], &mut |msg| match msg {
                            AttachInput::Stdin(data) => {
                                *sent_stdin = true;
                                stdin.push(data);
                            }
                            AttachInput::Resize { width, height } => {
                                if let Some(pty) = console.as_ref() {
                                    let _ = sys::set_window_size(pty.as_fd(), width, height);
                                }
                            }
                            AttachInput::CloseStdin => {
                                if *stdin_once {
                                    stdin.end();
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => c.dead = true,
                }
            }
            stdin.flush();
        }
        if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            if !c.reading || revents & libc::POLLERR != 0 {
                // Gone for good: nothing more to read, no way to write.
                c.dead = true;
            } else if !did_read {
                // Hung up with input left that stdin has no room for yet.
                c.hung_up = true;
            }
        }
    }

    /// Drops the clients that failed or fell too far behind.
    fn remove_dead(&mut self) {
        if !self.clients.iter().any(|c| c.dead) {
            return;
        }
        for c in self.clients.iter().filter(|c| c.dead) {
            if self.stdin_once && c.sent_stdin && c.reading {
                self.stdin.end();
            }
        }
        self.clients.retain(|c| !c.dead);
        self.stdin.flush();
    }

    /// The container exited: no new clients, no more stdin.
    fn stop(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(self.address.path());
        }
        self.stdin = Stdin::new(None, false);
        self.console = None;
    }

    /// Lets clients take what is queued for them until `deadline`, then closes them:
    /// they read EOF.
    fn close_clients(&mut self, deadline: Instant) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.clients.len());
        loop {
            // Done: everything written, or failed.
            self.clients.retain_mut(|c| {
                let done = c.dead || c.queued() == 0;
                if done {
                    c.discard_input();
                }
                !done
            });
            if self.clients.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            fds.clear();
            fds.extend(self.clients.iter().map(|c| libc::pollfd {
                fd: c.sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            }));
            let ms = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
            match sys::poll(&mut fds, ms) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            for (c, pfd) in self.clients.iter_mut().zip(&fds) {
                if pfd.revents & libc::POLLOUT != 0 {
                    c.flush();
                } else if pfd.revents != 0 {
                    c.dead = true;
                }
            }
        }
        // Out of time: the rest is lost for these.
        for c in self.clients.iter_mut() {
            c.discard_input();
        }
        self.clients.clear();
    }
}

/// One attached client.
struct Client {
    sock: UnixStream,
    /// Output frames; `out[sent..]` is still to be written.
    out: Vec<u8>,
    sent: usize,
    input: InputDecoder,
    /// No EOF from the client yet.
    reading: bool,
    /// It hung up while it could not be read; polled again once it can.
    hung_up: bool,
    /// It sent stdin: with stdin_once, the end of its socket ends the container's stdin.
    sent_stdin: bool,
    /// Failed or fell too far behind; removed after this wakeup.
    dead: bool,
}

impl Client {
    fn new(sock: UnixStream) -> Self {
        Self {
            sock,
            out: Vec::new(),
            sent: 0,
            input: InputDecoder::new(),
            reading: true,
            hung_up: false,
            sent_stdin: false,
            dead: false,
        }
    }

    fn queued(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Queues one frame, or marks the client dead if that would exceed its buffer.
    fn queue(&mut self, header: &[u8], data: &[u8]) {
        let add = header.len() + data.len();
        if self.queued() + add > monitor::ATTACH_CLIENT_BUFFER {
            self.dead = true;
            return;
        }
        if self.sent > 0 && self.out.len() + add > self.out.capacity() {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        self.out.extend_from_slice(header);
        self.out.extend_from_slice(data);
    }

    /// Reads and drops what the client sent and was not read. Closing a unix socket
    /// with unread input makes the peer's read fail with ECONNRESET; without it, the
    /// peer reads everything sent to it and then a clean EOF.
    fn discard_input(&mut self) {
        let mut scrap = [0u8; 4096];
        for _ in 0..64 {
            match (&self.sock).read(&mut scrap) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return,
            }
        }
    }

    /// Writes queued output until the socket is full.
    fn flush(&mut self) {
        while self.sent < self.out.len() {
            match (&self.sock).write(&self.out[self.sent..]) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // EPIPE, ECONNRESET: the client is gone.
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.sent = 0;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
    }
}

/// The container's stdin as clients feed it.
struct Stdin {
    /// The pipe's writing end or the pty master; `None` without `--stdin` or once
    /// closed.
    fd: Option<File>,
    /// Bytes not yet written; `pending[sent..]` is left.
    pending: Vec<u8>,
    sent: usize,
    /// Still takes input (not ended by stdin_once, not failed).
    open: bool,
    /// Close `fd` once `pending` is written.
    close: bool,
    tty: bool,
}

impl Stdin {
    fn new(fd: Option<File>, tty: bool) -> Self {
        Self {
            open: fd.is_some(),
            fd,
            pending: Vec::new(),
            sent: 0,
            close: false,
            tty,
        }
    }

    /// How many more bytes clients may send now: unlimited when input is discarded.
    fn room(&self) -> usize {
        if self.open {
            STDIN_BUFFER.saturating_sub(self.pending.len() - self.sent)
        } else {
            usize::MAX
        }
    }

    /// The descriptor to wait on while bytes are pending.
    fn waiting(&self) -> Option<&File> {
        self.fd.as_ref().filter(|_| self.sent < self.pending.len())
    }

    fn push(&mut self, data: &[u8]) {
        if self.open {
            self.pending.extend_from_slice(data);
        }
    }

    /// Ends the container's stdin after what is pending: a pipe is closed, a terminal
    /// gets its EOF character (closing the pty master would hang it up).
    fn end(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        match (&self.fd, self.tty) {
            (Some(pty), true) => {
                // VEOF is ^D unless the container changed it.
                let eof = nix::sys::termios::tcgetattr(pty.as_fd()).map_or(4, |t| {
                    t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize]
                });
                self.pending.push(eof);
            }
            _ => self.close = true,
        }
        self.flush();
    }

    /// Writes what is pending until the pipe or terminal is full.
    fn flush(&mut self) {
        let Some(fd) = self.fd.as_ref() else {
            return;
        };
        let mut w = fd;
        while self.sent < self.pending.len() {
            match w.write(&self.pending[self.sent..]) {
                Ok(n) if n > 0 => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // EPIPE: nobody reads the container's stdin any more.
                _ => {
                    self.fd = None;
                    self.open = false;
                    self.pending = Vec::new();
                    self.sent = 0;
                    return;
                }
            }
        }
        self.sent = 0;
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        if self.close {
            self.fd = None;
        }
    }
}

/// Reaps every exited child; returns the exit of `init` if it was among them.
fn reap(init: Pid) -> Option<(ExitRecord, Instant)> {
    let mut found = None;
    loop {
        match sys::reap_any() {
            Ok(Some((pid, status))) => {
                if pid == init.as_raw() {
                    let (exit_code, signal) = if libc::WIFSIGNALED(status) {
                        let sig = libc::WTERMSIG(status);
                        (128 + sig, Some(sig))
                    } else {
                        (libc::WEXITSTATUS(status), None)
                    };
                    found = Some((
                        ExitRecord {
                            exit_code,
                            finished_at_ns: now_ns(),
                            signal,
                        },
                        Instant::now(),
                    ));
                }
            }
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // ECHILD: nothing left to reap
        }
    }
    found
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Writes the exit record: temp file, fsync, rename, fsync of the directory.
fn write_exit_file(path: &Path, rec: &ExitRecord) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let json = serde_json::to_vec(rec).map_err(io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The descriptor sync messages go to.
struct SyncPipe {
    fd: Option<File>,
}

impl SyncPipe {
    fn take(fd: i32) -> io::Result<Self> {
        Ok(Self {
            fd: Some(File::from(sys::take_fd(fd)?)),
        })
    }

    /// One JSON line; a caller that went away is not our problem.
    fn send(&mut self, msg: &SyncMessage) {
        if let Some(f) = self.fd.as_mut()
            && let Ok(mut line) = serde_json::to_vec(msg)
        {
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
    }

    /// Closes the sync fd. Call after [`detach_stdio`]: a sync fd among 0–2 has then
    /// already been replaced, and that slot must stay open.
    fn close(&mut self) {
        if let Some(f) = self.fd.take()
            && f.as_raw_fd() <= 2
        {
            let _ = std::os::fd::IntoRawFd::into_raw_fd(f);
        }
    }
}

/// The few calls std and our nix features do not wrap. Every `unsafe` of the monitor
/// is here.
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

    pub enum Forked {
        Parent,
        Child,
    }

    /// `fork(2)`. Called first thing in `main`, while the process has one thread.
    pub fn fork() -> io::Result<Forked> {
        // SAFETY: the process is single-threaded here (nothing has spawned a thread
        // yet), so the child may run arbitrary code after fork.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { .. }) => Ok(Forked::Parent),
            Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Closes every descriptor above 2 except `keep`. Run first thing after fork, when
    /// the program itself has opened nothing.
    pub fn close_inherited(keep: RawFd) {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        let fds: Vec<RawFd> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for fd in fds.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
            // SAFETY: the program owns no descriptor above 2 yet (the directory listing
            // is closed again; closing its number a second time fails harmlessly).
            unsafe { libc::close(fd) };
        }
    }

    /// Takes ownership of descriptor `fd` handed to us on the command line, after
    /// checking it is open; marks it close-on-exec so the runtime does not inherit it.
    pub fn take_fd(fd: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above, and F_SETFD changes only the descriptor flags.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is open (checked above) and was given to this program
        // to own; nothing else in the program refers to it by number.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(())
    }

    /// `poll(2)` over `fds`; `timeout_ms` < 0 waits forever.
    pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: the pointer and length describe a live, exclusively borrowed slice.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// `ioctl(TIOCSWINSZ)`: sets the size of the terminal whose pty master is `pty`.
    pub fn set_window_size(pty: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which points to a
        // live local of that type.
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `waitpid(-1, WNOHANG)`: one exited child as (pid, raw status), `None` if
    /// children remain but none has exited. Raw, so a death by any signal
    /// (real-time ones included) is reported.
    pub fn reap_any() -> io::Result<Option<(i32, i32)>> {
        let mut status = 0;
        // SAFETY: `status` is a valid place for the kernel to write the status.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => Ok(None),
            p if p > 0 => Ok(Some((p, status))),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Receives one descriptor passed with SCM_RIGHTS (the runtime's console socket
    /// protocol: the pty master, with its name as the payload).
    pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let mut name = [0u8; 512];
        let mut iov = libc::iovec {
            iov_base: name.as_mut_ptr().cast(),
            iov_len: name.len(),
        };
        // Room for a few descriptors, aligned for cmsghdr.
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = loop {
            // SAFETY: msg points to the live iovec and control buffers above, whose
            // sizes it states.
            let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut received: Option<OwnedFd> = None;
        // SAFETY: msg was filled by recvmsg; the CMSG_* helpers walk the control buffer
        // within msg_controllen, and every SCM_RIGHTS payload is a set of new
        // descriptors now owned by this process.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                    let count = len / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        let fd = std::ptr::read_unaligned(
                            data.add(i * std::mem::size_of::<RawFd>()).cast::<RawFd>(),
                        );
                        let owned = OwnedFd::from_raw_fd(fd);
                        // Keep the first; extra descriptors are closed on drop.
                        if received.is_none() {
                            received = Some(owned);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        match received {
            Some(fd) => Ok(fd),
            None if n == 0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "console socket closed before a descriptor was sent",
            )),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "console socket message carried no descriptor",
            )),
        }
    }
}
