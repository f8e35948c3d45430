//! `cri-monitor` with the real runc, as root: logs, exit codes, log reopening, create
//! failures, detaching, attaching. Each test builds a busybox rootfs and its own OCI
//! bundles.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cri::runtime::logfmt::{self, Stream};
use cri::runtime::monitor::{self, AttachReader, Error, ExitRecord, MonitorSpec, Started};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/bin/busybox";
const MONITOR: &str = env!("CARGO_BIN_EXE_cri-monitor");

/// The monitor under test: this build's, or `$CRI_MONITOR` (to measure the shipped,
/// release and statically linked, binary).
fn monitor_bin() -> PathBuf {
    std::env::var_os("CRI_MONITOR").map_or_else(|| PathBuf::from(MONITOR), PathBuf::from)
}
/// Upper bound for things that take milliseconds; only hit when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = Path::new(RUNC).exists() && Path::new(BUSYBOX).exists();
    if !(root && tools) {
        eprintln!("skipped: needs root, {RUNC} and {BUSYBOX}");
    }
    root && tools
}

/// A temp dir with a shared read-only busybox rootfs and a runc state dir.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> TestResult<Self> {
        let dir = tempfile::tempdir()?;
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "x"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
        for applet in [
            "sh", "echo", "sleep", "cat", "timeout", "test", "[", "stty", "yes", "head",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        Ok(Self { dir })
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// Writes a bundle for `args` and returns the container with its monitor spec.
    fn container(&self, name: &str, args: &[&str], opts: Opts) -> TestResult<Container> {
        let id = format!("mon-{}-{name}", std::process::id());
        let mut bundle = self.dir.path().join(name);
        if opts.long_bundle {
            // Too long for a unix socket address once `/attach.sock` is added.
            bundle = bundle.join("b".repeat(110));
        }
        std::fs::create_dir_all(&bundle)?;
        let root = opts.rootfs.unwrap_or_else(|| self.rootfs());
        let mut mounts = vec![
            serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=1024k"]}),
            serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"]}),
        ];
        if opts.tty {
            mounts.push(
                serde_json::json!({"destination": "/dev/pts", "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            );
        }
        if let Some(shared) = &opts.shared_dir {
            mounts.push(serde_json::json!({"destination": "/x", "type": "bind",
                "source": shared, "options": ["rbind", "rw"]}));
        }
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": opts.tty,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin"],
                "cwd": "/"
            },
            "root": {"path": root, "readonly": true},
            "hostname": name,
            "mounts": mounts,
            "linux": {
                "cgroupsPath": format!("/nodelet-test/{id}"),
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
            }
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        let spec = MonitorSpec {
            id: id.clone(),
            bundle: bundle.clone(),
            runtime: RUNC.into(),
            runtime_root: self.runtime_root(),
            exit_file: bundle.join("exit"),
            log_path: Some(bundle.join("container.log")),
            stdin: opts.stdin,
            stdin_once: opts.stdin_once,
            tty: opts.tty,
        };
        Ok(Container {
            id,
            root: self.runtime_root(),
            spec,
        })
    }
}

#[derive(Default)]
struct Opts {
    tty: bool,
    stdin: bool,
    stdin_once: bool,
    long_bundle: bool,
    rootfs: Option<PathBuf>,
    shared_dir: Option<PathBuf>,
}

/// A container id under a runc root; deleted (forcibly) when dropped.
struct Container {
    id: String,
    root: PathBuf,
    spec: MonitorSpec,
}

impl Container {
    fn runc(&self, args: &[&str]) -> TestResult<std::process::Output> {
        Ok(Command::new(RUNC)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()?)
    }

    fn log(&self) -> PathBuf {
        self.spec.log_path.clone().unwrap_or_default()
    }

    /// Waits for the monitor to exit and returns the exit record it left.
    async fn finished(&self, started: &Started) -> TestResult<ExitRecord> {
        tokio::time::timeout(PATIENCE, monitor::wait_exit(started.monitor_pid)).await??;
        assert!(!monitor::alive(started.monitor_pid));
        monitor::read_exit(&self.spec.exit_file)?.ok_or_else(|| "no exit file".into())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
    }
}

/// The log's records as (stream, full, content).
fn records(path: &Path) -> TestResult<Vec<(Stream, bool, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    text.split_terminator('\n')
        .map(|l| {
            logfmt::parse_line(l)
                .map(|(_, s, f, c)| (s, f, c.to_string()))
                .ok_or_else(|| format!("not a CRI log line: {l:?}").into())
        })
        .collect()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> TestResult<bool>) -> TestResult {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond()? {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn status_field(pid: i32, field: &str) -> TestResult<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status").into())
}

fn pss_kb(pid: i32) -> TestResult<String> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default())
}

#[tokio::test]
async fn logs_both_streams_and_records_exit_code() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let c = lab.container(
        "exit3",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; printf 'no newline'; exit 3",
        ],
        Opts::default(),
    )?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    assert!(started.container_pid > 0);

    // Detached: not our child, still there after the spawning call returned.
    let ppid: i32 = status_field(started.monitor_pid, "PPid")?.parse()?;
    assert_ne!(ppid, std::process::id() as i32);
    assert!(monitor::alive(started.monitor_pid));
    println!(
        "monitor {} RSS: VmRSS {}, RssAnon {}, RssFile {}, Pss {}",
        started.monitor_pid,
        status_field(started.monitor_pid, "VmRSS")?,
        status_field(started.monitor_pid, "RssAnon")?,
        status_field(started.monitor_pid, "RssFile")?,
        pss_kb(started.monitor_pid)?,
    );

    let exit = c.finished(&started).await?;
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.signal, None);
    assert!(exit.finished_at_ns > 0);

    let recs = records(&c.log())?;
    assert!(
        recs.contains(&(Stream::Stdout, true, "out".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&(Stream::Stderr, true, "err".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&(Stream::Stdout, false, "no newline".into())),
        "{recs:?}"
    );
    Ok(())
}

#[tokio::test]
async fn killed_container_records_137() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let c = lab.container("killed", &["sleep", "1000"], Opts::default())?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let out = c.runc(&["kill", &c.id, "KILL"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = c.finished(&started).await?;
    assert_eq!(exit.exit_code, 137);
    assert_eq!(exit.signal, Some(9));
    // The monitor leaves the stopped container for the caller to delete.
    let state = c.runc(&["state", &c.id])?;
    assert!(state.status.success());
    Ok(())
}

#[tokio::test]
async fn create_failure_is_reported_and_leaves_nothing() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let missing = lab.dir.path().join("no-such-rootfs");
    let c = lab.container(
        "norootfs",
        &["sh", "-c", "true"],
        Opts {
            rootfs: Some(missing),
            ..Opts::default()
        },
    )?;
    match monitor::spawn(&monitor_bin(), &c.spec).await {
        Err(Error::Create { id, message }) => {
            assert_eq!(id, c.id);
            assert!(message.contains("rootfs"), "unhelpful message: {message}");
            println!("create failure message: {message}");
        }
        other => return Err(format!("expected a create error, got {other:?}").into()),
    }
    assert!(!c.runc(&["state", &c.id])?.status.success());
    assert_eq!(monitor::read_exit(&c.spec.exit_file)?, None);
    Ok(())
}

#[tokio::test]
async fn reopen_moves_new_output_to_a_fresh_file() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let shared = lab.dir.path().join("shared");
    std::fs::create_dir(&shared)?;
    let c = lab.container(
        "reopen",
        &[
            "sh",
            "-c",
            "echo before; while [ ! -e /x/go ]; do sleep 0.05; done; echo after",
        ],
        Opts {
            shared_dir: Some(shared.clone()),
            ..Opts::default()
        },
    )?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let log = c.log();
    eventually("the first line", || {
        Ok(records(&log)?.iter().any(|r| r.2 == "before"))
    })
    .await?;

    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated)?;
    monitor::reopen_log(started.monitor_pid)?;
    eventually("the reopened log", || Ok(log.exists())).await?;
    std::fs::write(shared.join("go"), b"")?;

    let exit = c.finished(&started).await?;
    assert_eq!(exit.exit_code, 0);
    assert_eq!(
        records(&rotated)?,
        vec![(Stream::Stdout, true, "before".to_string())]
    );
    assert_eq!(
        records(&log)?,
        vec![(Stream::Stdout, true, "after".to_string())]
    );
    Ok(())
}

#[tokio::test]
async fn tty_output_is_logged_as_stdout() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let c = lab.container(
        "tty",
        &["sh", "-c", "echo on-tty; echo err-on-tty >&2; exit 5"],
        Opts {
            tty: true,
            ..Opts::default()
        },
    )?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let exit = c.finished(&started).await?;
    assert_eq!(exit.exit_code, 5);
    let recs = records(&c.log())?;
    // One terminal for both streams; it turns \n into \r\n and the \r is content.
    assert_eq!(
        recs,
        vec![
            (Stream::Stdout, true, "on-tty\r".to_string()),
            (Stream::Stdout, true, "err-on-tty\r".to_string()),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn stdin_stays_open_without_a_client() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    // `cat` ends at once on EOF, and is killed by `timeout` (143) on an open stdin.
    let script = "timeout 1 cat; echo rc-$?";
    let with = lab.container(
        "stdin",
        &["sh", "-c", script],
        Opts {
            stdin: true,
            ..Opts::default()
        },
    )?;
    let without = lab.container("nostdin", &["sh", "-c", script], Opts::default())?;
    let a = monitor::spawn(&monitor_bin(), &with.spec).await?;
    let b = monitor::spawn(&monitor_bin(), &without.spec).await?;
    with.finished(&a).await?;
    without.finished(&b).await?;
    let line = |c: &Container| -> TestResult<String> {
        Ok(records(&c.log())?
            .into_iter()
            .filter(|r| r.0 == Stream::Stdout)
            .map(|r| r.2)
            .collect::<Vec<_>>()
            .join("|"))
    };
    assert_eq!(line(&with)?, "rc-143");
    assert_eq!(line(&without)?, "rc-0");
    Ok(())
}

#[tokio::test]
async fn failing_log_writes_do_not_block_the_container() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    // About 200 KiB of output, more than a pipe holds, into a log that refuses writes.
    let mut c = lab.container(
        "diskfull",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 2000 ]; do \
             echo line-$i-0123456789012345678901234567890123456789012345678901234567890123456789012345678; \
             i=$((i+1)); done; exit 7",
        ],
        Opts::default(),
    )?;
    c.spec.log_path = Some(PathBuf::from("/dev/full"));
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let exit = c.finished(&started).await?;
    assert_eq!(exit.exit_code, 7);
    Ok(())
}

/// Output an attached client collected, per stream.
#[derive(Default)]
struct Seen {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Seen {
    fn add(&mut self, (stream, data): (Stream, Bytes)) {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(&data),
            Stream::Stderr => self.stderr.extend_from_slice(&data),
        }
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Reads frames until `cond` holds; fails at EOF.
    async fn until(
        &mut self,
        r: &mut AttachReader,
        what: &str,
        cond: impl Fn(&Seen) -> bool,
    ) -> TestResult {
        tokio::time::timeout(PATIENCE, async {
            while !cond(self) {
                match r.next().await? {
                    Some(frame) => self.add(frame),
                    None => return Err(format!("EOF before {what}").into()),
                }
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await
        .map_err(|_| {
            format!(
                "timed out waiting for {what}; stdout so far: {} bytes, from {:?}",
                self.stdout.len(),
                String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(80)])
            )
        })?
    }

    /// Reads frames until EOF.
    async fn read_to_eof(&mut self, r: &mut AttachReader) -> TestResult {
        tokio::time::timeout(PATIENCE, async {
            while let Some(frame) = r.next().await? {
                self.add(frame);
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await
        .map_err(|_| "timed out waiting for EOF")?
    }
}

fn print_rss(what: &str, pid: i32) -> TestResult {
    println!(
        "monitor {pid} RSS {what}: VmRSS {}, RssAnon {}, Pss {}",
        status_field(pid, "VmRSS")?,
        status_field(pid, "RssAnon")?,
        pss_kb(pid)?,
    );
    Ok(())
}

#[tokio::test]
async fn attach_echoes_stdin_and_stdin_once_closes_it() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let c = lab.container(
        "cat",
        &["cat"],
        Opts {
            stdin: true,
            stdin_once: true,
            long_bundle: true,
            ..Opts::default()
        },
    )?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let sock = monitor::attach_socket_path(&c.spec.bundle);
    assert!(sock.as_os_str().len() > 108, "{}", sock.display());
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(&sock)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // `cat` writes nothing before it reads: the client misses nothing.
    let (mut r, mut w) = monitor::attach(&c.spec.bundle).await?.split();
    w.stdin(b"hello\n").await?;
    let mut seen = Seen::default();
    seen.until(&mut r, "the echo", |s| s.stdout.len() >= 6)
        .await?;
    assert_eq!(seen.stdout_text(), "hello\n");
    // The container is still running: its stdin is open.
    assert!(monitor::alive(started.container_pid));

    w.close_stdin().await?;
    seen.read_to_eof(&mut r).await?;
    assert_eq!(seen.stdout_text(), "hello\n");
    assert!(seen.stderr.is_empty());
    let exit = c.finished(&started).await?;
    assert_eq!(exit.exit_code, 0);
    assert_eq!(
        records(&c.log())?,
        vec![(Stream::Stdout, true, "hello".to_string())]
    );
    // Gone with the monitor.
    assert!(!sock.exists());
    assert!(matches!(
        monitor::attach(&c.spec.bundle).await,
        Err(Error::Attach { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn every_attached_client_sees_both_streams() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let c = lab.container(
        "two",
        &["sh", "-c", "read x; echo got-$x; echo err-$x >&2; exit 4"],
        Opts {
            stdin: true,
            ..Opts::default()
        },
    )?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let (mut r1, mut w1) = monitor::attach(&c.spec.bundle).await?.split();
    let (mut r2, w2) = monitor::attach(&c.spec.bundle).await?.split();
    // The second client has no stdin; without stdin_once its leaving changes nothing.
    drop(w2);
    print_rss("with two clients", started.monitor_pid)?;
    w1.stdin(b"1\n").await?;
    let (mut a, mut b) = (Seen::default(), Seen::default());
    a.read_to_eof(&mut r1).await?;
    b.read_to_eof(&mut r2).await?;
    for seen in [&a, &b] {
        assert_eq!(seen.stdout_text(), "got-1\n");
        assert_eq!(String::from_utf8_lossy(&seen.stderr), "err-1\n");
    }
    assert_eq!(c.finished(&started).await?.exit_code, 4);
    Ok(())
}

#[tokio::test]
async fn attach_resizes_the_terminal() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let c = lab.container(
        "ttyattach",
        &["sh"],
        Opts {
            tty: true,
            stdin: true,
            ..Opts::default()
        },
    )?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let (mut r, mut w) = monitor::attach(&c.spec.bundle).await?.split();
    let mut seen = Seen::default();
    for (width, height) in [(100u16, 40u16), (132, 25)] {
        w.resize(width, height).await?;
        w.stdin(b"stty size\n").await?;
        let want = format!("{height} {width}\r\n");
        seen.until(&mut r, &want, |s| s.stdout_text().contains(&want))
            .await?;
    }
    w.stdin(b"exit 7\n").await?;
    seen.read_to_eof(&mut r).await?;
    // A terminal has one output stream.
    assert!(seen.stderr.is_empty());
    assert_eq!(c.finished(&started).await?.exit_code, 7);
    Ok(())
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_the_log_goes_on() -> TestResult {
    if !can_run() {
        return Ok(());
    }
    const LINES: usize = 60_000;
    const LINE: &str = "0123456789012345678901234567890123456789012345678901234567890123456789";
    let lab = Lab::new()?;
    let shared = lab.dir.path().join("shared");
    std::fs::create_dir(&shared)?;
    // About 4 MiB at once, far more than a client buffer and a socket hold together,
    // then a pause with the container still running.
    let script = format!(
        "while [ ! -e /x/begin ]; do sleep 0.05; done; yes {LINE} | head -n {LINES}; \
         while [ ! -e /x/go ]; do sleep 0.05; done; echo done"
    );
    let c = lab.container(
        "stuck",
        &["sh", "-c", &script],
        Opts {
            shared_dir: Some(shared.clone()),
            ..Opts::default()
        },
    )?;
    let started = monitor::spawn(&monitor_bin(), &c.spec).await?;
    let stuck = monitor::attach(&c.spec.bundle).await?;
    std::fs::write(shared.join("begin"), b"")?;
    // The log takes everything while the client reads nothing.
    let log = c.log();
    eventually("all lines in the log", || {
        Ok(records(&log)?.iter().filter(|r| r.2 == LINE).count() == LINES)
    })
    .await?;
    print_rss("after 4 MiB past a stuck client", started.monitor_pid)?;

    // The client was dropped: it reads what its socket held, then the connection
    // ends (at a frame boundary or inside a frame), while the container still runs.
    let (mut stuck, _stuck_w) = stuck.split();
    let mut late = Seen::default();
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stuck.next().await {
                Ok(Some(frame)) => late.add(frame),
                Ok(None) => return "EOF".to_string(),
                Err(e) => return e.to_string(),
            }
        }
    })
    .await
    .map_err(|_| "the stuck client was not dropped")?;
    assert!(monitor::alive(started.container_pid));
    let total = (LINE.len() + 1) * LINES;
    assert!(late.stdout.len() < total, "{}", late.stdout.len());
    println!(
        "stuck client read {} of {total} bytes, then: {ended}",
        late.stdout.len()
    );

    // A client attached now is served as usual.
    // Connected before the container writes again, so it gets all of that.
    let (mut fresh, _fresh_w) = monitor::attach(&c.spec.bundle).await?.split();
    std::fs::write(shared.join("go"), b"")?;
    let mut seen = Seen::default();
    seen.read_to_eof(&mut fresh).await?;
    assert_eq!(seen.stdout_text(), "done\n");
    assert_eq!(c.finished(&started).await?.exit_code, 0);
    Ok(())
}

#[tokio::test]
async fn wait_exit_of_missing_process_is_immediate() -> TestResult {
    tokio::time::timeout(PATIENCE, monitor::wait_exit(i32::MAX)).await??;
    Ok(())
}
