//! Pinned network namespaces, the way `ip netns add` makes them.
//!
//! A pod's network namespace must outlive every process in it (the infra process may be
//! restarted, CNI plugins enter it by path), so it is pinned by bind-mounting its nsfs
//! inode onto a file. The namespace is created by a short-lived thread that unshares only
//! its own network namespace: no other thread of the server ever changes namespace.
//!
//! No `unsafe` here: `unshare(2)`, `mount(2)`, `umount2(2)` and `statfs(2)` go through nix.

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
    #[error("the thread creating the network namespace for {path} panicked")]
    ThreadPanicked { path: PathBuf },
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

/// Creates a new network namespace and pins it on `path` (parents and the file are
/// created). Fails with [`Error::AlreadyExists`] if a namespace is already pinned there; a
/// stale, unmounted file left by a crash is reused.
pub fn create(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating netns dir", parent))?;
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
        .map_err(io_err("creating netns pin file", path))?;

    let target = path.to_path_buf();
    let pinned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || pin_new_netns(&target))
        .map_err(io_err("spawning netns thread for", path))?
        .join()
        .map_err(|_| Error::ThreadPanicked {
            path: path.to_path_buf(),
        })
        .and_then(|r| r);
    if let Err(err) = pinned {
        // Leave no empty file behind that looks like a pin.
        let _ = fs::remove_file(path);
        return Err(err);
    }
    tracing::debug!(path = %path.display(), "pinned new network namespace");
    Ok(())
}

/// Runs on a dedicated thread that exits right after: its network namespace is the new
/// one, and the pin keeps it alive once the thread is gone.
fn pin_new_netns(target: &Path) -> Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(sys_err("unsharing network namespace for", target))?;
    let tid = nix::unistd::gettid();
    let own = PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
    nix::mount::mount(
        Some(&own),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys_err("bind-mounting network namespace onto", target))
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
