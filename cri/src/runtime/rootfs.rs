//! Container root filesystems: an overlay of the image's unpacked layers (read-only
//! lower directories, shared between containers) and a per-container upper directory.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting overlay on {target}: {source}")]
    Mount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unmounting {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("overlay options for {target} are {len} bytes, more than the kernel's {max}")]
    TooManyLayers {
        target: PathBuf,
        len: usize,
        max: usize,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kernel takes mount options up to one page.
const MAX_OPTIONS: usize = 4096;

/// Paths of one container's root filesystem, all inside `dir`.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// Where the overlay is mounted (the bundle's root).
    pub target: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    empty: PathBuf,
}

impl Rootfs {
    pub fn new(dir: &Path) -> Self {
        Self {
            target: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            empty: dir.join("empty"),
        }
    }

    /// Mounts the overlay of `layers` (base first, as in the image) under a writable
    /// upper directory. Mounting again over a mounted target is a no-op.
    pub fn mount(&self, layers: &[PathBuf]) -> Result<()> {
        if is_mountpoint(&self.target) {
            return Ok(());
        }
        for dir in [&self.target, &self.upper, &self.work] {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        // overlayfs lists the top layer first; an image with no layers gets one empty dir.
        let mut lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|p| escape(&p.to_string_lossy()))
            .collect();
        if lower.is_empty() {
            std::fs::create_dir_all(&self.empty).map_err(io("creating", &self.empty))?;
            lower.push(escape(&self.empty.to_string_lossy()));
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            escape(&self.upper.to_string_lossy()),
            escape(&self.work.to_string_lossy())
        );
        if options.len() >= MAX_OPTIONS {
            return Err(Error::TooManyLayers {
                target: self.target.clone(),
                len: options.len(),
                max: MAX_OPTIONS,
            });
        }
        tracing::debug!(target = %self.target.display(), layers = layers.len(), "mount overlay");
        nix::mount::mount(
            Some("overlay"),
            &self.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|source| Error::Mount {
            target: self.target.clone(),
            source,
        })
    }

    /// Unmounts the overlay (lazily, so a process still holding it cannot block
    /// removal). Not mounted is fine.
    pub fn unmount(&self) -> Result<()> {
        unmount(&self.target)
    }
}

/// Unmounts `target` if it is a mount point.
pub fn unmount(target: &Path) -> Result<()> {
    while is_mountpoint(target) {
        tracing::debug!(target = %target.display(), "unmount");
        nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|source| Error::Unmount {
            target: target.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Unmounts every mount at or below `dir`, deepest first (what a half-created
/// container left: its rootfs, its image volumes).
pub fn unmount_under(dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("reading", Path::new("/proc/self/mountinfo")))?;
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        unmount(&p)?;
    }
    Ok(())
}

/// Mounts a tmpfs (the pod's /dev/shm) unless one is there already.
pub fn mount_tmpfs(target: &Path, size: Option<u64>) -> Result<()> {
    if is_mountpoint(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(io("creating", target))?;
    let options = match size {
        Some(s) => format!("mode=1777,size={s}"),
        None => "mode=1777".to_string(),
    };
    nix::mount::mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|source| Error::Mount {
        target: target.to_path_buf(),
        source,
    })
}

/// Whether `path` is the root of a mount, bind mounts of the same filesystem included:
/// `statx` says so (Linux 5.8+); older kernels, `/proc/self/mountinfo` lists it (which
/// costs a read of every mount on the host).
pub fn is_mountpoint(path: &Path) -> bool {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    match statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => false,
        _ => listed_in_mountinfo(path),
    }
}

fn listed_in_mountinfo(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == wanted)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// overlayfs separates options with `,` and lower dirs with `:`; escape both.
pub(super) fn escape(path: &str) -> String {
    path.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape("/a:b,c"), "/a\\:b\\,c");
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    /// Root only: a real overlay of two layers, written through and unmounted.
    #[test]
    fn overlay_of_layers() -> Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return Ok(());
        }
        let tmp = tempfile::tempdir().map_err(io("tempdir", Path::new("/tmp")))?;
        let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
        for (dir, file, text) in [(&l1, "a", "base"), (&l2, "a", "top"), (&l1, "b", "b")] {
            std::fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
            std::fs::write(dir.join(file), text).map_err(io("write", dir))?;
        }
        let rootfs = Rootfs::new(&tmp.path().join("c"));
        rootfs.mount(&[l1.clone(), l2.clone()])?;
        rootfs.mount(&[l1.clone(), l2.clone()])?;
        let read = |f: &str| std::fs::read_to_string(rootfs.target.join(f)).unwrap_or_default();
        assert_eq!(read("a"), "top", "the last layer wins");
        assert_eq!(read("b"), "b");
        std::fs::write(rootfs.target.join("new"), "x").map_err(io("write", &rootfs.target))?;
        assert!(!l2.join("new").exists(), "writes go to the upper dir");
        rootfs.unmount()?;
        assert!(!is_mountpoint(&rootfs.target));
        rootfs.unmount()?;
        Ok(())
    }

    /// Root only: statx and mountinfo agree on a tmpfs, a bind mount within one
    /// filesystem, a plain directory, a file and a missing path.
    #[test]
    fn mount_points_by_statx_and_by_mountinfo() -> Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return Ok(());
        }
        let tmp = tempfile::tempdir().map_err(io("tempdir", Path::new("/tmp")))?;
        let (shm, bound, plain) = (
            tmp.path().join("shm"),
            tmp.path().join("bound"),
            tmp.path().join("plain"),
        );
        mount_tmpfs(&shm, Some(1 << 20))?;
        for d in [&bound, &plain] {
            std::fs::create_dir_all(d).map_err(io("mkdir", d))?;
        }
        std::fs::write(plain.join("f"), "x").map_err(io("write", &plain))?;
        nix::mount::mount(
            Some(&bound),
            &bound,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| Error::Mount {
            target: bound.clone(),
            source,
        })?;
        for (path, mounted) in [
            (&shm, true),
            (&bound, true),
            (&plain, false),
            (&plain.join("f"), false),
            (&tmp.path().join("missing"), false),
        ] {
            assert_eq!(is_mountpoint(path), mounted, "{}", path.display());
            assert_eq!(listed_in_mountinfo(path), mounted, "{}", path.display());
        }
        unmount(&shm)?;
        unmount(&bound)?;
        assert!(!is_mountpoint(&shm) && !is_mountpoint(&bound));
        Ok(())
    }
}
