//! Pinned namespaces, the way `ip netns add` pins a network namespace.
//!
//! A pod's network namespace must outlive every process in it (containers restart, CNI
//! plugins enter it by path), so it is pinned by bind-mounting its nsfs inode onto a file.
//! A pod that shares no PID namespace needs no infra process at all: its IPC and UTS
//! namespaces are pinned the same way (CRI-O's `pinns`), and containers join all three by
//! path. Namespaces are created by a short-lived thread that unshares only its own
//! namespaces: no other thread of the server ever changes namespace.
//!
//! The one `unsafe` is the `SIOCSIFFLAGS` ioctl that brings `lo` up, which nix does not
//! wrap; `unshare(2)`, `setns(2)`, `mount(2)`, `umount2(2)` and `statfs(2)` go through nix.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs;

/// Where iproute2 pins named namespaces; pins there must be visible to `ip netns`.
const IPROUTE2_NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        source: Errno,
    },
    #[error("a network namespace is already pinned at {path}")]
    AlreadyExists { path: PathBuf },
    #[error("the thread working in the namespace {path} panicked")]
    ThreadPanicked { path: PathBuf },
    #[error("setting hostname {name:?} in the pod's UTS namespace: {source}")]
    Hostname { name: String, source: Errno },
    #[error("setting sysctl {name}={value:?}: {source}")]
    Sysctl {
        name: String,
        value: String,
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

fn sys_err(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Sys { what, path, source }
}

/// Creates a new network namespace with `lo` up and pins it on `path` (parents and the
/// file are created). Fails with [`Error::AlreadyExists`] if a namespace is already pinned
/// there; a stale, unmounted file left by a crash is reused.
pub fn create(path: &Path) -> Result<()> {
    create_pod(&PodNamespaces {
        net: Some(path),
        ..Default::default()
    })
}

/// The namespaces of a pod that has no infra process, each pinned on its file.
#[derive(Debug, Default, Clone, Copy)]
pub struct PodNamespaces<'a> {
    /// A new network namespace, with `lo` up.
    pub net: Option<&'a Path>,
    /// A new IPC namespace.
    pub ipc: Option<&'a Path>,
    /// A new UTS namespace, named `hostname`.
    pub uts: Option<&'a Path>,
    pub hostname: &'a str,
}

/// Creates the namespaces `ns` names and pins each on its file, all or none: on failure
/// every pin made is removed again.
pub fn create_pod(ns: &PodNamespaces<'_>) -> Result<()> {
    let pins: Vec<(CloneFlags, &'static str, PathBuf)> = [
        (CloneFlags::CLONE_NEWNET, "net", ns.net),
        (CloneFlags::CLONE_NEWIPC, "ipc", ns.ipc),
        (CloneFlags::CLONE_NEWUTS, "uts", ns.uts),
    ]
    .into_iter()
    .filter_map(|(flag, kind, path)| Some((flag, kind, path?.to_path_buf())))
    .collect();
    let Some((_, _, first)) = pins.first().cloned() else {
        return Ok(());
    };
    for (_, _, path) in &pins {
        if let Err(e) = pin_file(path) {
            remove_all(&pins);
            return Err(e);
        }
    }
    let hostname = ns.uts.map(|_| ns.hostname.to_string());
    let job = pins.clone();
    let pinned = std::thread::Builder::new()
        .name("ns-create".into())
        .spawn(move || pin_new(&job, hostname.as_deref()))
        .map_err(io_err("spawning namespace thread for", &first))?
        .join()
        .map_err(|_| Error::ThreadPanicked { path: first })
        .and_then(|r| r);
    if let Err(err) = pinned {
        // Leave no empty file behind that looks like a pin.
        remove_all(&pins);
        return Err(err);
    }
    tracing::debug!(pins = ?pins.iter().map(|p| &p.2).collect::<Vec<_>>(), "pinned new namespaces");
    Ok(())
}

/// Creates the (empty) file a namespace is pinned on.
fn pin_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating namespace dir", parent))?;
        if parent == Path::new(IPROUTE2_NETNS_DIR) {
            make_shared(parent)?;
        }
    }
    if exists(path) {
        return Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("creating namespace pin file", path))?;
    Ok(())
}

fn remove_all(pins: &[(CloneFlags, &'static str, PathBuf)]) {
    for (_, _, path) in pins {
        if let Err(e) = remove(path) {
            tracing::warn!(path = %path.display(), err = %e, "removing a namespace pin");
        }
    }
}

/// Runs on a dedicated thread that exits right after: its namespaces are the new ones,
/// and the pins keep them alive once the thread is gone.
fn pin_new(pins: &[(CloneFlags, &'static str, PathBuf)], hostname: Option<&str>) -> Result<()> {
    let first = &pins[0].2;
    let flags = pins
        .iter()
        .fold(CloneFlags::empty(), |all, (flag, _, _)| all | *flag);
    nix::sched::unshare(flags).map_err(sys_err("unsharing namespaces for", first))?;
    let tid = nix::unistd::gettid();
    for (flag, kind, path) in pins {
        if *flag == CloneFlags::CLONE_NEWNET {
            loopback_up().map_err(sys_err("bringing lo up in the namespace for", path))?;
        }
        if *flag == CloneFlags::CLONE_NEWUTS
            && let Some(name) = hostname.filter(|h| !h.is_empty())
        {
            nix::unistd::sethostname(name).map_err(|source| Error::Hostname {
                name: name.to_string(),
                source,
            })?;
        }
        let own = PathBuf::from(format!("/proc/self/task/{tid}/ns/{kind}"));
        nix::mount::mount(
            Some(&own),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys_err("bind-mounting namespace onto", path))?;
    }
    Ok(())
}

/// Brings the loopback interface of the calling thread's network namespace up; the
/// kernel then gives it 127.0.0.1/8 and ::1, as the CNI `loopback` plugin would.
fn loopback_up() -> std::result::Result<(), Errno> {
    use std::os::fd::AsRawFd as _;

    /// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on 64-bit).
    #[repr(C)]
    struct IfreqFlags {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: both requests read and write one `struct ifreq`, which `req` is laid out
    // as (name, then the flags member of the union, padded to the union's size); the
    // socket outlives the calls.
    unsafe {
        Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.flags |= libc::IFF_UP as libc::c_short;
        Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
    }
    Ok(())
}

/// Writes namespaced sysctls (`net.*` in `net`, `kernel.shm*`, `kernel.msg*`,
/// `kernel.sem` and `fs.mqueue.*` in `ipc`) from a thread that joined those pinned
/// namespaces. Run after CNI ADD, so sysctls of the pod's interfaces find them.
pub fn apply_sysctls(
    net: Option<&Path>,
    ipc: Option<&Path>,
    sysctls: &[(String, String)],
) -> Result<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let net = net.map(Path::to_path_buf);
    let ipc = ipc.map(Path::to_path_buf);
    let sysctls = sysctls.to_vec();
    let where_ = net.clone().or_else(|| ipc.clone()).unwrap_or_default();
    std::thread::Builder::new()
        .name("ns-sysctl".into())
        .spawn(move || {
            for (path, flag) in [
                (&net, CloneFlags::CLONE_NEWNET),
                (&ipc, CloneFlags::CLONE_NEWIPC),
            ] {
                let Some(path) = path else { continue };
                let file = fs::File::open(path).map_err(io_err("opening namespace", path))?;
                nix::sched::setns(file, flag).map_err(sys_err("joining namespace", path))?;
            }
            for (name, value) in &sysctls {
                let file = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
                fs::write(&file, value.as_bytes()).map_err(|source| Error::Sysctl {
                    name: name.clone(),
                    value: value.clone(),
                    source,
                })?;
            }
            Ok(())
        })
        .map_err(io_err("spawning sysctl thread for", &where_))?
        .join()
        .map_err(|_| Error::ThreadPanicked { path: where_ })
        .and_then(|r| r)
}

/// Reads `/proc/net/<file>` as seen from inside the pinned network namespace `netns`.
pub fn read_proc_net(netns: &Path, file: &str) -> Result<String> {
    let netns = netns.to_path_buf();
    let file = file.to_string();
    let at = netns.clone();
    std::thread::Builder::new()
        .name("ns-read".into())
        .spawn(move || {
            let ns = fs::File::open(&netns).map_err(io_err("opening namespace", &netns))?;
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
                .map_err(sys_err("joining namespace", &netns))?;
            let path = PathBuf::from("/proc/thread-self/net").join(&file);
            fs::read_to_string(&path).map_err(io_err("reading", &path))
        })
        .map_err(io_err("spawning netns reader for", &at))?
        .join()
        .map_err(|_| Error::ThreadPanicked { path: at })
        .and_then(|r| r)
}

/// Makes `dir` a shared mount point (bind-mounting it onto itself first if it is not a
/// mount point), as iproute2 does for /run/netns, so pins made under it propagate to
/// mount namespaces that were copied from ours.
fn make_shared(dir: &Path) -> Result<()> {
    // Serialize so two creates never both stack a self bind mount on the directory.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // EINVAL: `dir` is not a mount point yet.
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys_err("bind-mounting onto itself", dir))?;
            shared().map_err(sys_err("making shared mount", dir))
        }
        Err(errno) => Err(sys_err("making shared mount", dir)(errno)),
    }
}

/// Unpins (lazy unmount) and deletes `path`. Idempotent: a missing path or a file that is
/// not mounted is fine.
pub fn remove(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point; ENOENT: already gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(sys_err("unmounting network namespace", path)(errno)),
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err("removing netns pin file", path)(err)),
    }
    tracing::debug!(path = %path.display(), "removed network namespace");
    Ok(())
}

/// Whether a network namespace is pinned at `path` (the file is an nsfs mount).
pub fn exists(path: &Path) -> bool {
    statfs::statfs(path).is_ok_and(|st| st.filesystem_type() == statfs::NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn create_exists_remove() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/ns");
        assert!(!exists(&path));
        create(&path).expect("create");
        assert!(exists(&path));
        // A different namespace from ours.
        let ours = fs::metadata("/proc/self/ns/net").expect("stat own netns");
        let pinned = fs::metadata(&path).expect("stat pin");
        use std::os::unix::fs::MetadataExt as _;
        assert_ne!(ours.ino(), pinned.ino());
        assert!(matches!(create(&path), Err(Error::AlreadyExists { .. })));

        remove(&path).expect("remove");
        assert!(!exists(&path));
        assert!(!path.exists());
        remove(&path).expect("second remove");
    }

    #[test]
    fn pod_namespaces_are_pinned_with_lo_up_hostname_and_sysctls() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (net, ipc, uts) = (
            dir.path().join("net"),
            dir.path().join("ns/ipc"),
            dir.path().join("ns/uts"),
        );
        create_pod(&PodNamespaces {
            net: Some(&net),
            ipc: Some(&ipc),
            uts: Some(&uts),
            hostname: "pinned-pod",
        })
        .expect("create");
        for (pin, own) in [(&net, "net"), (&ipc, "ipc"), (&uts, "uts")] {
            assert!(exists(pin), "{own} pinned");
            let ours = fs::metadata(format!("/proc/self/ns/{own}")).expect("stat own ns");
            assert_ne!(
                fs::metadata(pin).expect("stat pin").ino(),
                ours.ino(),
                "{own}"
            );
        }
        // Read back from inside: the hostname, `lo` up, and sysctls of both namespaces.
        apply_sysctls(
            Some(&net),
            Some(&ipc),
            &[
                ("kernel.shmmni".into(), "1234".into()),
                ("net.ipv4.ip_unprivileged_port_start".into(), "99".into()),
            ],
        )
        .expect("sysctls");
        let seen = {
            let (net, ipc, uts) = (net.clone(), ipc.clone(), uts.clone());
            std::thread::spawn(move || {
                for (p, f) in [
                    (&net, CloneFlags::CLONE_NEWNET),
                    (&ipc, CloneFlags::CLONE_NEWIPC),
                    (&uts, CloneFlags::CLONE_NEWUTS),
                ] {
                    nix::sched::setns(fs::File::open(p).expect("open pin"), f).expect("setns");
                }
                let read = |p: &str| fs::read_to_string(p).expect("read").trim().to_string();
                (
                    read("/proc/sys/kernel/hostname"),
                    read("/proc/sys/kernel/shmmni"),
                    read("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
                    read("/sys/class/net/lo/flags"),
                )
            })
            .join()
            .expect("reader thread")
        };
        assert_eq!(seen.0, "pinned-pod");
        assert_eq!(seen.1, "1234");
        assert_eq!(seen.2, "99");
        let flags = u32::from_str_radix(seen.3.trim_start_matches("0x"), 16).expect("flags");
        assert_ne!(flags & libc::IFF_UP as u32, 0, "lo is up: {}", seen.3);
        // The host's own values are untouched.
        assert_ne!(
            fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                .expect("host sysctl")
                .trim(),
            "99"
        );
        let dev = read_proc_net(&net, "dev").expect("net/dev");
        assert!(dev.contains("lo:"), "{dev}");
        assert_eq!(dev.lines().count(), 3, "only lo in a new namespace: {dev}");

        // A bad sysctl names itself; a second create on the same pins fails whole.
        let err = apply_sysctls(Some(&net), None, &[("net.no.such".into(), "1".into())])
            .expect_err("unknown sysctl");
        assert!(err.to_string().contains("net.no.such"), "{err}");
        assert!(matches!(
            create_pod(&PodNamespaces {
                ipc: Some(&dir.path().join("other-ipc")),
                uts: Some(&uts),
                ..Default::default()
            }),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(!dir.path().join("other-ipc").exists(), "no pin left behind");

        for pin in [&net, &ipc, &uts] {
            remove(pin).expect("remove");
            assert!(!exists(pin));
        }
    }

    #[test]
    fn a_hostname_the_kernel_refuses_leaves_no_pins() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (ipc, uts) = (dir.path().join("ipc"), dir.path().join("uts"));
        let long = "h".repeat(65);
        let err = create_pod(&PodNamespaces {
            ipc: Some(&ipc),
            uts: Some(&uts),
            hostname: &long,
            ..Default::default()
        })
        .expect_err("a 65-byte hostname");
        assert!(matches!(err, Error::Hostname { .. }), "{err:?}");
        assert!(!exists(&ipc) && !ipc.exists() && !uts.exists());
    }

    #[test]
    fn remove_plain_file_and_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain");
        fs::write(&file, b"").expect("write");
        assert!(!exists(&file));
        remove(&file).expect("remove plain file");
        assert!(!file.exists());
        remove(&dir.path().join("missing")).expect("remove missing");
    }

    #[test]
    fn stale_pin_file_is_reused() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ns");
        fs::write(&path, b"").expect("write stale file");
        create(&path).expect("create over stale file");
        assert!(exists(&path));
        remove(&path).expect("remove");
    }
}
