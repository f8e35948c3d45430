//! Applies one OCI image layer (an uncompressed tar stream) into an empty directory that
//! becomes an overlayfs lower directory, the way containerd's overlay snapshotter stores
//! layers.
//!
//! The tar stream is untrusted. The `tar` crate only parses it; every write here goes
//! through a directory file descriptor that was reached from the layer root one component
//! at a time with `O_NOFOLLOW`, and names the final component relative to it, so no
//! write can follow a symlink, whatever the layer contains:
//! - entry paths are normalized (`./` and empty components dropped); absolute paths and
//!   `..` components are rejected, never rewritten;
//! - a parent component that is a symlink is rejected, a missing one is created as a
//!   root-owned 0755 directory;
//! - hardlink targets follow the same rules, must exist and must not be directories;
//! - relative symlink targets must not climb above the layer root counted from the
//!   symlink's own directory; absolute targets are kept (they resolve inside the
//!   container's root at run time).
//!
//! Whiteouts become what overlayfs understands: `.wh.<name>` a 0:0 character device
//! `<name>`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory.
//!
//! Decompression bombs are the caller's concern (it bounds the bytes it feeds us); file
//! data is streamed, never buffered whole.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{self, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};
use tar::{Archive, Entry, EntryType};
use xattr::FileExt as _;

/// Marks `<name>` as deleted in the layers below: `.wh.<name>`.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Whiteout-prefixed names reserved for metadata (aufs hardlink dirs and the like).
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// Hides everything the layers below hold in this directory.
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Overlayfs keeps its own state under this prefix; a layer must not forge it.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
const PAX_MTIME: &[u8] = b"mtime";
const PAX_ATIME: &[u8] = b"atime";

/// Mode of the layer root and of parent directories the layer does not list.
const IMPLICIT_DIR_MODE: u32 = 0o755;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Disk usage of what a layer wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Sum of the sizes of the regular files written.
    pub bytes: u64,
    /// Directory entries created: every file, directory, link, node and whiteout,
    /// including parent directories the layer did not list, excluding the root.
    pub inodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading layer tar: {source}")]
    Tar {
        #[source]
        source: io::Error,
    },
    #[error("reading data of {entry} from layer tar: {source}")]
    TarData {
        entry: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entry {entry} escapes the layer root: {reason}")]
    PathEscape {
        entry: PathBuf,
        reason: &'static str,
    },
    #[error("link {entry} -> {target} refused: {reason}")]
    LinkEscape {
        entry: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    #[error("entry {entry} needs {parent} to be a directory")]
    NotADirectory { entry: PathBuf, parent: PathBuf },
    #[error("entry {entry} has unsupported type {kind}")]
    UnsupportedEntry { entry: PathBuf, kind: String },
    #[error("entry {entry} has an invalid {field}")]
    BadHeader { entry: PathBuf, field: &'static str },
    #[error("whiteout {entry} does not name a file")]
    BadWhiteout { entry: PathBuf },
    #[error("layer root {root} is not an empty directory")]
    RootNotEmpty { root: PathBuf },
    #[error("setting xattr {name} on {path}: {source}")]
    Xattr {
        path: PathBuf,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Applies a layer tar stream into `root` (an existing empty directory we own).
///
/// The root gets mode 0755 unless the layer has an entry for `.`, whose ownership, mode,
/// xattrs and times then apply to it. On error, `root` holds a partial layer that the
/// caller must discard; nothing outside it was touched.
pub fn unpack_layer<R: Read>(tar: R, root: &Path) -> Result<UnpackStats> {
    let mut applier = Applier::open(root)?;
    let mut archive = Archive::new(tar);
    archive.set_ignore_zeros(false);
    for entry in archive.entries().map_err(|source| Error::Tar { source })? {
        let mut entry = entry.map_err(|source| Error::Tar { source })?;
        applier.apply(&mut entry)?;
    }
    applier.finish()
}

/// A path inside the layer: normal components only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RelPath(Vec<OsString>);

impl RelPath {
    /// Normalizes a path from the archive; the error says why it would leave the root.
    fn parse(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.first() == Some(&b'/') {
            return Err("absolute path");
        }
        let mut out = Vec::new();
        for c in bytes.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err("parent directory component"),
                _ => out.push(OsString::from_vec(c.to_vec())),
            }
        }
        Ok(Self(out))
    }

    /// Parent components and final name; `None` for the root itself.
    fn split(&self) -> Option<(&[OsString], &OsStr)> {
        let (last, parent) = self.0.split_last()?;
        Some((parent, last.as_os_str()))
    }

    fn to_path(&self) -> PathBuf {
        if self.0.is_empty() {
            PathBuf::from(".")
        } else {
            self.0.iter().collect()
        }
    }
}

/// Whether a relative symlink target climbs above the layer root when resolved from the
/// directory holding the symlink at `link`. Absolute targets never do: they resolve
/// inside the container's root.
fn symlink_escapes(link: &RelPath, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut depth = link.0.len().saturating_sub(1);
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

/// A PAX time (`<secs>[.<fraction>]`, possibly negative) as seconds and nanoseconds.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let (negative, rest) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (int, frac) = match rest.iter().position(|b| *b == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &b""[..]),
    };
    if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let secs: i64 = std::str::from_utf8(int).ok()?.parse().ok()?;
    // Nanoseconds from the first nine fraction digits; finer digits are dropped.
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Some(match (negative, nanos) {
        (false, _) => TimeSpec::new(secs, nanos),
        (true, 0) => TimeSpec::new(secs.checked_neg()?, 0),
        (true, _) => TimeSpec::new(secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos),
    })
}

/// How one entry materializes, decided from its header before anything is written.
#[derive(Debug)]
enum Kind {
    File,
    Dir,
    Symlink(OsString),
    Hardlink(OsString),
    Node(SFlag, stat::dev_t),
    /// PAX global header: describes the archive, not a file.
    Skip,
}

/// Ownership, mode, times and xattrs of an entry.
#[derive(Debug)]
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn read<R: Read>(entry: &mut Entry<'_, R>, path: &Path) -> Result<Self> {
        let bad = |field| Error::BadHeader {
            entry: path.to_path_buf(),
            field,
        };
        let header = entry.header();
        // An all-NUL/space numeric field means 0, as GNU tar and Go's archive/tar read it.
        let blank = |field: &[u8]| field.iter().all(|&b| b == 0 || b == b' ');
        let old = header.as_old();
        // The tar crate already folds PAX uid/gid records into the header.
        let uid = if blank(&old.uid) {
            0
        } else {
            header
                .uid()
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad("uid"))?
        };
        let gid = if blank(&old.gid) {
            0
        } else {
            header
                .gid()
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad("gid"))?
        };
        let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
        let secs = header
            .mtime()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| bad("mtime"))?;
        let mut mtime = TimeSpec::new(secs, 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        let exts = entry.pax_extensions().map_err(|source| Error::TarData {
            entry: path.to_path_buf(),
            source,
        })?;
        for ext in exts.into_iter().flatten() {
            let ext = ext.map_err(|source| Error::TarData {
                entry: path.to_path_buf(),
                source,
            })?;
            let key = ext.key_bytes();
            if key == PAX_MTIME {
                mtime = parse_pax_time(ext.value_bytes()).ok_or_else(|| bad("pax mtime"))?;
            } else if key == PAX_ATIME {
                atime = Some(parse_pax_time(ext.value_bytes()).ok_or_else(|| bad("pax atime"))?);
            } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                if name.is_empty() {
                    return Err(bad("pax xattr name"));
                }
                xattrs.push((
                    OsString::from_vec(name.to_vec()),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        Ok(Self {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mode: Mode::from_bits_truncate(mode),
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }
}

/// Why a walk from the root to a directory stopped.
enum WalkError {
    Symlink,
    NotDir(PathBuf),
    Missing(PathBuf),
    Io(&'static str, PathBuf, io::Error),
}

/// Where an xattr goes: an open file or directory, or a name in a directory for nodes
/// that cannot be opened safely (symlinks, devices, fifos).
enum Target<'a> {
    Open(&'a File),
    At(&'a OwnedFd, &'a OsStr),
}

struct Applier {
    root: OwnedFd,
    root_path: PathBuf,
    stats: UnpackStats,
    /// Directory times, applied last: creating children changes them.
    dir_times: Vec<(RelPath, TimeSpec, TimeSpec)>,
}

impl Applier {
    fn open(root: &Path) -> Result<Self> {
        let io_err = |op| {
            let root = root.to_path_buf();
            move |source: io::Error| Error::Io {
                op,
                path: root,
                source,
            }
        };
        let mut listing = std::fs::read_dir(root).map_err(io_err("listing layer root"))?;
        if listing.next().is_some() {
            return Err(Error::RootNotEmpty {
                root: root.to_path_buf(),
            });
        }
        let fd = nix::fcntl::open(root, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err("opening layer root")(e.into()))?;
        stat::fchmod(&fd, Mode::from_bits_truncate(IMPLICIT_DIR_MODE))
            .map_err(|e| io_err("setting mode of layer root")(e.into()))?;
        Ok(Self {
            root: fd,
            root_path: root.to_path_buf(),
            stats: UnpackStats::default(),
            dir_times: Vec::new(),
        })
    }

    fn finish(self) -> Result<UnpackStats> {
        for (rel, atime, mtime) in &self.dir_times {
            let res = match rel.split() {
                None => stat::futimens(&self.root, atime, mtime),
                Some((parent, name)) => {
                    let dir = match self.walk(parent, false) {
                        Ok((dir, _)) => dir,
                        Err(WalkError::Io(op, path, source)) => {
                            return Err(Error::Io { op, path, source });
                        }
                        // Replaced later in the layer; nothing left to date.
                        Err(_) => continue,
                    };
                    match existing(&dir, name) {
                        Ok(Some(kind)) if kind == SFlag::S_IFDIR => {}
                        Ok(_) => continue,
                        Err(source) => return Err(io_err("inspecting", rel, source)),
                    }
                    stat::utimensat(&dir, name, atime, mtime, UtimensatFlags::NoFollowSymlink)
                }
            };
            res.map_err(|e| io_err("setting times of", rel, e.into()))?;
        }
        tracing::debug!(
            root = %self.root_path.display(),
            bytes = self.stats.bytes,
            inodes = self.stats.inodes,
            "layer applied"
        );
        Ok(self.stats)
    }

    fn apply<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let path = PathBuf::from(OsString::from_vec(raw.clone()));
        let kind = kind_of(entry, &raw, &path)?;
        if matches!(kind, Kind::Skip) {
            return Ok(());
        }
        let rel = RelPath::parse(&raw).map_err(|reason| Error::PathEscape {
            entry: path.clone(),
            reason,
        })?;
        let meta = Meta::read(entry, &path)?;
        tracing::trace!(entry = %path.display(), ?kind, "applying layer entry");

        let Some((parent, name)) = rel.split() else {
            return match kind {
                Kind::Dir => self.root_dir(&meta),
                _ => Err(Error::PathEscape {
                    entry: path,
                    reason: "replaces the layer root with a non-directory",
                }),
            };
        };
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&rel, &path, &meta);
        }
        match &kind {
            Kind::Hardlink(target) => return self.hardlink(&rel, &path, target),
            Kind::Symlink(target) if symlink_escapes(&rel, target.as_bytes()) => {
                return Err(Error::LinkEscape {
                    entry: path,
                    target: target.into(),
                    reason: "relative target climbs above the root",
                });
            }
            _ => {}
        }

        let dir = self.parent(parent, &path)?;
        let kept_dir = self.clear(&dir, name, matches!(kind, Kind::Dir), &rel)?;
        match kind {
            Kind::File => self.file(&dir, name, &rel, &path, entry, &meta),
            Kind::Dir => self.dir(&dir, name, kept_dir, &rel, &meta),
            Kind::Symlink(target) => {
                unistd::symlinkat(target.as_os_str(), &dir, name)
                    .map_err(|e| io_err("creating symlink", &rel, e.into()))?;
                self.stats.inodes += 1;
                self.finish_node(&dir, name, &rel, &meta, false)
            }
            Kind::Node(kind, dev) => {
                stat::mknodat(&dir, name, kind, Mode::empty(), dev)
                    .map_err(|e| io_err("creating node", &rel, e.into()))?;
                self.stats.inodes += 1;
                self.finish_node(&dir, name, &rel, &meta, true)
            }
            Kind::Hardlink(_) | Kind::Skip => Ok(()),
        }
    }

    fn file<R: Read>(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &RelPath,
        path: &Path,
        entry: &mut Entry<'_, R>,
        meta: &Meta,
    ) -> Result<()> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| io_err("creating file", rel, e.into()))?;
        self.stats.inodes += 1;
        let mut file = File::from(fd);
        let mut src = ReadSide {
            inner: entry,
            failed: false,
        };
        let written = io::copy(&mut src, &mut file).map_err(|source| {
            if src.failed {
                Error::TarData {
                    entry: path.to_path_buf(),
                    source,
                }
            } else {
                io_err("writing", rel, source)
            }
        })?;
        // The tar crate reports a truncated stream as an early end of data.
        if written != entry.size() {
            return Err(Error::TarData {
                entry: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "file data ends early"),
            });
        }
        self.stats.bytes += written;
        // chown clears setuid/setgid and file capabilities: mode and xattrs come after.
        unistd::fchown(&file, Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_err("chown", rel, e.into()))?;
        stat::fchmod(&file, meta.mode).map_err(|e| io_err("chmod", rel, e.into()))?;
        set_xattrs(Target::Open(&file), rel, meta)?;
        stat::futimens(&file, &meta.atime, &meta.mtime)
            .map_err(|e| io_err("setting times of", rel, e.into()))
    }

    fn dir(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        kept: bool,
        rel: &RelPath,
        meta: &Meta,
    ) -> Result<()> {
        if !kept {
            stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700))
                .map_err(|e| io_err("creating directory", rel, e.into()))?;
            self.stats.inodes += 1;
        }
        let fd = nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err("opening directory", rel, e.into()))?;
        self.dir_meta(File::from(fd), rel, meta)
    }

    fn root_dir(&mut self, meta: &Meta) -> Result<()> {
        let fd = self
            .root
            .try_clone()
            .map_err(|source| io_err("opening directory", &RelPath(Vec::new()), source))?;
        self.dir_meta(File::from(fd), &RelPath(Vec::new()), meta)
    }

    fn dir_meta(&mut self, dir: File, rel: &RelPath, meta: &Meta) -> Result<()> {
        unistd::fchown(&dir, Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_err("chown", rel, e.into()))?;
        stat::fchmod(&dir, meta.mode).map_err(|e| io_err("chmod", rel, e.into()))?;
        set_xattrs(Target::Open(&dir), rel, meta)?;
        self.dir_times.push((rel.clone(), meta.atime, meta.mtime));
        Ok(())
    }

    /// Ownership, mode, xattrs and times of a node created at `name` in `dir`, without
    /// opening it. Symlinks have no mode of their own on Linux.
    fn finish_node(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &RelPath,
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        unistd::fchownat(
            dir,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err("chown", rel, e.into()))?;
        if chmod {
            stat::fchmodat(dir, name, meta.mode, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| io_err("chmod", rel, e.into()))?;
        }
        set_xattrs(Target::At(dir, name), rel, meta)?;
        stat::utimensat(
            dir,
            name,
            &meta.atime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err("setting times of", rel, e.into()))
    }

    fn hardlink(&mut self, rel: &RelPath, path: &Path, target: &OsStr) -> Result<()> {
        let escape = |reason| Error::LinkEscape {
            entry: path.to_path_buf(),
            target: target.into(),
            reason,
        };
        let to = RelPath::parse(target.as_bytes()).map_err(escape)?;
        if to == *rel {
            tracing::debug!(entry = %path.display(), "hardlink to itself, skipped");
            return Ok(());
        }
        let Some((to_parent, to_name)) = to.split() else {
            return Err(escape("target is a directory"));
        };
        let (to_dir, _) = self.walk(to_parent, false).map_err(|e| match e {
            WalkError::Symlink => escape("target is reached through a symlink"),
            WalkError::NotDir(_) | WalkError::Missing(_) => escape("target does not exist"),
            WalkError::Io(op, path, source) => Error::Io { op, path, source },
        })?;
        match existing(&to_dir, to_name).map_err(|source| io_err("inspecting", &to, source))? {
            None => return Err(escape("target does not exist")),
            Some(SFlag::S_IFDIR) => return Err(escape("target is a directory")),
            Some(_) => {}
        }
        let Some((parent, name)) = rel.split() else {
            return Err(Error::PathEscape {
                entry: path.to_path_buf(),
                reason: "replaces the layer root with a non-directory",
            });
        };
        let dir = self.parent(parent, path)?;
        self.clear(&dir, name, false, rel)?;
        unistd::linkat(&to_dir, to_name, &dir, name, AtFlags::empty())
            .map_err(|e| io_err("creating hardlink", rel, e.into()))?;
        self.stats.inodes += 1;
        Ok(())
    }

    fn whiteout(&mut self, rel: &RelPath, path: &Path, meta: &Meta) -> Result<()> {
        let Some((parent, name)) = rel.split() else {
            return Ok(());
        };
        let dir = self.parent(parent, path)?;
        let name = name.as_bytes();
        if name == WHITEOUT_OPAQUE {
            let parent_rel = RelPath(parent.to_vec());
            return File::from(dir)
                .set_xattr(OPAQUE_XATTR, b"y")
                .map_err(|source| Error::Xattr {
                    path: parent_rel.to_path(),
                    name: OPAQUE_XATTR.to_string(),
                    source,
                });
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            tracing::debug!(entry = %path.display(), "whiteout metadata entry skipped");
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&name[WHITEOUT_PREFIX.len()..]);
        if matches!(hidden.as_bytes(), b"" | b"." | b"..") {
            return Err(Error::BadWhiteout {
                entry: path.to_path_buf(),
            });
        }
        let mut hidden_rel = RelPath(parent.to_vec());
        hidden_rel.0.push(hidden.to_os_string());
        // Whiteouts only hide lower layers: what this layer itself holds under that name
        // (in either order) wins, so an existing entry stays.
        if existing(&dir, hidden)
            .map_err(|source| io_err("inspecting", &hidden_rel, source))?
            .is_some()
        {
            tracing::debug!(entry = %path.display(), "whiteout of a file in the same layer skipped");
            return Ok(());
        }
        stat::mknodat(
            &dir,
            hidden,
            SFlag::S_IFCHR,
            Mode::empty(),
            stat::makedev(0, 0),
        )
        .map_err(|e| io_err("creating whiteout", &hidden_rel, e.into()))?;
        self.stats.inodes += 1;
        unistd::fchownat(
            &dir,
            hidden,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err("chown", &hidden_rel, e.into()))
    }

    /// Opens the directory holding an entry, creating missing parents.
    fn parent(&mut self, parent: &[OsString], entry: &Path) -> Result<OwnedFd> {
        let (dir, created) = self.walk(parent, true).map_err(|e| match e {
            WalkError::Symlink => Error::PathEscape {
                entry: entry.to_path_buf(),
                reason: "a parent directory is a symlink",
            },
            WalkError::NotDir(parent) | WalkError::Missing(parent) => Error::NotADirectory {
                entry: entry.to_path_buf(),
                parent,
            },
            WalkError::Io(op, path, source) => Error::Io { op, path, source },
        })?;
        self.stats.inodes += created;
        Ok(dir)
    }

    /// Opens the directory at `comps` from the root, one component at a time, never
    /// following a symlink; with `create`, makes missing ones and counts them.
    fn walk(&self, comps: &[OsString], create: bool) -> Result<(OwnedFd, u64), WalkError> {
        let here = |i: usize| comps[..=i].iter().collect::<PathBuf>();
        let mut created = 0;
        let mut dir = self
            .root
            .try_clone()
            .map_err(|e| WalkError::Io("opening directory", PathBuf::from("."), e))?;
        for (i, c) in comps.iter().enumerate() {
            let c = c.as_os_str();
            dir = match nix::fcntl::openat(&dir, c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    stat::mkdirat(&dir, c, Mode::from_bits_truncate(0o700))
                        .map_err(|e| WalkError::Io("creating directory", here(i), e.into()))?;
                    created += 1;
                    let fd = nix::fcntl::openat(&dir, c, DIR_FLAGS, Mode::empty())
                        .map_err(|e| WalkError::Io("opening directory", here(i), e.into()))?;
                    // Explicit, so neither the umask nor a setgid parent shape it.
                    unistd::fchown(&fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
                        .map_err(|e| WalkError::Io("chown", here(i), e.into()))?;
                    stat::fchmod(&fd, Mode::from_bits_truncate(IMPLICIT_DIR_MODE))
                        .map_err(|e| WalkError::Io("chmod", here(i), e.into()))?;
                    fd
                }
                Err(Errno::ENOENT) => return Err(WalkError::Missing(here(i))),
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    return Err(match existing(&dir, c) {
                        Ok(Some(SFlag::S_IFLNK)) => WalkError::Symlink,
                        Ok(_) => WalkError::NotDir(here(i)),
                        Err(e) => WalkError::Io("inspecting", here(i), e),
                    });
                }
                Err(e) => return Err(WalkError::Io("opening directory", here(i), e.into())),
            };
        }
        Ok((dir, created))
    }

    /// Makes room for a new entry at `name` in `dir`, never following what is there.
    /// A directory is kept when a directory replaces it (returns true); anything else
    /// is removed, directories with their contents.
    fn clear(&self, dir: &OwnedFd, name: &OsStr, keep_dir: bool, rel: &RelPath) -> Result<bool> {
        match existing(dir, name).map_err(|source| io_err("inspecting", rel, source))? {
            None => Ok(false),
            Some(SFlag::S_IFDIR) if keep_dir => Ok(true),
            Some(SFlag::S_IFDIR) => {
                // std's remove_dir_all opens each level with O_NOFOLLOW; the magic link
                // pins the parent we already reached safely.
                std::fs::remove_dir_all(proc_path(dir, name))
                    .map_err(|source| io_err("removing directory", rel, source))?;
                Ok(false)
            }
            Some(_) => {
                unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| io_err("removing", rel, e.into()))?;
                Ok(false)
            }
        }
    }
}

/// Decides how an entry materializes from its header alone.
fn kind_of<R: Read>(entry: &Entry<'_, R>, raw: &[u8], path: &Path) -> Result<Kind> {
    let header = entry.header();
    let bad = |field| Error::BadHeader {
        entry: path.to_path_buf(),
        field,
    };
    let link = || {
        entry
            .link_name_bytes()
            .filter(|l| !l.is_empty())
            .map(|l| OsString::from_vec(l.into_owned()))
            .ok_or_else(|| bad("link name"))
    };
    let dev = || {
        let major = header
            .device_major()
            .ok()
            .flatten()
            .ok_or_else(|| bad("device major"))?;
        let minor = header
            .device_minor()
            .ok()
            .flatten()
            .ok_or_else(|| bad("device minor"))?;
        Ok::<_, Error>(stat::makedev(major.into(), minor.into()))
    };
    Ok(match header.entry_type() {
        // Pre-POSIX archives mark directories with a trailing slash only.
        EntryType::Regular if raw.last() == Some(&b'/') => Kind::Dir,
        EntryType::Regular | EntryType::Continuous => Kind::File,
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink => Kind::Symlink(link()?),
        EntryType::Link => Kind::Hardlink(link()?),
        EntryType::Char => Kind::Node(SFlag::S_IFCHR, dev()?),
        EntryType::Block => Kind::Node(SFlag::S_IFBLK, dev()?),
        EntryType::Fifo => Kind::Node(SFlag::S_IFIFO, 0),
        EntryType::XGlobalHeader => Kind::Skip,
        // Sparse entries expand to more than the stream carries, beyond the caller's
        // byte limit; OCI layers do not need them.
        other => {
            return Err(Error::UnsupportedEntry {
                entry: path.to_path_buf(),
                kind: format!("{:?}", char::from(other.as_byte())),
            });
        }
    })
}

/// The type of what `name` in `dir` is, without following it; `None` if nothing is.
fn existing(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<SFlag>> {
    match stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A path naming `name` inside the directory open as `dir`, for calls that take no
/// directory descriptor. The kernel resolves the fd link to that very directory, and
/// `name` is the final component, which `l*` calls do not follow.
fn proc_path(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

fn set_xattrs(target: Target<'_>, rel: &RelPath, meta: &Meta) -> Result<()> {
    for (name, value) in &meta.xattrs {
        let bytes = name.as_bytes();
        if bytes.starts_with(OVERLAY_XATTR_PREFIX) {
            tracing::warn!(path = %rel.to_path().display(), name = %name.to_string_lossy(), "overlay xattr in layer skipped");
            continue;
        }
        let res = match target {
            Target::Open(file) => file.set_xattr(name, value),
            Target::At(dir, node) => xattr::set(proc_path(dir, node), name, value),
        };
        let Err(source) = res else { continue };
        let privileged = bytes.starts_with(b"security.") || bytes.starts_with(b"trusted.");
        let tolerated = match Errno::from_raw(source.raw_os_error().unwrap_or(0)) {
            // The filesystem cannot store it at all.
            Errno::EOPNOTSUPP => true,
            Errno::EPERM => privileged,
            _ => false,
        };
        if !tolerated {
            return Err(Error::Xattr {
                path: rel.to_path(),
                name: name.to_string_lossy().into_owned(),
                source,
            });
        }
        tracing::warn!(path = %rel.to_path().display(), name = %name.to_string_lossy(), err = %source, "xattr skipped");
    }
    Ok(())
}

fn io_err(op: &'static str, rel: &RelPath, source: io::Error) -> Error {
    Error::Io {
        op,
        path: rel.to_path(),
        source,
    }
}

/// Remembers whether a copy failed on the tar side (truncated or over the limit) rather
/// than on the disk side.
struct ReadSide<'a, R> {
    inner: &'a mut R,
    failed: bool,
}

impl<R: Read> Read for ReadSide<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed = true)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};

    use tar::Header;

    use super::*;

    const MTIME: u64 = 1_600_000_000;

    /// An in-memory layer, one entry per call.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn header(kind: EntryType, mode: u32, size: usize) -> Header {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            h.set_size(size as u64);
            h
        }

        fn with(
            mut self,
            kind: EntryType,
            path: &str,
            data: &[u8],
            tweak: impl FnOnce(&mut Header),
        ) -> Self {
            let mode = if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            };
            let mut h = Self::header(kind, mode, data.len());
            tweak(&mut h);
            self.0
                .append_data(&mut h, path, data)
                .expect("append entry");
            self
        }

        fn file(self, path: &str, data: &[u8]) -> Self {
            self.with(EntryType::Regular, path, data, |_| {})
        }

        fn dir(self, path: &str) -> Self {
            self.with(EntryType::Directory, path, b"", |_| {})
        }

        fn node(self, kind: EntryType, path: &str, major: u32, minor: u32) -> Self {
            self.with(kind, path, b"", |h| {
                h.set_device_major(major).expect("major");
                h.set_device_minor(minor).expect("minor");
            })
        }

        fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
            let mut h = Self::header(kind, 0o777, 0);
            self.0
                .append_link(&mut h, path, target)
                .expect("append link");
            self
        }

        /// An entry whose path `tar::Builder` would refuse (`..`, absolute).
        fn raw(mut self, kind: EntryType, path: &[u8], link: Option<&[u8]>, data: &[u8]) -> Self {
            let mut h = Self::header(kind, 0o644, data.len());
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
            if let Some(link) = link {
                h.set_link_name_literal(link).expect("link name");
            }
            h.set_cksum();
            self.0.append(&h, data).expect("append raw");
            self
        }

        /// PAX records for the next entry.
        fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
            let mut data = Vec::new();
            for (key, value) in records {
                let base = key.len() + value.len() + 3;
                let mut len = base + 1;
                while len != base + len.to_string().len() {
                    len = base + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            h.set_path("PaxHeaders/entry").expect("pax path");
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.0.append(&h, &data[..]).expect("append pax");
            self
        }

        fn finish(self) -> Vec<u8> {
            self.0.into_inner().expect("finish tar")
        }
    }

    fn unpack_fresh(layer: Vec<u8>) -> (tempfile::TempDir, Result<UnpackStats>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let res = unpack_layer(&layer[..], dir.path());
        (dir, res)
    }

    fn lmeta(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).expect("lstat")
    }

    #[test]
    fn rel_path_normalizes_or_refuses() {
        let ok: &[(&[u8], &[&str])] = &[
            (b"a/b", &["a", "b"]),
            (b"./a//b/", &["a", "b"]),
            (b".", &[]),
            (b"./", &[]),
            (b"a/./b", &["a", "b"]),
            (b"..a/b..", &["..a", "b.."]),
        ];
        for (input, want) in ok {
            let got = RelPath::parse(input).expect("valid path");
            let want: Vec<OsString> = want.iter().map(OsString::from).collect();
            assert_eq!(got.0, want, "{}", String::from_utf8_lossy(input));
        }
        let bad: &[&[u8]] = &[
            b"/etc/x",
            b"/",
            b"..",
            b"../x",
            b"a/../../x",
            b"a/..",
            b"./../x",
        ];
        for input in bad {
            assert!(
                RelPath::parse(input).is_err(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn symlink_escape_counts_from_link_dir() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"a/b", b"../c", false),
            (b"a/b", b"../../etc/passwd", true),
            (b"link", b"..", true),
            (b"link", b".", false),
            (b"link", b"/etc/passwd", false),
            (b"etc/localtime", b"/usr/share/zoneinfo/UTC", false),
            (b"a/b/c", b"../../x", false),
            (b"a/b/c", b"x/../../../../y", true),
            (b"a/b/c", b"x/y/../../../..", false),
            (b"a/b", b"./.././../x", true),
        ];
        for (link, target, escapes) in cases {
            let link = RelPath::parse(link).expect("valid link path");
            assert_eq!(
                symlink_escapes(&link, target),
                *escapes,
                "{link:?} -> {}",
                String::from_utf8_lossy(target)
            );
        }
    }

    #[test]
    fn pax_times_parse() {
        type SecsNanos = Option<(i64, i64)>;
        let cases: &[(&[u8], SecsNanos)] = &[
            (b"1700000000", Some((1_700_000_000, 0))),
            (b"1700000000.25", Some((1_700_000_000, 250_000_000))),
            (b"1.123456789123", Some((1, 123_456_789))),
            (b"0.", Some((0, 0))),
            (b"-1.5", Some((-2, 500_000_000))),
            (b"-3", Some((-3, 0))),
            (b"", None),
            (b".5", None),
            (b"12a", None),
            (b"1.-5", None),
            (b"99999999999999999999", None),
        ];
        for (input, want) in cases {
            let got = parse_pax_time(input).map(|t| (t.tv_sec(), t.tv_nsec()));
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn normal_tree() {
        let layer = Layer::new()
            .dir("etc")
            .file("etc/hosts", b"127.0.0.1 localhost\n")
            .link(
                EntryType::Symlink,
                "etc/localtime",
                "/usr/share/zoneinfo/UTC",
            )
            .link(EntryType::Symlink, "etc/hosts.link", "hosts")
            .link(EntryType::Link, "etc/hosts.hard", "./etc/hosts")
            .with(EntryType::Fifo, "run/fifo", b"", |_| {})
            .node(EntryType::Char, "dev/null", 1, 3)
            .node(EntryType::Block, "dev/loop0", 7, 0)
            .file("./usr/lib/deep/x", b"xyz")
            .finish();
        let (dir, res) = unpack_fresh(layer);
        let stats = res.expect("unpack");
        let root = dir.path();

        assert_eq!(
            fs::read(root.join("etc/hosts")).expect("read"),
            b"127.0.0.1 localhost\n"
        );
        assert_eq!(
            fs::read_link(root.join("etc/localtime")).expect("readlink"),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert_eq!(
            fs::read_link(root.join("etc/hosts.link")).expect("readlink"),
            Path::new("hosts")
        );
        let hosts = lmeta(&root.join("etc/hosts"));
        let hard = lmeta(&root.join("etc/hosts.hard"));
        assert_eq!((hard.ino(), hard.nlink()), (hosts.ino(), 2));
        assert!(lmeta(&root.join("run/fifo")).file_type().is_fifo());
        let null = lmeta(&root.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), stat::makedev(1, 3));
        let lo = lmeta(&root.join("dev/loop0"));
        assert!(lo.file_type().is_block_device());
        assert_eq!(lo.rdev(), stat::makedev(7, 0));
        assert_eq!(fs::read(root.join("usr/lib/deep/x")).expect("read"), b"xyz");
        for implicit in ["run", "dev", "usr", "usr/lib", "usr/lib/deep"] {
            let m = lmeta(&root.join(implicit));
            assert!(m.is_dir(), "{implicit}");
            assert_eq!(
                (m.mode() & 0o7777, m.uid(), m.gid()),
                (0o755, 0, 0),
                "{implicit}"
            );
        }
        assert_eq!(lmeta(root).mode() & 0o7777, 0o755);
        assert_eq!(
            stats,
            UnpackStats {
                bytes: 20 + 3,
                // etc hosts localtime hosts.link hosts.hard run fifo dev null loop0
                // usr lib deep x
                inodes: 14,
            }
        );
    }

    #[test]
    fn ownership_mode_and_times_are_preserved() {
        let owned = |uid: u64, gid: u64, mode: u32, mtime: u64| {
            move |h: &mut Header| {
                h.set_uid(uid);
                h.set_gid(gid);
                h.set_mode(mode);
                h.set_mtime(mtime);
            }
        };
        let mut layer = Layer::new()
            .with(EntryType::Directory, ".", b"", owned(0, 0, 0o750, 77))
            .with(
                EntryType::Regular,
                "bin/su",
                b"#!/bin/true\n",
                owned(1000, 2000, 0o4755, 1_234_567_890),
            )
            .with(
                EntryType::Directory,
                "tmp",
                b"",
                owned(0, 0, 0o1777, 1_000_000),
            )
            .file("tmp/child", b"changes tmp's mtime")
            .with(
                EntryType::Directory,
                "shared",
                b"",
                owned(5, 6, 0o2750, 2_000_000),
            )
            .with(
                EntryType::Fifo,
                "shared/pipe",
                b"",
                owned(3, 4, 0o600, 3_000_000),
            );
        let mut h = Layer::header(EntryType::Symlink, 0o777, 0);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(42);
        layer
            .0
            .append_link(&mut h, "lnk", "bin/su")
            .expect("append symlink");
        let (dir, res) = unpack_fresh(layer.finish());
        res.expect("unpack");
        let root = dir.path();

        let cases: &[(&str, u32, u32, u32, i64)] = &[
            (".", 0, 0, 0o750, 77),
            ("bin/su", 1000, 2000, 0o4755, 1_234_567_890),
            ("tmp", 0, 0, 0o1777, 1_000_000),
            ("shared", 5, 6, 0o2750, 2_000_000),
            ("shared/pipe", 3, 4, 0o600, 3_000_000),
        ];
        for (path, uid, gid, mode, mtime) in cases {
            let m = lmeta(&root.join(path));
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
                (*uid, *gid, *mode, *mtime),
                "{path}"
            );
        }
        let lnk = lmeta(&root.join("lnk"));
        assert!(lnk.file_type().is_symlink());
        assert_eq!((lnk.uid(), lnk.gid(), lnk.mtime()), (7, 8, 42));
        // The symlink's metadata did not leak into its target.
        let su = lmeta(&root.join("bin/su"));
        assert_eq!((su.uid(), su.mtime()), (1000, 1_234_567_890));
    }

    #[test]
    fn long_names_round_trip() {
        let long_dir = format!("{}/{}/{}", "a".repeat(90), "b".repeat(90), "c".repeat(90));
        let long_file = format!("{long_dir}/{}", "f".repeat(120));
        let long_target = format!("{}/{}", "..", "t".repeat(150));
        let layer = Layer::new()
            .file(&long_file, b"long")
            .link(EntryType::Symlink, &format!("{long_dir}/sym"), &long_target)
            .link(EntryType::Link, "short", &long_file)
            .finish();
        let (dir, res) = unpack_fresh(layer);
        res.expect("unpack");
        let root = dir.path();
        assert_eq!(fs::read(root.join(&long_file)).expect("read"), b"long");
        assert_eq!(
            fs::read_link(root.join(&long_dir).join("sym")).expect("readlink"),
            Path::new(&long_target)
        );
        assert_eq!(
            lmeta(&root.join("short")).ino(),
            lmeta(&root.join(&long_file)).ino()
        );
    }

    #[test]
    fn pax_xattrs_and_subsecond_times() {
        let layer = Layer::new()
            .pax(&[
                ("SCHILY.xattr.user.greeting", b"hello"),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
                ("mtime", b"1700000000.25"),
            ])
            .file("f", b"data")
            .pax(&[("SCHILY.xattr.user.dir", b"d")])
            .dir("d")
            .finish();
        let (dir, res) = unpack_fresh(layer);
        res.expect("unpack");
        let f = dir.path().join("f");
        assert_eq!(
            xattr::get(&f, "user.greeting").expect("getxattr"),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            xattr::get(&f, "trusted.overlay.redirect").expect("getxattr"),
            None
        );
        let m = lmeta(&f);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 250_000_000));
        assert_eq!(
            xattr::get(dir.path().join("d"), "user.dir").expect("getxattr"),
            Some(b"d".to_vec())
        );
    }

    #[test]
    fn whiteouts_become_overlay_char_devices() {
        let layer = Layer::new()
            .file(".wh.gone", b"")
            .file("dir/.wh.old", b"")
            .file(".wh..wh.plnk", b"")
            .file("keep", b"same layer")
            .file(".wh.keep", b"")
            .finish();
        let (dir, res) = unpack_fresh(layer);
        let stats = res.expect("unpack");
        let root = dir.path();
        for path in ["gone", "dir/old"] {
            let m = lmeta(&root.join(path));
            assert!(m.file_type().is_char_device(), "{path}");
            assert_eq!(m.rdev(), 0, "{path}");
        }
        assert_eq!(fs::read(root.join("keep")).expect("read"), b"same layer");
        let mut names: Vec<_> = fs::read_dir(root)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "gone", "keep"]);
        // gone, dir, dir/old, keep
        assert_eq!(stats.inodes, 4);
    }

    #[test]
    fn opaque_marker_sets_overlay_xattr() {
        let layer = Layer::new()
            .dir("d")
            .file("d/.wh..wh..opq", b"")
            .file("implicit/.wh..wh..opq", b"")
            .finish();
        let (dir, res) = unpack_fresh(layer);
        res.expect("unpack");
        for path in ["d", "implicit"] {
            let p = dir.path().join(path);
            assert!(lmeta(&p).is_dir(), "{path}");
            assert_eq!(
                xattr::get(&p, OPAQUE_XATTR).expect("getxattr"),
                Some(b"y".to_vec()),
                "{path}"
            );
            assert_eq!(fs::read_dir(&p).expect("ls").count(), 0, "{path}");
        }
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let layer = Layer::new()
            .file("a", b"first")
            .file("a", b"second")
            .dir("d")
            .file("d/x", b"kept")
            .with(EntryType::Directory, "d", b"", |h| h.set_mode(0o700))
            .file("f", b"file")
            .dir("f")
            .file("g/h/i", b"tree")
            .file("g", b"now a file")
            .link(EntryType::Symlink, "s", "a")
            .file("s", b"not through the link")
            .finish();
        let (dir, res) = unpack_fresh(layer);
        res.expect("unpack");
        let root = dir.path();
        assert_eq!(fs::read(root.join("a")).expect("read"), b"second");
        assert_eq!(fs::read(root.join("d/x")).expect("read"), b"kept");
        assert_eq!(lmeta(&root.join("d")).permissions().mode() & 0o7777, 0o700);
        assert!(lmeta(&root.join("f")).is_dir());
        assert_eq!(fs::read(root.join("g")).expect("read"), b"now a file");
        assert!(lmeta(&root.join("s")).is_file());
        assert_eq!(fs::read(root.join("a")).expect("read"), b"second");
    }

    #[test]
    fn root_must_be_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("leftover"), b"").expect("write");
        let err = unpack_layer(&Layer::new().finish()[..], dir.path()).expect_err("non-empty root");
        assert!(matches!(err, Error::RootNotEmpty { .. }), "{err}");
    }

    #[test]
    fn truncated_layer_is_a_tar_error() {
        let mut layer = Layer::new().file("big", &[7u8; 4096]).finish();
        layer.truncate(512 + 1000);
        let (_dir, res) = unpack_fresh(layer);
        let err = res.expect_err("truncated");
        assert!(matches!(err, Error::TarData { .. }), "{err}");
    }

    /// A malicious layer, built with the path of a sentinel directory outside the root,
    /// and the error it must be refused with.
    struct Malicious {
        name: &'static str,
        build: fn(&Path) -> Layer,
        refused: fn(&Error) -> bool,
    }

    #[test]
    fn malicious_layers_are_rejected_without_writing_outside() {
        fn abs(p: &Path, rest: &str) -> String {
            format!("{}{rest}", p.display())
        }
        let cases = [
            Malicious {
                name: "dotdot entry",
                build: |_| Layer::new().raw(EntryType::Regular, b"../escape", None, b"x"),
                refused: |e| matches!(e, Error::PathEscape { .. }),
            },
            Malicious {
                name: "absolute entry",
                build: |_| Layer::new().raw(EntryType::Regular, b"/abs/path", None, b"x"),
                refused: |e| matches!(e, Error::PathEscape { .. }),
            },
            Malicious {
                name: "absolute entry into the sentinel",
                build: |s| {
                    let p = abs(s, "/pwned");
                    Layer::new().raw(EntryType::Regular, p.as_bytes(), None, b"x")
                },
                refused: |e| matches!(e, Error::PathEscape { .. }),
            },
            Malicious {
                name: "dotdot inside entry",
                build: |_| Layer::new().raw(EntryType::Regular, b"a/../../x", None, b"x"),
                refused: |e| matches!(e, Error::PathEscape { .. }),
            },
            Malicious {
                name: "write through absolute symlink",
                build: |s| {
                    Layer::new()
                        .link(EntryType::Symlink, "link", &abs(s, ""))
                        .file("link/pwned", b"x")
                },
                refused: |e| matches!(e, Error::PathEscape { .. }),
            },
            Malicious {
                name: "symlink to parent",
                build: |_| {
                    Layer::new()
                        .link(EntryType::Symlink, "link", "..")
                        .file("link/x", b"x")
                },
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "write through in-root symlink",
                build: |_| {
                    Layer::new()
                        .link(EntryType::Symlink, "a/link", "..")
                        .file("a/link/x", b"x")
                },
                refused: |e| matches!(e, Error::PathEscape { .. }),
            },
            Malicious {
                name: "hardlink climbing out",
                build: |_| Layer::new().raw(EntryType::Link, b"h", Some(b"../../etc/passwd"), b""),
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "hardlink to sibling",
                build: |_| {
                    Layer::new().raw(EntryType::Link, b"h", Some(b"../sentinel/secret"), b"")
                },
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "hardlink absolute",
                build: |_| Layer::new().raw(EntryType::Link, b"h", Some(b"/etc/passwd"), b""),
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "hardlink absolute into the sentinel",
                build: |s| {
                    let t = abs(s, "/secret");
                    Layer::new().raw(EntryType::Link, b"h", Some(t.as_bytes()), b"")
                },
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "hardlink through symlink",
                build: |s| {
                    Layer::new()
                        .link(EntryType::Symlink, "s", &abs(s, ""))
                        .link(EntryType::Link, "h", "s/secret")
                },
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "hardlink to directory",
                build: |_| Layer::new().dir("d").link(EntryType::Link, "h", "d"),
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "hardlink to missing",
                build: |_| Layer::new().link(EntryType::Link, "h", "nowhere"),
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "relative symlink escaping",
                build: |_| Layer::new().link(EntryType::Symlink, "a/b", "../../x"),
                refused: |e| matches!(e, Error::LinkEscape { .. }),
            },
            Malicious {
                name: "file as parent",
                build: |_| Layer::new().file("f", b"x").file("f/x", b"x"),
                refused: |e| matches!(e, Error::NotADirectory { .. }),
            },
            Malicious {
                name: "root replaced by file",
                build: |_| Layer::new().raw(EntryType::Regular, b".", None, b"x"),
                refused: |e| matches!(e, Error::PathEscape { .. }),
            },
            Malicious {
                name: "whiteout of parent",
                build: |_| Layer::new().raw(EntryType::Regular, b"a/.wh...", None, b""),
                refused: |e| matches!(e, Error::BadWhiteout { .. }),
            },
            Malicious {
                name: "unsupported type",
                build: |_| Layer::new().raw(EntryType::new(b'V'), b"volume", None, b""),
                refused: |e| matches!(e, Error::UnsupportedEntry { .. }),
            },
        ];
        for Malicious {
            name,
            build,
            refused,
        } in cases
        {
            let base = tempfile::tempdir().expect("tempdir");
            let root = base.path().join("root");
            let sentinel = base.path().join("sentinel");
            fs::create_dir(&root).expect("mkdir root");
            fs::create_dir(&sentinel).expect("mkdir sentinel");
            fs::write(sentinel.join("secret"), b"s").expect("write secret");

            let layer = build(&sentinel).finish();
            let err = unpack_layer(&layer[..], &root).expect_err(name);
            assert!(refused(&err), "{name}: unexpected error {err:?}");

            let mut outside: Vec<_> = fs::read_dir(base.path())
                .expect("ls base")
                .map(|e| e.expect("entry").file_name())
                .collect();
            outside.sort();
            assert_eq!(outside, ["root", "sentinel"], "{name}");
            let inside: Vec<_> = fs::read_dir(&sentinel)
                .expect("ls sentinel")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(inside, ["secret"], "{name}");
            let secret = lmeta(&sentinel.join("secret"));
            assert_eq!((secret.nlink(), secret.len()), (1, 1), "{name}");
            assert_eq!(
                fs::read(sentinel.join("secret")).expect("read"),
                b"s",
                "{name}"
            );
        }
    }
}
