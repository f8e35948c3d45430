//! The host side of a pod's volumes: emptyDir (disk, or tmpfs for `medium: Memory`),
//! hostPath (every `type` and its check), downwardAPI files, and the volumes of API
//! objects: configMap, secret (on tmpfs) and projected (configMap, secret, downwardAPI
//! and serviceAccountToken sources; on tmpfs when it holds a secret or a token); then a
//! container's `volumeMounts` as CRI mounts. The API objects come fetched
//! ([`PodObjects`], see `objects`): this module does no network I/O.
//!
//! Layout under a pod's volume root (`<kubelet root>/pods/<uid>/volumes`), as upstream:
//! `kubernetes.io~empty-dir/<name>`, `kubernetes.io~downward-api/<name>`,
//! `kubernetes.io~configmap/<name>`, `kubernetes.io~secret/<name>`,
//! `kubernetes.io~projected/<name>`. hostPath volumes live where they are and are never
//! touched by [`cleanup`].
//!
//! Files are published the way kubelet's atomic writer does it, so readers never see a
//! half-written set: the files go into a fresh `..<timestamp>` directory, `..data` is
//! swapped to it with a rename, and each user-visible top-level name is a symlink into
//! `..data/`. Publishing the same files again changes nothing; new content (a config map
//! updated, a token renewed) is a new `..<timestamp>` directory swapped in whole.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use proto::v1;
use tracing::debug;

use crate::objects::{Lookup, PodObjects, TokenSpec};
use crate::translate::{self, FieldUse, NodeInfo};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volume {volume}: {kind} volumes are not supported (they need an API server)")]
    Unsupported { volume: String, kind: String },
    #[error("volume {volume}: {reason}")]
    InvalidVolume { volume: String, reason: String },
    /// The volume's content cannot be had (upstream's FailedMount): an object missing,
    /// a key missing, the API server failing.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {reason}")]
    SetUp { volume: String, reason: String },
    #[error("volume {volume}: hostPath {path}: {reason}")]
    HostPathType {
        volume: String,
        path: PathBuf,
        reason: String,
    },
    #[error("container {container}: no volume {volume} in the pod")]
    MissingVolume { container: String, volume: String },
    #[error("container {container}: mount of volume {volume} at {mount_path}: {reason}")]
    InvalidMount {
        container: String,
        volume: String,
        mount_path: String,
        reason: String,
    },
    #[error("container {container}: subPath {sub_path:?} of volume {volume}: {reason}")]
    InvalidSubPath {
        container: String,
        volume: String,
        sub_path: String,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{op} {path}: {source}")]
    Mount {
        op: &'static str,
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Translate(#[from] translate::Error),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Where the pods' directories live, e.g. `/var/lib/nodelet/pods`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRoot(pub PathBuf);

impl VolumeRoot {
    /// `<root>/<uid>/volumes`: the `root` that [`prepare`] and [`cleanup`] take.
    pub fn pod_volumes(&self, uid: &str) -> Result<PathBuf> {
        if uid.is_empty() || uid == "." || uid == ".." || uid.contains('/') {
            return Err(Error::InvalidVolume {
                volume: String::new(),
                reason: format!("pod uid {uid:?} cannot name a directory"),
            });
        }
        Ok(self.0.join(uid).join("volumes"))
    }
}

/// What a prepared volume is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    EmptyDir,
    /// emptyDir on tmpfs (`medium: Memory`).
    MemoryEmptyDir,
    HostPath,
    DownwardApi,
    ConfigMap,
    /// On tmpfs.
    Secret,
    Projected,
}

impl VolumeKind {
    /// API data volumes are always mounted read-only, as upstream.
    fn always_read_only(self) -> bool {
        matches!(
            self,
            VolumeKind::DownwardApi
                | VolumeKind::ConfigMap
                | VolumeKind::Secret
                | VolumeKind::Projected
        )
    }

    fn plugin_dir(self) -> Option<&'static str> {
        match self {
            VolumeKind::EmptyDir | VolumeKind::MemoryEmptyDir => Some("kubernetes.io~empty-dir"),
            VolumeKind::DownwardApi => Some("kubernetes.io~downward-api"),
            VolumeKind::ConfigMap => Some("kubernetes.io~configmap"),
            VolumeKind::Secret => Some("kubernetes.io~secret"),
            VolumeKind::Projected => Some("kubernetes.io~projected"),
            VolumeKind::HostPath => None,
        }
    }
}

/// One volume ready to be mounted: the host path containers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    pub name: String,
    pub kind: VolumeKind,
    pub host_path: PathBuf,
}

/// The pod's volumes by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedVolumes {
    volumes: BTreeMap<String, PreparedVolume>,
    /// `<kubelet root>/pods/<uid>/volume-subpaths`: the bind mounts of checked subPaths.
    subpaths: PathBuf,
}

impl PreparedVolumes {
    pub fn get(&self, name: &str) -> Option<&PreparedVolume> {
        self.volumes.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PreparedVolume> {
        self.volumes.values()
    }
}

/// Sets up every volume of the pod under `root` (`<kubelet root>/pods/<uid>/volumes`)
/// with no API objects: a configMap, secret or token volume is unsupported.
pub fn prepare(pod: &Pod, root: &Path, node: &NodeInfo) -> Result<PreparedVolumes> {
    prepare_with(pod, root, node, &PodObjects::default())
}

/// Sets up every volume of the pod under `root` (`<kubelet root>/pods/<uid>/volumes`),
/// the API objects from `objects` (a name it lacks was not fetched: unsupported).
/// Idempotent: run it again and mounted tmpfs stay, files are republished only when
/// their content changed (new labels or annotations, an updated config map or secret, a
/// renewed token).
pub fn prepare_with(
    pod: &Pod,
    root: &Path,
    node: &NodeInfo,
    objects: &PodObjects,
) -> Result<PreparedVolumes> {
    let mut out = PreparedVolumes {
        subpaths: subpaths_dir(root),
        ..Default::default()
    };
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.fs_group);
    for vol in volumes {
        check_name(&vol.name)?;
        if out.volumes.contains_key(&vol.name) {
            return Err(Error::InvalidVolume {
                volume: vol.name.clone(),
                reason: "declared twice".into(),
            });
        }
        let prepared = prepare_one(pod, vol, root, node, fs_group, objects)?;
        out.volumes.insert(vol.name.clone(), prepared);
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidVolume {
            volume: name.to_string(),
            reason: "name cannot name a directory".into(),
        });
    }
    Ok(())
}

fn prepare_one(
    pod: &Pod,
    vol: &Volume,
    root: &Path,
    node: &NodeInfo,
    fs_group: Option<i64>,
    objects: &PodObjects,
) -> Result<PreparedVolume> {
    let name = vol.name.clone();
    let dir_for = |kind: VolumeKind| -> Result<PathBuf> {
        let plugin = kind.plugin_dir().unwrap_or_default();
        let parent = root.join(plugin);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&parent)
            .map_err(io_err("creating", &parent))?;
        Ok(parent.join(&vol.name))
    };
    if let Some(ed) = vol.empty_dir.as_ref() {
        let memory = match ed.medium.as_deref() {
            None | Some("") => false,
            Some("Memory") => true,
            Some(other) => {
                return Err(Error::Unsupported {
                    volume: name,
                    kind: format!("emptyDir medium {other}"),
                });
            }
        };
        let kind = if memory {
            VolumeKind::MemoryEmptyDir
        } else {
            VolumeKind::EmptyDir
        };
        let dir = dir_for(kind)?;
        mkdir_mode(&dir, 0o777)?;
        if memory && !is_mount_point(&dir)? {
            let size = memory_volume_size(pod, vol, node)?;
            mount_tmpfs(&dir, size)?;
        }
        if let Some(gid) = fs_group {
            set_group_ownership(&dir, gid, false)?;
        }
        return Ok(PreparedVolume {
            name,
            kind,
            host_path: dir,
        });
    }
    if let Some(hp) = vol.host_path.as_ref() {
        let path = PathBuf::from(&hp.path);
        if !path.is_absolute() {
            return Err(Error::InvalidVolume {
                volume: name,
                reason: format!("hostPath {:?} is not absolute", hp.path),
            });
        }
        check_host_path(&name, &path, hp.type_.as_deref().unwrap_or(""))?;
        return Ok(PreparedVolume {
            name,
            kind: VolumeKind::HostPath,
            host_path: path,
        });
    }
    if let Some(da) = vol.downward_api.as_ref() {
        let mut payload = BTreeMap::new();
        add_downward_items(
            pod,
            &name,
            da.items.as_deref().unwrap_or_default(),
            da.default_mode,
            node,
            &mut payload,
        )?;
        let dir = dir_for(VolumeKind::DownwardApi)?;
        publish(&dir, &payload, fs_group)?;
        return Ok(PreparedVolume {
            name,
            kind: VolumeKind::DownwardApi,
            host_path: dir,
        });
    }
    if let Some(cm) = vol.config_map.as_ref() {
        let data = object_data(&name, "configMap", config_map_lookup(objects, &cm.name))?;
        let mut payload = BTreeMap::new();
        key_files(
            &name,
            &Source::ConfigMap(&cm.name),
            data,
            cm.optional.unwrap_or(false),
            cm.items.as_deref(),
            cm.default_mode,
            &mut payload,
        )?;
        let dir = dir_for(VolumeKind::ConfigMap)?;
        publish(&dir, &payload, fs_group)?;
        return Ok(PreparedVolume {
            name,
            kind: VolumeKind::ConfigMap,
            host_path: dir,
        });
    }
    if let Some(sv) = vol.secret.as_ref() {
        let secret = sv.secret_name.clone().unwrap_or_default();
        let data = object_data(&name, "secret", secret_lookup(objects, &secret))?;
        let mut payload = BTreeMap::new();
        key_files(
            &name,
            &Source::Secret(&secret),
            data,
            sv.optional.unwrap_or(false),
            sv.items.as_deref(),
            sv.default_mode,
            &mut payload,
        )?;
        let dir = dir_for(VolumeKind::Secret)?;
        ensure_private_tmpfs(pod, vol, node, &dir)?;
        publish(&dir, &payload, fs_group)?;
        return Ok(PreparedVolume {
            name,
            kind: VolumeKind::Secret,
            host_path: dir,
        });
    }
    if let Some(pr) = vol.projected.as_ref() {
        let mut payload = BTreeMap::new();
        // As upstream, every source is tried and the failures are reported together.
        let mut failures: Vec<String> = Vec::new();
        let mut sensitive = false;
        for (i, source) in pr.sources.iter().flatten().enumerate() {
            let unsupported = |kind: &str| Error::Unsupported {
                volume: name.clone(),
                kind: format!("projected {kind} (source {i})"),
            };
            let outcome = if let Some(cm) = source.config_map.as_ref() {
                let data = match config_map_lookup(objects, &cm.name) {
                    None => return Err(unsupported("configMap")),
                    Some(l) => l,
                };
                key_files(
                    &name,
                    &Source::ConfigMap(&cm.name),
                    data,
                    cm.optional.unwrap_or(false),
                    cm.items.as_deref(),
                    pr.default_mode,
                    &mut payload,
                )
            } else if let Some(sp) = source.secret.as_ref() {
                sensitive = true;
                let data = match secret_lookup(objects, &sp.name) {
                    None => return Err(unsupported("secret")),
                    Some(l) => l,
                };
                key_files(
                    &name,
                    &Source::Secret(&sp.name),
                    data,
                    sp.optional.unwrap_or(false),
                    sp.items.as_deref(),
                    pr.default_mode,
                    &mut payload,
                )
            } else if let Some(tp) = source.service_account_token.as_ref() {
                sensitive = true;
                let token = match objects.tokens.get(&TokenSpec::of(tp)) {
                    None => return Err(unsupported("serviceAccountToken")),
                    Some(t) => t,
                };
                token_file(&name, tp, token, pr.default_mode, fs_group, &mut payload)
            } else if let Some(da) = source.downward_api.as_ref() {
                add_downward_items(
                    pod,
                    &name,
                    da.items.as_deref().unwrap_or_default(),
                    pr.default_mode,
                    node,
                    &mut payload,
                )
            } else if source.cluster_trust_bundle.is_some() {
                return Err(unsupported("clusterTrustBundle"));
            } else {
                Ok(())
            };
            match outcome {
                Ok(()) => {}
                Err(Error::SetUp { reason, .. }) => failures.push(reason),
                Err(e) => return Err(e),
            }
        }
        match failures.len() {
            0 => {}
            1 => {
                return Err(Error::SetUp {
                    volume: name,
                    reason: failures.remove(0),
                });
            }
            _ => {
                return Err(Error::SetUp {
                    volume: name,
                    reason: format!("[{}]", failures.join(", ")),
                });
            }
        }
        let dir = dir_for(VolumeKind::Projected)?;
        if sensitive {
            ensure_private_tmpfs(pod, vol, node, &dir)?;
        }
        publish(&dir, &payload, fs_group)?;
        return Ok(PreparedVolume {
            name,
            kind: VolumeKind::Projected,
            host_path: dir,
        });
    }
    Err(Error::Unsupported {
        kind: source_kind(vol),
        volume: name,
    })
}

/// The JSON name of the volume's source (`configMap`, `persistentVolumeClaim`, …).
fn source_kind(vol: &Volume) -> String {
    match serde_json::to_value(vol) {
        Ok(serde_json::Value::Object(o)) => o
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k != "name")
            .unwrap_or_else(|| "sourceless".into()),
        _ => "unknown".into(),
    }
}

fn mkdir_mode(dir: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            // The umask trimmed the mode; set it as asked.
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dir))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let md = fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
            if md.is_dir() {
                Ok(())
            } else {
                Err(Error::Io {
                    op: "creating directory",
                    path: dir.to_path_buf(),
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "not a directory"),
                })
            }
        }
        Err(e) => Err(io_err("creating", dir)(e)),
    }
}

// ---------------------------------------------------------------------------------------
// emptyDir on tmpfs

/// The tmpfs size: the smallest of the node's allocatable memory, the pod's memory limit
/// (when every container declares one) and the volume's `sizeLimit`.
fn memory_volume_size(pod: &Pod, vol: &Volume, node: &NodeInfo) -> Result<i64> {
    let mut size = node.memory_bytes;
    if let Some(limit) = pod_memory_limit(pod)
        && limit > 0
        && (size <= 0 || limit < size)
    {
        size = limit;
    }
    if let Some(q) = vol.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) {
        let bytes = translate::parse_quantity(&q.0)
            .filter(|n| *n >= 0)
            .map(|n| translate::ceil_div(n, translate::NANO))
            .ok_or_else(|| Error::InvalidVolume {
                volume: vol.name.clone(),
                reason: format!("invalid sizeLimit {:?}", q.0),
            })?;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if bytes > 0 && (size <= 0 || bytes < size) {
            size = bytes;
        }
    }
    Ok(size)
}

/// Regular and sidecar containers run together, init containers one at a time: the pod
/// may use the larger of the two sums. `None` when any container has no memory limit.
fn pod_memory_limit(pod: &Pod) -> Option<i64> {
    let mut running: i128 = 0;
    let mut init_peak: i128 = 0;
    let mut sidecars: i128 = 0;
    for (kind, c) in translate::containers(pod) {
        let limit = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| translate::parse_quantity(&q.0))
            .filter(|n| *n > 0)
            .map(|n| translate::ceil_div(n, translate::NANO))?;
        match kind {
            translate::ContainerKind::Init => init_peak = init_peak.max(sidecars + limit),
            translate::ContainerKind::Sidecar => {
                sidecars += limit;
                running += limit;
            }
            translate::ContainerKind::Regular => running += limit,
        }
    }
    i64::try_from(running.max(init_peak)).ok()
}

fn mount_tmpfs(dir: &Path, size: i64) -> Result<()> {
    mount_tmpfs_with(dir, size, None)
}

fn mount_tmpfs_with(dir: &Path, size: i64, mode: Option<u32>) -> Result<()> {
    let mut opts = Vec::new();
    if size > 0 {
        opts.push(format!("size={size}"));
    }
    if let Some(m) = mode {
        opts.push(format!("mode={m:o}"));
    }
    let data = opts.join(",");
    debug!(path = %dir.display(), %data, "mount tmpfs");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|source| Error::Mount {
        op: "mounting tmpfs on",
        path: dir.to_path_buf(),
        source,
    })
}

/// Whether `dir` is the root of a mount: its device differs from its parent's, or
/// mountinfo lists it (bind mounts of the same filesystem).
fn is_mount_point(dir: &Path) -> Result<bool> {
    let md = fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    if let Some(parent) = dir.parent() {
        let pmd = fs::symlink_metadata(parent).map_err(io_err("stat", parent))?;
        if pmd.dev() != md.dev() {
            return Ok(true);
        }
    }
    Ok(mount_points_under(dir)?.iter().any(|m| m == dir))
}

/// Mount points at or below `dir` per /proc/self/mountinfo, deepest first.
fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(info).map_err(io_err("reading", info))?;
    let base = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(&base))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// fsGroup: the group owns everything in the volume, can read (and, unless read-only,
/// write) it, and new files inherit the group (setgid directories).
fn set_group_ownership(path: &Path, gid: i64, read_only: bool) -> Result<()> {
    let gid = u32::try_from(gid).map_err(|_| Error::InvalidVolume {
        volume: path.display().to_string(),
        reason: format!("fsGroup {gid} is out of range"),
    })?;
    let md = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if md.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err("chown", path))?;
    let mut mask = if read_only { 0o440 } else { 0o660 };
    if md.is_dir() {
        mask |= 0o2110;
    }
    let mode = (md.mode() & 0o7777) | mask;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))?;
    if md.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err("reading", path))? {
            let entry = entry.map_err(io_err("reading", path))?;
            set_group_ownership(&entry.path(), i64::from(gid), read_only)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// hostPath

fn check_host_path(volume: &str, path: &Path, kind: &str) -> Result<()> {
    let fail = |reason: String| Error::HostPathType {
        volume: volume.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let md = match fs::metadata(path) {
        Ok(md) => Some(md),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    let ft = md.as_ref().map(fs::Metadata::file_type);
    let must = |what: &str, ok: bool| {
        if ok {
            Ok(())
        } else if md.is_none() {
            Err(fail(format!("{what} does not exist")))
        } else {
            Err(fail(format!("is not a {what}")))
        }
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => match ft {
            None => {
                debug!(path = %path.display(), "creating hostPath directory");
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(path)
                    .map_err(io_err("creating", path))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", path))
            }
            Some(t) => must("directory", t.is_dir()),
        },
        "Directory" => must("directory", ft.is_some_and(|t| t.is_dir())),
        "FileOrCreate" => match ft {
            None => {
                debug!(path = %path.display(), "creating hostPath file");
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(io_err("creating", path))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o644))
                    .map_err(io_err("chmod", path))
            }
            // Upstream requires a regular file here too: not a socket or device.
            Some(t) => must("file", t.is_file()),
        },
        "File" => must("file", ft.is_some_and(|t| t.is_file())),
        "Socket" => must("socket", ft.is_some_and(|t| t.is_socket())),
        "CharDevice" => must("character device", ft.is_some_and(|t| t.is_char_device())),
        "BlockDevice" => must("block device", ft.is_some_and(|t| t.is_block_device())),
        other => Err(Error::InvalidVolume {
            volume: volume.to_string(),
            reason: format!("unknown hostPath type {other:?}"),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// configMap, secret and token files

/// An object's keys (config map `data` and `binaryData`; secret `data`), None: not
/// fetched.
fn config_map_lookup(
    objects: &PodObjects,
    name: &str,
) -> Option<Lookup<BTreeMap<String, Vec<u8>>>> {
    let l = objects.config_maps.get(name)?;
    Some(match l {
        Lookup::Found(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.iter().flatten() {
                data.insert(k.clone(), v.0.clone());
            }
            Lookup::Found(data)
        }
        Lookup::NotFound => Lookup::NotFound,
        Lookup::Failed(m) => Lookup::Failed(m.clone()),
    })
}

fn secret_lookup(objects: &PodObjects, name: &str) -> Option<Lookup<BTreeMap<String, Vec<u8>>>> {
    let l = objects.secrets.get(name)?;
    Some(match l {
        Lookup::Found(s) => Lookup::Found(crate::objects::secret_data(s)),
        Lookup::NotFound => Lookup::NotFound,
        Lookup::Failed(m) => Lookup::Failed(m.clone()),
    })
}

/// A configMap or secret volume's lookup, or unsupported when it was not fetched.
fn object_data<T>(volume: &str, kind: &str, l: Option<Lookup<T>>) -> Result<Lookup<T>> {
    l.ok_or_else(|| Error::Unsupported {
        volume: volume.to_string(),
        kind: kind.to_string(),
    })
}

/// Where a volume's keys come from, for upstream's error messages.
enum Source<'a> {
    ConfigMap(&'a str),
    Secret(&'a str),
}

impl Source<'_> {
    fn not_found(&self) -> String {
        match self {
            Source::ConfigMap(n) => format!("configmap \"{n}\" not found"),
            Source::Secret(n) => format!("secret \"{n}\" not found"),
        }
    }

    fn missing_key(&self, key: &str) -> String {
        match self {
            Source::ConfigMap(_) => format!("configmap references non-existent config key: {key}"),
            Source::Secret(_) => format!("references non-existent secret key: {key}"),
        }
    }
}

/// The files of a config map or secret as upstream's MakePayload makes them: every key
/// (or only the `items`, each at its path), with the item's mode or the default mode.
/// A missing object or key fails unless `optional` (then it is left out).
fn key_files(
    volume: &str,
    source: &Source<'_>,
    data: Lookup<BTreeMap<String, Vec<u8>>>,
    optional: bool,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    payload: &mut BTreeMap<PathBuf, FileContent>,
) -> Result<()> {
    let set_up = |reason: String| Error::SetUp {
        volume: volume.to_string(),
        reason,
    };
    let data = match data {
        Lookup::Found(d) => d,
        Lookup::NotFound if optional => BTreeMap::new(),
        Lookup::NotFound => return Err(set_up(source.not_found())),
        Lookup::Failed(m) => return Err(set_up(m)),
    };
    let mut add = |path: &str, content: &[u8], mode: Option<i32>| -> Result<()> {
        let rel = check_item_path(path).map_err(|r| Error::InvalidVolume {
            volume: volume.to_string(),
            reason: format!("path {path:?}: {r}"),
        })?;
        let mode = file_mode(volume, path, mode.or(default_mode))?;
        payload.insert(
            rel,
            FileContent {
                data: content.to_vec(),
                mode,
            },
        );
        Ok(())
    };
    match items {
        None | Some([]) => {
            for (k, v) in &data {
                add(k, v, None)?;
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => add(&item.path, v, item.mode)?,
                    None if optional => {}
                    None => return Err(set_up(source.missing_key(&item.key))),
                }
            }
        }
    }
    Ok(())
}

/// A file mode from the API (`0644` when unset), checked.
fn file_mode(volume: &str, path: &str, mode: Option<i32>) -> Result<u32> {
    let mode = mode.unwrap_or(DEFAULT_FILE_MODE);
    u32::try_from(mode)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| Error::InvalidVolume {
            volume: volume.to_string(),
            reason: format!("item {path}: mode {mode:#o} is out of range"),
        })
}

/// A projected token's file: the volume's default mode, or 0600 under an fsGroup (which
/// then makes it 0640), as upstream.
fn token_file(
    volume: &str,
    tp: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    token: &Lookup<crate::objects::Token>,
    default_mode: Option<i32>,
    fs_group: Option<i64>,
    payload: &mut BTreeMap<PathBuf, FileContent>,
) -> Result<()> {
    let token = match token {
        Lookup::Found(t) => t,
        Lookup::NotFound => {
            return Err(Error::SetUp {
                volume: volume.to_string(),
                reason: "the service account or the pod does not exist".into(),
            });
        }
        Lookup::Failed(m) => {
            return Err(Error::SetUp {
                volume: volume.to_string(),
                reason: m.clone(),
            });
        }
    };
    let rel = check_item_path(&tp.path).map_err(|r| Error::InvalidVolume {
        volume: volume.to_string(),
        reason: format!("path {:?}: {r}", tp.path),
    })?;
    let mode = if fs_group.is_some() {
        0o600
    } else {
        file_mode(volume, &tp.path, default_mode)?
    };
    payload.insert(
        rel,
        FileContent {
            data: token.token.clone().into_bytes(),
            mode,
        },
    );
    Ok(())
}

/// `dir` as the root of a tmpfs (mode 0755) of the pod's memory size: secrets and tokens
/// never touch a disk.
fn ensure_private_tmpfs(pod: &Pod, vol: &Volume, node: &NodeInfo, dir: &Path) -> Result<()> {
    mkdir_mode(dir, 0o755)?;
    if !is_mount_point(dir)? {
        let size = memory_volume_size(pod, vol, node)?;
        mount_tmpfs_with(dir, size, Some(0o755))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// downwardAPI files

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileContent {
    data: Vec<u8>,
    mode: u32,
}

const DEFAULT_FILE_MODE: i32 = 0o644;

fn add_downward_items(
    pod: &Pod,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    node: &NodeInfo,
    payload: &mut BTreeMap<PathBuf, FileContent>,
) -> Result<()> {
    let bad = |reason: String| Error::InvalidVolume {
        volume: volume.to_string(),
        reason,
    };
    for item in items {
        let rel =
            check_item_path(&item.path).map_err(|r| bad(format!("path {:?}: {r}", item.path)))?;
        let field = format!("volume {volume} item {}", item.path);
        let value = match (item.field_ref.as_ref(), item.resource_field_ref.as_ref()) {
            (Some(sel), None) => translate::field_ref_value(
                pod,
                &format!("{field}.fieldRef"),
                sel,
                FieldUse::Volume,
                node,
                "",
            )?,
            (None, Some(sel)) => {
                let cname = sel.container_name.as_deref().unwrap_or_default();
                let c = translate::find_container(pod, cname).ok_or_else(|| {
                    bad(format!(
                        "item {}: resourceFieldRef names no container {cname:?}",
                        item.path
                    ))
                })?;
                translate::resource_field_value(
                    pod,
                    &format!("{field}.resourceFieldRef"),
                    c,
                    sel,
                    node,
                )?
            }
            _ => {
                return Err(bad(format!(
                    "item {}: needs exactly one of fieldRef and resourceFieldRef",
                    item.path
                )));
            }
        };
        let mode = item.mode.or(default_mode).unwrap_or(DEFAULT_FILE_MODE);
        let mode = u32::try_from(mode)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                bad(format!(
                    "item {}: mode {mode:#o} is out of range",
                    item.path
                ))
            })?;
        if payload
            .insert(
                rel,
                FileContent {
                    data: value.into_bytes(),
                    mode,
                },
            )
            .is_some()
        {
            return Err(bad(format!("path {:?} is given twice", item.path)));
        }
    }
    Ok(())
}

/// A payload path: relative, no `..` component, not starting with `..`.
fn check_item_path(p: &str) -> Result<PathBuf, &'static str> {
    if p.is_empty() {
        return Err("is empty");
    }
    if p.starts_with("..") {
        return Err("starts with '..'");
    }
    let path = Path::new(p);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names no file");
    }
    Ok(out)
}

const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";

/// Publishes `payload` in `dir` with the `..data` swap; a no-op when the published files
/// are already exactly these.
fn publish(
    dir: &Path,
    payload: &BTreeMap<PathBuf, FileContent>,
    fs_group: Option<i64>,
) -> Result<()> {
    // With an fsGroup the group may read every file: fold that into the wanted modes so
    // an unchanged payload compares equal to what is on disk.
    let owned;
    let payload = match fs_group {
        None => payload,
        Some(_) => {
            owned = payload
                .iter()
                .map(|(p, c)| {
                    let mut c = c.clone();
                    c.mode |= 0o440;
                    (p.clone(), c)
                })
                .collect::<BTreeMap<_, _>>();
            &owned
        }
    };
    mkdir_mode(dir, 0o755)?;
    let data_link = dir.join(DATA_LINK);
    let old_ts = match fs::read_link(&data_link) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("reading link", &data_link)(e)),
    };
    if let Some(old) = old_ts.as_ref()
        && published_matches(&dir.join(old), payload)?
    {
        return ensure_user_links(dir, payload);
    }

    let ts_name = new_ts_dir(dir)?;
    let ts_dir = dir.join(&ts_name);
    for (rel, content) in payload {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("creating", parent))?;
        }
        fs::write(&path, &content.data).map_err(io_err("writing", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(content.mode))
            .map_err(io_err("chmod", &path))?;
    }
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &ts_dir))?;
    if let Some(gid) = fs_group {
        set_group_ownership(&ts_dir, gid, true)?;
    }

    let tmp_link = dir.join(DATA_TMP_LINK);
    match fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &tmp_link)(e)),
    }
    std::os::unix::fs::symlink(&ts_name, &tmp_link).map_err(io_err("symlinking", &tmp_link))?;
    fs::rename(&tmp_link, &data_link).map_err(io_err("renaming", &tmp_link))?;
    debug!(path = %dir.display(), ts = %ts_name, "published volume files");

    ensure_user_links(dir, payload)?;
    remove_stale_user_links(dir, payload)?;
    if let Some(old) = old_ts {
        let old_dir = dir.join(&old);
        // Only ever our own `..<timestamp>` directories.
        if old.components().count() == 1
            && old.to_string_lossy().starts_with("..")
            && old_dir != ts_dir
        {
            remove_tree(&old_dir)?;
        }
    }
    Ok(())
}

fn top_level_names(payload: &BTreeMap<PathBuf, FileContent>) -> Vec<OsString> {
    let mut names: Vec<OsString> = payload
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    names.dedup();
    names
}

/// `dir/<top>` → `..data/<top>` for every top-level name of the payload.
fn ensure_user_links(dir: &Path, payload: &BTreeMap<PathBuf, FileContent>) -> Result<()> {
    for name in top_level_names(payload) {
        let link = dir.join(&name);
        match fs::symlink_metadata(&link) {
            Ok(md) if md.file_type().is_symlink() => {}
            Ok(_) => {
                return Err(Error::Io {
                    op: "publishing",
                    path: link,
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "not a symlink"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let target = Path::new(DATA_LINK).join(&name);
                std::os::unix::fs::symlink(&target, &link).map_err(io_err("symlinking", &link))?;
            }
            Err(e) => return Err(io_err("stat", &link)(e)),
        }
    }
    Ok(())
}

fn remove_stale_user_links(dir: &Path, payload: &BTreeMap<PathBuf, FileContent>) -> Result<()> {
    let wanted = top_level_names(payload);
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("..") || wanted.contains(&name) {
            continue;
        }
        let path = entry.path();
        let points_into_data = fs::read_link(&path)
            .map(|t| t.starts_with(DATA_LINK))
            .unwrap_or(false);
        if points_into_data {
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
        }
    }
    Ok(())
}

/// Whether `ts_dir` holds exactly the payload's files, contents and modes.
fn published_matches(ts_dir: &Path, payload: &BTreeMap<PathBuf, FileContent>) -> Result<bool> {
    let mut found = BTreeMap::new();
    if collect_files(ts_dir, Path::new(""), &mut found).is_err() {
        return Ok(false);
    }
    Ok(&found == payload)
}

fn collect_files(
    dir: &Path,
    rel: &Path,
    out: &mut BTreeMap<PathBuf, FileContent>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        let rel = rel.join(entry.file_name());
        if md.is_dir() {
            collect_files(&entry.path(), &rel, out)?;
        } else if md.is_file() {
            out.insert(
                rel,
                FileContent {
                    data: fs::read(entry.path())?,
                    mode: md.mode() & 0o777,
                },
            );
        } else {
            return Err(io::Error::other("unexpected file type"));
        }
    }
    Ok(())
}

/// Creates `..YYYY_MM_DD_HH_MM_SS.<nanos>` in `dir` and returns its name.
fn new_ts_dir(dir: &Path) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let base = format!("..{}.{:09}", utc_stamp(now.as_secs()), now.subsec_nanos());
    for n in 0..100u32 {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}{n}")
        };
        let path = dir.join(&name);
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating", &path)(e)),
        }
    }
    Err(Error::Io {
        op: "creating timestamped directory in",
        path: dir.to_path_buf(),
        source: io::Error::new(io::ErrorKind::AlreadyExists, "every candidate name exists"),
    })
}

/// `YYYY_MM_DD_HH_MM_SS` (UTC) of seconds since the epoch.
fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------
// Mounts

/// The container's `volumeMounts` as CRI mounts. `subPathExpr` needs the container's
/// environment: use [`mounts_for_env`] for containers that have one.
pub fn mounts_for(c: &Container, vols: &PreparedVolumes) -> Result<Vec<v1::Mount>> {
    mounts_impl(c, vols, None)
}

/// [`mounts_for`] with `subPathExpr` expanded against `env` (from
/// [`translate::container_env`]).
pub fn mounts_for_env(
    c: &Container,
    vols: &PreparedVolumes,
    env: &[v1::KeyValue],
) -> Result<Vec<v1::Mount>> {
    mounts_impl(c, vols, Some(env))
}

fn mounts_impl(
    c: &Container,
    vols: &PreparedVolumes,
    env: Option<&[v1::KeyValue]>,
) -> Result<Vec<v1::Mount>> {
    let privileged = c
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false);
    let mut out: Vec<v1::Mount> = Vec::new();
    for (index, vm) in c.volume_mounts.iter().flatten().enumerate() {
        let bad = |reason: String| Error::InvalidMount {
            container: c.name.clone(),
            volume: vm.name.clone(),
            mount_path: vm.mount_path.clone(),
            reason,
        };
        let vol = vols.get(&vm.name).ok_or_else(|| Error::MissingVolume {
            container: c.name.clone(),
            volume: vm.name.clone(),
        })?;
        if !vm.mount_path.starts_with('/') {
            return Err(bad("mountPath must be absolute".into()));
        }
        if out.iter().any(|m| m.container_path == vm.mount_path) {
            return Err(bad("mountPath is used twice".into()));
        }
        let read_only = vm.read_only.unwrap_or(false) || vol.kind.always_read_only();
        let propagation = match vm.mount_propagation.as_deref() {
            None | Some("None") => v1::MountPropagation::PropagationPrivate,
            Some("HostToContainer") => v1::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") if privileged => v1::MountPropagation::PropagationBidirectional,
            Some("Bidirectional") => {
                return Err(bad(
                    "Bidirectional propagation needs a privileged container".into(),
                ));
            }
            Some(other) => return Err(bad(format!("unknown mountPropagation {other:?}"))),
        };
        let recursive_read_only = match vm.recursive_read_only.as_deref() {
            None | Some("Disabled") | Some("IfPossible") => false,
            Some("Enabled")
                if read_only && propagation == v1::MountPropagation::PropagationPrivate =>
            {
                true
            }
            Some("Enabled") => {
                return Err(bad(
                    "recursiveReadOnly Enabled needs readOnly and no propagation".into(),
                ));
            }
            Some(other) => return Err(bad(format!("unknown recursiveReadOnly {other:?}"))),
        };
        let sub_path = match (vm.sub_path.as_deref(), vm.sub_path_expr.as_deref()) {
            (Some(s), None) | (Some(s), Some("")) => s.to_string(),
            (None | Some(""), Some(expr)) => match env {
                Some(env) => {
                    // As upstream ExpandContainerVolumeMounts: a variable that is unset
                    // or empty is an error, not a literal `$(X)` or an empty segment.
                    let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
                    let expanded = translate::expand(expr, |name| {
                        let value = env
                            .iter()
                            .find(|kv| kv.key == name)
                            .map(|kv| kv.value.clone());
                        if value.as_deref().is_none_or(str::is_empty) {
                            missing.borrow_mut().insert(name.to_string());
                        }
                        Some(value.unwrap_or_default())
                    });
                    let missing = missing.into_inner();
                    if !missing.is_empty() {
                        let names: Vec<String> = missing.into_iter().collect();
                        return Err(bad(format!(
                            "subPathExpr {expr:?}: missing value for {}",
                            names.join(", ")
                        )));
                    }
                    expanded
                }
                None => {
                    return Err(bad(
                        "subPathExpr needs the container's environment (mounts_for_env)".into(),
                    ));
                }
            },
            (None, None) => String::new(),
            (Some(_), Some(_)) => {
                return Err(bad("subPath and subPathExpr are exclusive".into()));
            }
        };
        let host_path = if sub_path.is_empty() {
            vol.host_path.clone()
        } else {
            let target = vols
                .subpaths
                .join(&vm.name)
                .join(&c.name)
                .join(index.to_string());
            resolve_sub_path(&vol.host_path, &sub_path, !vol.kind.always_read_only())
                .and_then(|(base, real)| bind_sub_path(&base, &real, &target))
                .map_err(|reason| Error::InvalidSubPath {
                    container: c.name.clone(),
                    volume: vm.name.clone(),
                    sub_path: sub_path.clone(),
                    reason,
                })?
        };
        let host_path = host_path
            .to_str()
            .ok_or_else(|| bad(format!("host path {} is not UTF-8", host_path.display())))?
            .to_string();
        out.push(v1::Mount {
            container_path: vm.mount_path.clone(),
            host_path,
            readonly: read_only,
            propagation: propagation as i32,
            recursive_read_only,
            ..Default::default()
        });
    }
    Ok(out)
}

/// Where the checked subPath bind mounts of a pod go, beside its volumes directory.
pub fn subpaths_dir(volumes_root: &Path) -> PathBuf {
    volumes_root
        .parent()
        .unwrap_or(volumes_root)
        .join("volume-subpaths")
}

/// `base/sub` with every symlink resolved and kept inside `base`; missing components are
/// created as directories with `base`'s mode when `create`. Returns the canonical base
/// and the resolved path; the error is the reason. What it returns is only checked at
/// that moment: [`bind_sub_path`] pins it.
fn resolve_sub_path(base: &Path, sub: &str, create: bool) -> Result<(PathBuf, PathBuf), String> {
    if sub.starts_with('/') {
        return Err("must be relative".into());
    }
    let base_real =
        fs::canonicalize(base).map_err(|e| format!("volume path {}: {e}", base.display()))?;
    let base_mode = fs::metadata(&base_real)
        .map(|m| m.mode() & 0o7777)
        .map_err(|e| format!("volume path {}: {e}", base_real.display()))?;
    let mut cur = base_real.clone();
    for comp in Path::new(sub).components() {
        let name = match comp {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            Component::ParentDir => return Err("must not contain '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("must be relative".into()),
        };
        let next = cur.join(name);
        match fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                let real = fs::canonicalize(&next)
                    .map_err(|e| format!("symlink {}: {e}", next.display()))?;
                if !real.starts_with(&base_real) {
                    return Err(format!(
                        "symlink {} points out of the volume",
                        next.display()
                    ));
                }
                cur = real;
            }
            Ok(_) => cur = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                match fs::DirBuilder::new().mode(base_mode).create(&next) {
                    Ok(()) => {
                        fs::set_permissions(&next, fs::Permissions::from_mode(base_mode))
                            .map_err(|e| format!("chmod {}: {e}", next.display()))?;
                        cur = next;
                    }
                    // Raced with someone else: look at what is there now.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let real = fs::canonicalize(&next)
                            .map_err(|e| format!("{}: {e}", next.display()))?;
                        cur = real;
                    }
                    Err(e) => return Err(format!("creating {}: {e}", next.display())),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!("{} does not exist", next.display()));
            }
            Err(e) => return Err(format!("{}: {e}", next.display())),
        }
    }
    let real = fs::canonicalize(&cur).map_err(|e| format!("{}: {e}", cur.display()))?;
    if !real.starts_with(&base_real) {
        return Err("resolves out of the volume".into());
    }
    Ok((base_real, real))
}

/// Opens `real` (inside `base`, symlinks already resolved) one component at a time from
/// `base` with O_NOFOLLOW: if a component was swapped for a symlink since it was
/// checked, the open fails instead of following it out of the volume (the
/// CVE-2017-1002101 class). The fd is an O_PATH handle on exactly the checked inode.
fn open_no_follow(base: &Path, real: &Path) -> Result<std::os::fd::OwnedFd, String> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let rel = real
        .strip_prefix(base)
        .map_err(|_| format!("{} is not inside {}", real.display(), base.display()))?;
    let mut fd = open(base, flags | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| format!("opening {}: {e}", base.display()))?;
    let mut walked = base.to_path_buf();
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(format!("unexpected component in {}", rel.display()));
        };
        walked.push(name);
        let next = openat(&fd, name, flags, Mode::empty())
            .map_err(|e| format!("opening {}: {e}", walked.display()))?;
        let st =
            nix::sys::stat::fstat(&next).map_err(|e| format!("stat {}: {e}", walked.display()))?;
        if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK {
            return Err(format!(
                "{} changed into a symlink while it was being mounted",
                walked.display()
            ));
        }
        fd = next;
    }
    Ok(fd)
}

/// Bind mounts the checked `real` at `target` through its no-follow fd, so the container
/// gets that inode whatever happens to the path later; an earlier mount at `target`
/// (the previous instance of the container) is replaced.
fn bind_sub_path(base: &Path, real: &Path, target: &Path) -> Result<PathBuf, String> {
    use std::os::fd::AsRawFd;
    let fd = open_no_follow(base, real)?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| format!("stat {}: {e}", real.display()))?;
    let is_dir = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
    let parent = target.parent().unwrap_or(target);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(parent)
        .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    if mount_points_under(target)
        .map_err(|e| e.to_string())?
        .iter()
        .any(|m| m == target)
    {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting {}: {e}", target.display()))?;
    }
    match fs::symlink_metadata(target) {
        Ok(md) if md.is_dir() == is_dir && !md.file_type().is_symlink() => {}
        Ok(md) => {
            let removed = if md.is_dir() {
                fs::remove_dir(target)
            } else {
                fs::remove_file(target)
            };
            removed.map_err(|e| format!("removing {}: {e}", target.display()))?;
            make_mount_point(target, is_dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => make_mount_point(target, is_dir)?,
        Err(e) => return Err(format!("{}: {e}", target.display())),
    }
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    nix::mount::mount(
        Some(&source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "bind mounting {} at {}: {e}",
            real.display(),
            target.display()
        )
    })?;
    debug!(sub_path = %real.display(), at = %target.display(), "subPath mounted");
    Ok(target.to_path_buf())
}

fn make_mount_point(target: &Path, is_dir: bool) -> Result<(), String> {
    let made = if is_dir {
        fs::DirBuilder::new().mode(0o750).create(target)
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map(drop)
    };
    made.map_err(|e| format!("creating {}: {e}", target.display()))
}

// ---------------------------------------------------------------------------------------
// Cleanup

/// Unmounts what is mounted below `root` (tmpfs emptyDirs, anything else), then removes
/// `root` without following a symlink or crossing into another filesystem. hostPath
/// volumes live elsewhere and are left alone.
pub fn cleanup(root: &Path) -> Result<()> {
    match fs::symlink_metadata(root) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(Error::Io {
                op: "cleaning up",
                path: root.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", root)(e)),
    }
    for mount in mount_points_under(root)? {
        debug!(path = %mount.display(), "unmount");
        nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH).map_err(|source| {
            Error::Mount {
                op: "unmounting",
                path: mount.clone(),
                source,
            }
        })?;
    }
    remove_tree(root)
}

/// Removes `path` and what is below it, staying on `path`'s filesystem: symlinks are
/// removed, never followed; a directory on another device (a mount) is an error.
fn remove_tree(path: &Path) -> Result<()> {
    let md = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    remove_tree_on(path, md.dev())
}

fn remove_tree_on(path: &Path, dev: u64) -> Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if !md.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
            _ => Ok(()),
        };
    }
    if md.dev() != dev {
        return Err(Error::Io {
            op: "removing",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::ResourceBusy, "a filesystem is mounted here"),
        });
    }
    for entry in fs::read_dir(path).map_err(io_err("reading", path))? {
        let entry = entry.map_err(io_err("reading", path))?;
        remove_tree_on(&entry.path(), dev)?;
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::os::unix::fs::symlink;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn pod_with(volumes: Value, containers: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1",
                          "labels": {"app": "web", "tier": "front"}},
            "spec": {"volumes": volumes, "containers": containers},
        }))
        .expect("test pod parses")
    }

    fn node() -> NodeInfo {
        NodeInfo {
            node_name: "n1".into(),
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            ..Default::default()
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn container(v: Value) -> Container {
        serde_json::from_value(v).expect("test container parses")
    }

    #[test]
    fn pod_volume_dirs() {
        let root = VolumeRoot(PathBuf::from("/var/lib/nodelet/pods"));
        assert_eq!(
            root.pod_volumes("u1").ok(),
            Some(PathBuf::from("/var/lib/nodelet/pods/u1/volumes"))
        );
        for bad in ["", ".", "..", "a/b"] {
            assert!(root.pod_volumes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_path_types() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("dir");
        fs::create_dir(&dir)?;
        let file = tmp.path().join("file");
        fs::write(&file, "x")?;
        let sock = tmp.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock)?;
        let missing = tmp.path().join("missing");
        let chr = PathBuf::from("/dev/null");
        let block = fs::read_dir("/dev")?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()));

        let mut cases: Vec<(&str, &Path, bool)> = vec![
            ("", &missing, true),
            ("", &file, true),
            ("Directory", &dir, true),
            ("Directory", &file, false),
            ("Directory", &missing, false),
            ("File", &file, true),
            ("File", &dir, false),
            ("File", &missing, false),
            ("Socket", &sock, true),
            ("Socket", &file, false),
            ("CharDevice", &chr, true),
            ("CharDevice", &file, false),
            ("BlockDevice", &file, false),
            ("BlockDevice", &missing, false),
            ("DirectoryOrCreate", &dir, true),
            ("DirectoryOrCreate", &file, false),
            ("FileOrCreate", &file, true),
            ("FileOrCreate", &dir, false),
            ("FileOrCreate", &sock, false),
            ("FileOrCreate", &chr, false),
            ("Bogus", &dir, false),
        ];
        if let Some(b) = block.as_deref() {
            cases.push(("BlockDevice", b, true));
        }
        for (kind, path, ok) in cases {
            let got = check_host_path("v", path, kind);
            assert_eq!(got.is_ok(), ok, "{kind:?} on {}: {got:?}", path.display());
        }

        let created_dir = tmp.path().join("new/nested");
        check_host_path("v", &created_dir, "DirectoryOrCreate")?;
        assert_eq!(fs::metadata(&created_dir)?.mode() & 0o7777, 0o755);
        let created_file = tmp.path().join("new/file");
        check_host_path("v", &created_file, "FileOrCreate")?;
        let md = fs::metadata(&created_file)?;
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o7777, 0o644);
        let err = check_host_path("v", &tmp.path().join("nope/file"), "FileOrCreate");
        assert!(err.is_err(), "FileOrCreate does not create parents");
        Ok(())
    }

    #[test]
    fn host_path_volume_must_be_absolute() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pod = pod_with(
            json!([{"name": "h", "hostPath": {"path": "relative"}}]),
            json!([]),
        );
        let err = prepare(&pod, tmp.path(), &node()).expect_err("relative");
        assert!(err.to_string().contains("volume h"), "{err}");
        Ok(())
    }

    #[test]
    fn unsupported_sources_name_the_volume() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let cases = [
            (
                json!({"name": "cm", "configMap": {"name": "x"}}),
                "configMap",
            ),
            (
                json!({"name": "s", "secret": {"secretName": "x"}}),
                "secret",
            ),
            (
                json!({"name": "claim", "persistentVolumeClaim": {"claimName": "x"}}),
                "persistentVolumeClaim",
            ),
            (
                json!({"name": "p", "projected": {"sources": [{"secret": {"name": "x"}}]}}),
                "projected secret",
            ),
            (
                json!({"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}),
                "projected serviceAccountToken",
            ),
            (
                json!({"name": "hp", "emptyDir": {"medium": "HugePages"}}),
                "emptyDir medium HugePages",
            ),
        ];
        for (vol, kind) in cases {
            let name = vol["name"].as_str().unwrap_or_default().to_string();
            let pod = pod_with(json!([vol]), json!([]));
            let err = prepare(&pod, tmp.path(), &node()).expect_err(kind);
            let text = err.to_string();
            assert!(matches!(err, Error::Unsupported { .. }), "{text}");
            assert!(
                text.contains(&format!("volume {name}")) && text.contains(kind),
                "{text}"
            );
        }
        let pod = pod_with(
            json!([{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]),
            json!([]),
        );
        assert!(
            prepare(&pod, tmp.path(), &node()).is_err(),
            "duplicate names"
        );
        Ok(())
    }

    #[test]
    fn empty_dir_on_disk() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("volumes");
        let pod = pod_with(json!([{"name": "scratch", "emptyDir": {}}]), json!([]));
        let vols = prepare(&pod, &root, &node())?;
        let v = vols.get("scratch").ok_or("no volume")?;
        assert_eq!(v.kind, VolumeKind::EmptyDir);
        assert_eq!(v.host_path, root.join("kubernetes.io~empty-dir/scratch"));
        assert_eq!(fs::metadata(&v.host_path)?.mode() & 0o7777, 0o777);
        fs::write(v.host_path.join("kept"), "x")?;
        let again = prepare(&pod, &root, &node())?;
        assert_eq!(again, vols);
        assert!(v.host_path.join("kept").exists(), "prepare keeps content");
        Ok(())
    }

    #[test]
    fn empty_dir_fs_group() -> TestResult {
        if !is_root() {
            eprintln!("skipping empty_dir_fs_group: needs root for chown");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let mut pod = pod_with(
            json!([
                {"name": "scratch", "emptyDir": {}},
                {"name": "info", "downwardAPI": {"defaultMode": 0o600, "items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            ]),
            json!([]),
        );
        if let Some(spec) = pod.spec.as_mut() {
            spec.security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
                fs_group: Some(4321),
                ..Default::default()
            });
        }
        let vols = prepare(&pod, tmp.path(), &node())?;
        let md = fs::metadata(&vols.get("scratch").ok_or("no volume")?.host_path)?;
        assert_eq!(md.gid(), 4321);
        assert_eq!(md.mode() & 0o2000, 0o2000, "setgid");
        let info = vols.get("info").ok_or("no volume")?.host_path.clone();
        let file = fs::metadata(info.join("name"))?;
        assert_eq!((file.gid(), file.mode() & 0o777), (4321, 0o640));
        let ts = fs::read_link(info.join("..data"))?;
        prepare(&pod, tmp.path(), &node())?;
        assert_eq!(
            fs::read_link(info.join("..data"))?,
            ts,
            "unchanged is not republished"
        );
        Ok(())
    }

    fn mount_fstype_and_options(path: &Path) -> Option<(String, String)> {
        let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
        text.lines().find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if Path::new(fields.get(4)?) != path {
                return None;
            }
            Some((
                fields.get(sep + 1)?.to_string(),
                fields.get(sep + 3)?.to_string(),
            ))
        })
    }

    #[test]
    fn memory_empty_dir_is_tmpfs_with_size() -> TestResult {
        if !is_root() {
            eprintln!("skipping memory_empty_dir_is_tmpfs_with_size: needs root to mount");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let root = fs::canonicalize(tmp.path())?.join("volumes");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside)?;
        fs::write(outside.join("precious"), "keep")?;
        let pod = pod_with(
            json!([
                {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "capped", "emptyDir": {"medium": "Memory"}},
                {"name": "disk", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": outside.to_string_lossy()}},
            ]),
            json!([{"name": "a", "image": "x", "resources": {"limits": {"memory": "8Mi"}}}]),
        );
        let vols = prepare(&pod, &root, &node())?;
        let mem = vols.get("mem").ok_or("no volume")?.host_path.clone();
        let (fstype, options) = mount_fstype_and_options(&mem).ok_or("mem is not mounted")?;
        assert_eq!(fstype, "tmpfs");
        assert!(
            options.contains("size=8192k"),
            "pod limit below sizeLimit wins: {options}"
        );
        let capped = vols.get("capped").ok_or("no volume")?.host_path.clone();
        let (_, options) = mount_fstype_and_options(&capped).ok_or("capped is not mounted")?;
        assert!(options.contains("size=8192k"), "{options}");

        // Idempotent: no second mount on top.
        prepare(&pod, &root, &node())?;
        let text = fs::read_to_string("/proc/self/mountinfo")?;
        let count = text
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(&*mem.to_string_lossy()))
            .count();
        assert_eq!(count, 1);

        // A symlink out of the volume must not be followed by cleanup.
        fs::write(mem.join("data"), "x")?;
        symlink(&outside, mem.join("escape"))?;
        symlink(&outside, root.join("kubernetes.io~empty-dir/disk/escape"))?;
        cleanup(&root)?;
        assert!(!root.exists());
        assert!(mount_fstype_and_options(&mem).is_none(), "unmounted");
        assert_eq!(fs::read_to_string(outside.join("precious"))?, "keep");
        cleanup(&root)?;
        Ok(())
    }

    #[test]
    fn cleanup_without_mounts() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("volumes");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside)?;
        fs::write(outside.join("precious"), "keep")?;
        let pod = pod_with(
            json!([
                {"name": "disk", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": outside.to_string_lossy(), "type": "Directory"}},
                {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            ]),
            json!([]),
        );
        let vols = prepare(&pod, &root, &node())?;
        let disk = vols.get("disk").ok_or("no volume")?.host_path.clone();
        fs::create_dir_all(disk.join("a/b"))?;
        symlink(&outside, disk.join("a/escape"))?;
        symlink(outside.join("precious"), disk.join("file-link"))?;
        cleanup(&root)?;
        assert!(!root.exists());
        assert_eq!(fs::read_to_string(outside.join("precious"))?, "keep");
        cleanup(&root)?;
        Ok(())
    }

    fn read_published(dir: &Path) -> BTreeMap<String, (String, u32)> {
        let mut out = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("..") {
                    continue;
                }
                let p = e.path();
                let mut stack = vec![(p, name)];
                while let Some((p, rel)) = stack.pop() {
                    match fs::metadata(&p) {
                        Ok(m) if m.is_dir() => {
                            for c in fs::read_dir(&p).into_iter().flatten().flatten() {
                                let n = c.file_name().to_string_lossy().into_owned();
                                stack.push((c.path(), format!("{rel}/{n}")));
                            }
                        }
                        Ok(m) => {
                            let text = fs::read_to_string(&p).unwrap_or_default();
                            out.insert(rel, (text, m.mode() & 0o777));
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        out
    }

    #[test]
    fn downward_api_files() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("volumes");
        let vols_json = json!([{"name": "info", "downwardAPI": {"defaultMode": 0o600, "items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}, "mode": 0o644},
            {"path": "meta/ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
            {"path": "meta/app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "a", "resource": "limits.memory", "divisor": "1Mi"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "a", "resource": "limits.cpu", "divisor": "1m"}},
        ]}}]);
        let containers =
            json!([{"name": "a", "image": "x", "resources": {"limits": {"memory": "64Mi"}}}]);
        let mut pod = pod_with(vols_json.clone(), containers.clone());
        let vols = prepare(&pod, &root, &node())?;
        let v = vols.get("info").ok_or("no volume")?;
        assert_eq!(v.kind, VolumeKind::DownwardApi);
        let dir = v.host_path.clone();
        assert_eq!(dir, root.join("kubernetes.io~downward-api/info"));

        let files = read_published(&dir);
        let want: BTreeMap<String, (String, u32)> = [
            ("name", ("web", 0o600)),
            ("labels", ("app=\"web\"\ntier=\"front\"", 0o644)),
            ("meta/ns", ("ns", 0o600)),
            ("meta/app", ("web", 0o600)),
            ("mem", ("64", 0o600)),
            ("cpu", ("2000", 0o600)),
        ]
        .into_iter()
        .map(|(k, (t, m))| (k.to_string(), (t.to_string(), m)))
        .collect();
        assert_eq!(files, want);

        // The layout: ..data → ..<timestamp>, user names → ..data/<name>.
        let ts = fs::read_link(dir.join("..data"))?;
        let ts_name = ts.to_string_lossy().into_owned();
        assert!(
            ts_name.starts_with("..") && ts.components().count() == 1,
            "{ts_name}"
        );
        assert_eq!(fs::read_link(dir.join("name"))?, Path::new("..data/name"));
        assert_eq!(fs::read_link(dir.join("meta"))?, Path::new("..data/meta"));
        assert!(fs::symlink_metadata(dir.join(&ts))?.is_dir());

        // Unchanged: nothing is republished.
        prepare(&pod, &root, &node())?;
        assert_eq!(fs::read_link(dir.join("..data"))?, ts);

        // New labels and a dropped item: a new timestamp dir, the old one and the stale
        // link are gone.
        pod.metadata.labels = Some(
            [("app".to_string(), "api".to_string())]
                .into_iter()
                .collect(),
        );
        if let Some(items) = pod
            .spec
            .as_mut()
            .and_then(|s| s.volumes.as_mut())
            .and_then(|v| v[0].downward_api.as_mut())
            .and_then(|d| d.items.as_mut())
        {
            items.retain(|i| i.path != "cpu");
        }
        prepare(&pod, &root, &node())?;
        let ts2 = fs::read_link(dir.join("..data"))?;
        assert_ne!(ts2, ts);
        assert!(!dir.join(&ts).exists(), "old timestamp dir removed");
        assert!(
            fs::symlink_metadata(dir.join("cpu")).is_err(),
            "stale link removed"
        );
        assert!(!dir.join("..data_tmp").exists());
        let files = read_published(&dir);
        assert_eq!(
            files.get("labels").map(|f| f.0.as_str()),
            Some("app=\"api\"")
        );
        assert_eq!(files.get("meta/app").map(|f| f.0.as_str()), Some("api"));
        Ok(())
    }

    #[test]
    fn downward_api_rejects_bad_items() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let cases = [
            json!({"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}),
            json!({"path": "/abs", "fieldRef": {"fieldPath": "metadata.name"}}),
            json!({"path": "a/../../x", "fieldRef": {"fieldPath": "metadata.name"}}),
            json!({"path": "..hidden", "fieldRef": {"fieldPath": "metadata.name"}}),
            json!({"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}),
            json!({"path": "x", "resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}}),
            json!({"path": "x", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o1777}),
            json!({"path": "x"}),
        ];
        for item in cases {
            let pod = pod_with(
                json!([{"name": "info", "downwardAPI": {"items": [item.clone()]}}]),
                json!([{"name": "a", "image": "x"}]),
            );
            assert!(prepare(&pod, tmp.path(), &node()).is_err(), "{item}");
        }
        Ok(())
    }

    #[test]
    fn projected_downward_api() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pod = pod_with(
            json!([{"name": "p", "projected": {"defaultMode": 0o640, "sources": [
                {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"downwardAPI": {"items": [{"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}}]}},
            ]}}]),
            json!([]),
        );
        let vols = prepare(&pod, tmp.path(), &node())?;
        let v = vols.get("p").ok_or("no volume")?;
        assert_eq!(v.kind, VolumeKind::Projected);
        let files = read_published(&v.host_path);
        assert_eq!(files.get("name"), Some(&("web".to_string(), 0o640)));
        assert_eq!(files.get("uid"), Some(&("u1".to_string(), 0o640)));
        Ok(())
    }

    /// Both paths are the same inode (a bind mount of the other).
    fn same_file(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    #[test]
    fn mounts_from_volume_mounts() -> TestResult {
        if !is_root() {
            eprintln!("skipping mounts_from_volume_mounts: needs root to bind mount a subPath");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let host = tmp.path().join("host");
        fs::create_dir(&host)?;
        let pod = pod_with(
            json!([
                {"name": "scratch", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": host.to_string_lossy()}},
                {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            ]),
            json!([]),
        );
        let root = tmp.path().join("volumes");
        let vols = prepare(&pod, &root, &node())?;
        let scratch = vols.get("scratch").ok_or("no volume")?.host_path.clone();
        let pinned = subpaths_dir(&root).join("scratch/app/3");
        let c = container(json!({"name": "app", "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "host", "mountPath": "/host", "readOnly": true, "mountPropagation": "HostToContainer"},
            {"name": "info", "mountPath": "/etc/info"},
            {"name": "scratch", "mountPath": "/sub", "subPath": "a/b"},
        ]}));
        let mounts = mounts_for(&c, &vols)?;
        let got: Vec<(&str, String, bool, i32)> = mounts
            .iter()
            .map(|m| {
                (
                    m.container_path.as_str(),
                    m.host_path.clone(),
                    m.readonly,
                    m.propagation,
                )
            })
            .collect();
        let private = v1::MountPropagation::PropagationPrivate as i32;
        assert_eq!(
            got,
            vec![
                (
                    "/scratch",
                    scratch.to_string_lossy().into_owned(),
                    false,
                    private
                ),
                (
                    "/host",
                    host.to_string_lossy().into_owned(),
                    true,
                    v1::MountPropagation::PropagationHostToContainer as i32
                ),
                (
                    "/etc/info",
                    vols.get("info")
                        .ok_or("no volume")?
                        .host_path
                        .to_string_lossy()
                        .into_owned(),
                    true,
                    private
                ),
                (
                    "/sub",
                    pinned.to_string_lossy().into_owned(),
                    false,
                    private
                ),
            ]
        );
        assert!(scratch.join("a/b").is_dir(), "subPath created");
        assert!(
            same_file(&pinned, scratch.join("a/b")),
            "the subPath is bind mounted"
        );
        // The next instance of the container replaces the mount, not stacks on it.
        mounts_for(&c, &vols)?;
        let stacked = mount_points_under(&subpaths_dir(&root))?;
        assert_eq!(stacked, vec![pinned.clone()]);
        cleanup(&subpaths_dir(&root))?;
        assert!(!subpaths_dir(&root).exists());
        assert!(scratch.join("a/b").is_dir(), "the volume is left alone");
        assert_eq!(
            fs::metadata(scratch.join("a/b"))?.mode() & 0o7777,
            0o777,
            "volume's mode"
        );

        let bidi = |privileged: bool| {
            container(
                json!({"name": "app", "securityContext": {"privileged": privileged},
                "volumeMounts": [{"name": "host", "mountPath": "/h", "mountPropagation": "Bidirectional"}]}),
            )
        };
        let m = mounts_for(&bidi(true), &vols)?;
        assert_eq!(
            m[0].propagation,
            v1::MountPropagation::PropagationBidirectional as i32
        );
        assert!(mounts_for(&bidi(false), &vols).is_err());

        let rro = container(json!({"name": "app", "volumeMounts": [
            {"name": "host", "mountPath": "/h", "readOnly": true, "recursiveReadOnly": "Enabled"}]}));
        assert!(mounts_for(&rro, &vols)?[0].recursive_read_only);

        let bad = [
            (
                json!([{"name": "nope", "mountPath": "/x"}]),
                "no volume nope",
            ),
            (json!([{"name": "scratch", "mountPath": "rel"}]), "absolute"),
            (
                json!([{"name": "scratch", "mountPath": "/x"}, {"name": "host", "mountPath": "/x"}]),
                "twice",
            ),
            (
                json!([{"name": "scratch", "mountPath": "/x", "mountPropagation": "Sideways"}]),
                "mountPropagation",
            ),
            (
                json!([{"name": "scratch", "mountPath": "/x", "recursiveReadOnly": "Enabled"}]),
                "recursiveReadOnly",
            ),
            (
                json!([{"name": "scratch", "mountPath": "/x", "subPathExpr": "$(POD)"}]),
                "mounts_for_env",
            ),
        ];
        for (vms, want) in bad {
            let c = container(json!({"name": "app", "volumeMounts": vms}));
            let err = mounts_for(&c, &vols).expect_err(want);
            assert!(err.to_string().contains(want), "{err}");
            assert!(err.to_string().contains("container app"), "{err}");
        }
        Ok(())
    }

    #[test]
    fn sub_path_escapes_are_refused() -> TestResult {
        if !is_root() {
            eprintln!("skipping sub_path_escapes_are_refused: needs root to bind mount a subPath");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside)?;
        let pod = pod_with(json!([{"name": "v", "emptyDir": {}}]), json!([]));
        let vols = prepare(&pod, &tmp.path().join("volumes"), &node())?;
        let base = vols.get("v").ok_or("no volume")?.host_path.clone();
        fs::create_dir(base.join("inner"))?;
        symlink(&outside, base.join("out"))?;
        symlink("../..", base.join("inner/up"))?;
        symlink("inner", base.join("in"))?;
        symlink("/etc", base.join("abs"))?;

        let cases: &[(&str, bool)] = &[
            ("inner", true),
            ("in", true),
            ("in/new", true),
            ("./inner/./x", true),
            ("..", false),
            ("a/../..", false),
            ("a/../b", false),
            ("/etc", false),
            ("out", false),
            ("out/x", false),
            ("inner/up", false),
            ("abs", false),
        ];
        for (sub, ok) in cases {
            let c = container(json!({"name": "app", "volumeMounts": [
                {"name": "v", "mountPath": "/m", "subPath": sub}]}));
            let got = mounts_for(&c, &vols);
            assert_eq!(got.is_ok(), *ok, "{sub:?}: {got:?}");
            if let Err(e) = got {
                assert!(matches!(e, Error::InvalidSubPath { .. }), "{sub:?}: {e}");
            }
        }
        assert!(!outside.join("x").exists(), "nothing created outside");
        let c = container(json!({"name": "app", "volumeMounts": [
            {"name": "v", "mountPath": "/m", "subPath": "in/new"}]}));
        let m = mounts_for(&c, &vols)?;
        assert!(
            same_file(&m[0].host_path, base.join("inner/new")),
            "resolved through the symlink"
        );
        cleanup(&subpaths_dir(&tmp.path().join("volumes")))?;
        Ok(())
    }

    #[test]
    fn a_component_swapped_for_a_symlink_is_not_followed() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let base = tmp.path().join("vol");
        fs::create_dir_all(base.join("a/b"))?;
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside)?;
        let (base_real, real) = resolve_sub_path(&base, "a/b", false)?;
        assert!(open_no_follow(&base_real, &real).is_ok());
        // Checked, then swapped (what a container racing the kubelet would do).
        fs::rename(base.join("a"), tmp.path().join("a.old"))?;
        symlink(&outside, base.join("a"))?;
        fs::create_dir(outside.join("b"))?;
        let err = open_no_follow(&base_real, &real).expect_err("symlink followed");
        assert!(err.contains("/vol/a"), "{err}");
        Ok(())
    }

    #[test]
    fn sub_path_expr_expands_env() -> TestResult {
        if !is_root() {
            eprintln!("skipping sub_path_expr_expands_env: needs root to bind mount a subPath");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let pod = pod_with(json!([{"name": "v", "emptyDir": {}}]), json!([]));
        let root = tmp.path().join("volumes");
        let vols = prepare(&pod, &root, &node())?;
        let c = container(json!({"name": "app", "volumeMounts": [
            {"name": "v", "mountPath": "/m", "subPathExpr": "logs/$(POD_NAME)"}]}));
        let env = [v1::KeyValue {
            key: "POD_NAME".into(),
            value: "web".into(),
        }];
        let m = mounts_for_env(&c, &vols, &env)?;
        let v = vols.get("v").ok_or("no volume")?;
        assert!(
            same_file(&m[0].host_path, v.host_path.join("logs/web")),
            "{}",
            m[0].host_path
        );
        cleanup(&subpaths_dir(&root))?;
        let evil = [v1::KeyValue {
            key: "POD_NAME".into(),
            value: "../../..".into(),
        }];
        assert!(mounts_for_env(&c, &vols, &evil).is_err());
        for env in [
            vec![],
            vec![v1::KeyValue {
                key: "POD_NAME".into(),
                value: String::new(),
            }],
        ] {
            let err = mounts_for_env(&c, &vols, &env).expect_err("unset or empty variable");
            assert!(
                err.to_string().contains("missing value for POD_NAME"),
                "{err}"
            );
        }
        Ok(())
    }

    #[test]
    fn timestamps() {
        let cases = [
            (0, "1970_01_01_00_00_00"),
            (951_782_400, "2000_02_29_00_00_00"),
            (1_700_000_000, "2023_11_14_22_13_20"),
            (4_102_444_799, "2099_12_31_23_59_59"),
        ];
        for (secs, want) in cases {
            assert_eq!(utc_stamp(secs), want, "{secs}");
        }
    }

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo("/a\\040b"), OsString::from("/a b"));
        assert_eq!(unescape_mountinfo("/a\\134b"), OsString::from("/a\\b"));
        assert_eq!(unescape_mountinfo("/plain\\"), OsString::from("/plain\\"));
    }

    // -----------------------------------------------------------------------------------
    // API object volumes

    fn objects_with(cms: Value, secrets: Value) -> PodObjects {
        let mut o = PodObjects::default();
        for (name, v) in cms.as_object().into_iter().flatten() {
            let l = if v.is_null() {
                Lookup::NotFound
            } else if let Some(m) = v.as_str() {
                Lookup::Failed(m.to_string())
            } else {
                Lookup::Found(serde_json::from_value(v.clone()).expect("configmap"))
            };
            o.config_maps.insert(name.clone(), l);
        }
        for (name, v) in secrets.as_object().into_iter().flatten() {
            let l = if v.is_null() {
                Lookup::NotFound
            } else {
                Lookup::Found(serde_json::from_value(v.clone()).expect("secret"))
            };
            o.secrets.insert(name.clone(), l);
        }
        o
    }

    /// Every file under `dir` by its path relative to it, symlinks as `-> target`.
    fn layout(dir: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((p, rel)) = stack.pop() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let md = fs::symlink_metadata(e.path()).expect("stat");
                if md.file_type().is_symlink() {
                    let t = fs::read_link(e.path()).expect("link");
                    out.insert(rel, format!("-> {}", t.display()));
                } else if md.is_dir() {
                    stack.push((e.path(), rel));
                } else {
                    out.insert(rel, format!("{:o}", md.mode() & 0o777));
                }
            }
        }
        out
    }

    #[test]
    fn config_map_volume_layout_items_and_modes() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("volumes");
        let cm = json!({"metadata": {"name": "cfg"},
            "data": {"app.conf": "port=80", "extra": "x"},
            "binaryData": {"blob": "AAEC"}});
        let all = pod_with(
            json!([{"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o640}}]),
            json!([]),
        );
        let objs = objects_with(json!({"cfg": cm}), json!({}));
        let vols = prepare_with(&all, &root, &node(), &objs)?;
        let v = vols.get("all").ok_or("no volume")?;
        assert_eq!(v.kind, VolumeKind::ConfigMap);
        assert_eq!(v.host_path, root.join("kubernetes.io~configmap/all"));
        let files = layout(&v.host_path);
        let ts = fs::read_link(v.host_path.join("..data"))?;
        let ts = ts.to_string_lossy().into_owned();
        assert!(ts.starts_with("..20"), "{ts}");
        let want: BTreeMap<String, String> = [
            ("..data".to_string(), format!("-> {ts}")),
            ("app.conf".into(), "-> ..data/app.conf".into()),
            ("extra".into(), "-> ..data/extra".into()),
            ("blob".into(), "-> ..data/blob".into()),
            (format!("{ts}/app.conf"), "640".into()),
            (format!("{ts}/extra"), "640".into()),
            (format!("{ts}/blob"), "640".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(files, want);
        assert_eq!(fs::read(v.host_path.join("blob"))?, vec![0u8, 1, 2]);
        assert_eq!(fs::read_to_string(v.host_path.join("app.conf"))?, "port=80");

        // items: only those keys, at their paths, with their modes.
        let picked = pod_with(
            json!([{"name": "some", "configMap": {"name": "cfg", "items": [
                {"key": "app.conf", "path": "conf/app.conf", "mode": 0o600},
                {"key": "extra", "path": "e"}]}}]),
            json!([]),
        );
        let vols = prepare_with(&picked, &root, &node(), &objs)?;
        let dir = &vols.get("some").ok_or("no volume")?.host_path;
        let files = read_published(dir);
        assert_eq!(
            files,
            [
                ("conf/app.conf".to_string(), ("port=80".to_string(), 0o600)),
                ("e".to_string(), ("x".to_string(), 0o644)),
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(fs::read_link(dir.join("conf"))?, Path::new("..data/conf"));
        Ok(())
    }

    #[test]
    fn an_updated_config_map_is_swapped_in_whole() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("volumes");
        let pod = pod_with(
            json!([{"name": "c", "configMap": {"name": "cfg"}}]),
            json!([]),
        );
        let v1 = objects_with(
            json!({"cfg": {"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "1"}}}),
            json!({}),
        );
        let dir = prepare_with(&pod, &root, &node(), &v1)?
            .get("c")
            .ok_or("no volume")?
            .host_path
            .clone();
        let first = fs::read_link(dir.join("..data"))?;
        // The same content: nothing is written.
        prepare_with(&pod, &root, &node(), &v1)?;
        assert_eq!(fs::read_link(dir.join("..data"))?, first);
        // New content, a key gone: a new timestamped directory, the old one removed.
        let v2 = objects_with(
            json!({"cfg": {"metadata": {"name": "cfg"}, "data": {"a": "2"}}}),
            json!({}),
        );
        prepare_with(&pod, &root, &node(), &v2)?;
        let second = fs::read_link(dir.join("..data"))?;
        assert_ne!(second, first);
        assert!(!dir.join(&first).exists());
        assert_eq!(fs::read_to_string(dir.join("a"))?, "2");
        assert!(
            fs::symlink_metadata(dir.join("b")).is_err(),
            "stale link removed"
        );
        Ok(())
    }

    #[test]
    fn missing_objects_and_keys_fail_as_upstream() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let objs = objects_with(
            json!({"cfg": {"metadata": {"name": "cfg"}, "data": {"a": "1"}},
                   "gone": null, "broken": "getting configmap ns/broken: connection refused"}),
            json!({"sec": {"metadata": {"name": "sec"}, "data": {"k": "dg=="}}, "nosec": null}),
        );
        let cases = [
            (
                json!({"name": "v", "configMap": {"name": "gone"}}),
                Some(r#"MountVolume.SetUp failed for volume "v" : configmap "gone" not found"#),
            ),
            (
                json!({"name": "v", "configMap": {"name": "gone", "optional": true}}),
                None,
            ),
            (
                json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}}),
                Some(
                    r#"MountVolume.SetUp failed for volume "v" : configmap references non-existent config key: zz"#,
                ),
            ),
            (
                json!({"name": "v", "configMap": {"name": "cfg", "optional": true, "items": [{"key": "zz", "path": "z"}]}}),
                None,
            ),
            (
                json!({"name": "v", "configMap": {"name": "broken"}}),
                Some(
                    r#"MountVolume.SetUp failed for volume "v" : getting configmap ns/broken: connection refused"#,
                ),
            ),
            (
                json!({"name": "v", "projected": {"sources": [
                    {"secret": {"name": "nosec"}},
                    {"secret": {"name": "sec", "items": [{"key": "nope", "path": "n"}]}},
                    {"configMap": {"name": "cfg"}}]}}),
                Some(
                    r#"MountVolume.SetUp failed for volume "v" : [secret "nosec" not found, references non-existent secret key: nope]"#,
                ),
            ),
        ];
        for (i, (vol, want)) in cases.into_iter().enumerate() {
            let root = tmp.path().join(i.to_string());
            let pod = pod_with(json!([vol]), json!([]));
            match (prepare_with(&pod, &root, &node(), &objs), want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => {
                    assert!(matches!(e, Error::SetUp { .. }), "{e}");
                    assert_eq!(e.to_string(), want);
                }
                (got, want) => panic!("{vol}: got {got:?}, want {want:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn secret_volumes_are_on_tmpfs() -> TestResult {
        if !is_root() {
            eprintln!("skipped: mounting tmpfs needs root");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("volumes");
        let pod = pod_with(
            json!([{"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400}}]),
            json!([{"name": "a", "image": "x", "resources": {"limits": {"memory": "32Mi"}}}]),
        );
        let objs = objects_with(
            json!({}),
            json!({"db": {"metadata": {"name": "db"}, "data": {"password": "czNjcjN0"},
                          "stringData": {"user": "admin"}}}),
        );
        let vols = prepare_with(&pod, &root, &node(), &objs)?;
        let v = vols.get("creds").ok_or("no volume")?;
        assert_eq!(v.kind, VolumeKind::Secret);
        assert_eq!(v.host_path, root.join("kubernetes.io~secret/creds"));
        let (fstype, opts) = mount_fstype_and_options(&v.host_path).ok_or("not mounted")?;
        assert_eq!(fstype, "tmpfs");
        assert!(opts.contains("size=32768k"), "{opts}");
        let files = read_published(&v.host_path);
        assert_eq!(files.get("password"), Some(&("s3cr3t".to_string(), 0o400)));
        assert_eq!(files.get("user"), Some(&("admin".to_string(), 0o400)));
        // Again: the same mount, nothing rewritten.
        let ts = fs::read_link(v.host_path.join("..data"))?;
        prepare_with(&pod, &root, &node(), &objs)?;
        assert_eq!(fs::read_link(v.host_path.join("..data"))?, ts);
        let mounts = mount_points_under(&root)?;
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        cleanup(&root)?;
        assert!(!root.exists());
        Ok(())
    }

    /// The volume the ServiceAccount admission plugin adds to every pod.
    fn kube_api_access() -> Value {
        json!({"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 0o644, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}})
    }

    #[test]
    fn the_default_service_account_volume() -> TestResult {
        if !is_root() {
            eprintln!("skipped: mounting tmpfs needs root");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("volumes");
        let mut pod = pod_with(json!([kube_api_access()]), json!([]));
        let mut objs = objects_with(
            json!({"kube-root-ca.crt": {"metadata": {"name": "kube-root-ca.crt"},
                   "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}}}),
            json!({}),
        );
        let spec = TokenSpec {
            audience: String::new(),
            expiration_seconds: 3607,
        };
        let token = |t: &str| {
            Lookup::Found(crate::objects::Token {
                token: t.into(),
                expiry: SystemTime::now() + std::time::Duration::from_secs(3607),
            })
        };
        objs.tokens.insert(spec.clone(), token("header.claims.sig"));
        let vols = prepare_with(&pod, &root, &node(), &objs)?;
        let v = vols.get("kube-api-access-x7k2p").ok_or("no volume")?;
        assert_eq!(v.kind, VolumeKind::Projected);
        let (fstype, _) = mount_fstype_and_options(&v.host_path).ok_or("not mounted")?;
        assert_eq!(fstype, "tmpfs", "a token is never on disk");
        let files = read_published(&v.host_path);
        let want: BTreeMap<String, (String, u32)> = [
            ("token", "header.claims.sig"),
            ("ca.crt", "-----BEGIN CERTIFICATE-----\n"),
            ("namespace", "ns"),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_string(), (t.to_string(), 0o644)))
        .collect();
        assert_eq!(files, want);

        // A renewed token replaces the whole set.
        let before = fs::read_link(v.host_path.join("..data"))?;
        objs.tokens
            .insert(spec.clone(), token("header.claims.sig2"));
        prepare_with(&pod, &root, &node(), &objs)?;
        assert_ne!(fs::read_link(v.host_path.join("..data"))?, before);
        assert_eq!(
            fs::read_to_string(v.host_path.join("token"))?,
            "header.claims.sig2"
        );

        // Under an fsGroup the token is 0640 and the group's.
        cleanup(&root)?;
        if let Some(s) = pod.spec.as_mut() {
            s.security_context = Some(serde_json::from_value(json!({"fsGroup": 2000}))?);
        }
        let vols = prepare_with(&pod, &root, &node(), &objs)?;
        let dir = &vols
            .get("kube-api-access-x7k2p")
            .ok_or("no volume")?
            .host_path;
        let md = fs::metadata(dir.join("token"))?;
        assert_eq!((md.mode() & 0o777, md.gid()), (0o640, 2000));
        assert_eq!(read_published(dir).get("ca.crt").map(|f| f.1), Some(0o644));

        // No token (the service account is gone): the volume cannot be set up.
        objs.tokens.insert(spec, Lookup::NotFound);
        let err = prepare_with(&pod, &root, &node(), &objs).expect_err("no token");
        assert!(matches!(err, Error::SetUp { .. }), "{err}");
        cleanup(&root)?;
        Ok(())
    }

    #[test]
    fn api_volumes_are_mounted_read_only() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let pod = pod_with(
            json!([{"name": "c", "configMap": {"name": "cfg"}}]),
            json!([]),
        );
        let objs = objects_with(
            json!({"cfg": {"metadata": {"name": "cfg"}, "data": {"a": "1"}}}),
            json!({}),
        );
        let vols = prepare_with(&pod, tmp.path(), &node(), &objs)?;
        let c = container(json!({"name": "a", "image": "x",
            "volumeMounts": [{"name": "c", "mountPath": "/etc/cfg"}]}));
        let m = mounts_for(&c, &vols)?;
        assert!(m[0].readonly);
        Ok(())
    }
}
