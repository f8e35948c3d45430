//! CRI configs + the image config → an OCI runtime spec (the bundle's `config.json`).
//!
//! Everything here is a pure function of its input plus a few small reads: the image's
//! `/etc/passwd` and `/etc/group` (resolved inside the rootfs, never through a symlink out
//! of it), `stat` of host paths named by mounts and devices, the kernel's capability count
//! and a Localhost seccomp profile. Nothing is spawned or mounted.
//!
//! The semantics follow what kubelet expects from containerd and CRI-O: Kubernetes'
//! command/args rules, image env overlaid by CRI env, user and groups from the image,
//! default capabilities ± add/drop, default system mounts replaced by CRI mounts on the
//! same path, masked and read-only paths, device cgroup rules, RuntimeDefault seccomp.
//!
//! Two host facts from the issue shape the output: this machine refuses negative
//! `oom_score_adj` and `RLIMIT_NOFILE` above its own limit, so both are clamped to what
//! [`HostLimits`] reports, with a warning, never an error.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr as _;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxCpu,
    LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxResources, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArg, LinuxSyscall, Mount, MountBuilder, PosixRlimit, PosixRlimitType, Process,
    Root, Spec, User,
};
use proto::v1;
use proto::v1::security_profile::ProfileType;
use serde::Deserialize;
use tracing::{debug, instrument, warn};

use super::{Namespaces, Ns, SandboxFiles};

/// Why a spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request (or the image it names) cannot be turned into a spec.
    #[error("{0}")]
    InvalidArgument(String),
    /// A file we had to read or write failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// oci-spec refused a value while building the spec.
    #[error("build oci spec: {0}")]
    Spec(#[from] OciSpecError),
    /// The spec could not be encoded as JSON.
    #[error("encode config.json: {0}")]
    Encode(#[source] serde_json::Error),
    /// Our embedded default seccomp profile is broken (a bug, caught by the tests).
    #[error("embedded default seccomp profile: {0}")]
    DefaultProfile(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

// ---------------------------------------------------------------------------------------
// Host facts
// ---------------------------------------------------------------------------------------

/// What this host allows; read once at start-up with [`HostLimits::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// The server's own `oom_score_adj`: a container may not go below it.
    pub min_oom_score_adj: i32,
    /// The server's hard `RLIMIT_NOFILE`: a container may not go above it.
    pub max_nofile: u64,
    /// The kernel has seccomp (`Seccomp:` in `/proc/self/status`).
    pub seccomp_supported: bool,
    /// AppArmor is enabled and its securityfs is mounted.
    pub apparmor_enabled: bool,
    /// The capabilities this server itself may hand out: its bounding set (and permitted
    /// set) as the kernel reports them. What "privileged" and `ALL` grant, as with
    /// containerd and CRI-O: in a nested container or a kind node the set lacks some of
    /// what the kernel defines, and asking runc for those fails every start.
    pub capabilities: Capabilities,
    /// The hugetlb cgroup controller is available. Without it, hugepage limits are
    /// dropped with a warning (containerd's `tolerate_missing_hugetlb_controller`):
    /// the kubelet sends one per page size the kernel has, controller or not.
    pub hugetlb_controller: bool,
}

impl HostLimits {
    /// Reads the limits of this process and the kernel's features. Never fails: a fact
    /// that cannot be read falls back to the conservative value, with a warning.
    pub fn detect() -> Self {
        let min_oom_score_adj = match fs::read_to_string("/proc/self/oom_score_adj") {
            Ok(s) => s.trim().parse().unwrap_or_else(|err| {
                warn!(
                    ?err,
                    value = s.trim(),
                    "unparsable /proc/self/oom_score_adj, assuming 0"
                );
                0
            }),
            Err(err) => {
                warn!(?err, "cannot read /proc/self/oom_score_adj, assuming 0");
                0
            }
        };
        let max_nofile = match fs::read_to_string("/proc/self/limits") {
            Ok(s) => parse_nofile_hard(&s).unwrap_or_else(|| {
                warn!("no \"Max open files\" in /proc/self/limits, assuming 1024");
                1024
            }),
            Err(err) => {
                warn!(
                    ?err,
                    "cannot read /proc/self/limits, assuming 1024 open files"
                );
                1024
            }
        };
        let status = fs::read_to_string("/proc/self/status").unwrap_or_else(|err| {
            warn!(?err, "cannot read /proc/self/status");
            String::new()
        });
        let seccomp_supported = status.lines().any(|l| l.starts_with("Seccomp:"));
        let capabilities = own_capabilities(&status).unwrap_or_else(|| {
            warn!(
                "no CapBnd/CapPrm in /proc/self/status, granting every capability the kernel has"
            );
            kernel_capabilities()
        });
        let hugetlb_controller = hugetlb_available();
        if !hugetlb_controller {
            debug!("no hugetlb cgroup controller: hugepage limits will be dropped");
        }
        let apparmor_enabled = fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .map(|s| s.trim() == "Y")
            .unwrap_or(false)
            && Path::new("/sys/kernel/security/apparmor").exists();
        let host = HostLimits {
            min_oom_score_adj,
            max_nofile,
            seccomp_supported,
            apparmor_enabled,
            capabilities,
            hugetlb_controller,
        };
        debug!(?host, "detected host limits");
        host
    }
}

/// The capabilities both in this process's bounding and permitted sets (hex masks of
/// `/proc/self/status`), limited to those the kernel has and oci-spec can name.
fn own_capabilities(status: &str) -> Option<Capabilities> {
    let mask = |key: &str| {
        let line = status.lines().find(|l| l.starts_with(key))?;
        u64::from_str_radix(line[key.len()..].trim(), 16).ok()
    };
    let allowed = mask("CapBnd:")? & mask("CapPrm:")?;
    let kernel = kernel_capabilities();
    Some(
        KERNEL_CAPS
            .iter()
            .enumerate()
            .filter(|(bit, cap)| allowed & (1u64 << bit) != 0 && kernel.contains(cap))
            .map(|(_, cap)| *cap)
            .collect(),
    )
}

/// Whether hugepage limits can be set: on cgroup v2, `hugetlb` among the root's
/// controllers; on v1, a mounted hierarchy with the `hugetlb` controller.
fn hugetlb_available() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) {
        return controllers.split_whitespace().any(|c| c == "hugetlb");
    }
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| mountinfo_has_v1_controller(&m, "hugetlb"))
        .unwrap_or(false)
}

/// A cgroup (v1) mount whose super options name `controller`.
fn mountinfo_has_v1_controller(mountinfo: &str, controller: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((_, tail)) = line.split_once(" - ") else {
            return false;
        };
        let mut fields = tail.split_whitespace();
        fields.next() == Some("cgroup")
            && fields
                .nth(1)
                .is_some_and(|opts| opts.split(',').any(|o| o == controller))
    })
}

/// The hard limit of the "Max open files" line of `/proc/<pid>/limits`.
fn parse_nofile_hard(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let hard = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .nth(1)?;
    if hard == "unlimited" {
        Some(u64::MAX)
    } else {
        hard.parse().ok()
    }
}

// ---------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------

/// Everything [`container_spec`] needs, decided by the caller.
pub struct ContainerInput<'a> {
    pub id: &'a str,
    /// The pod sandbox this container belongs to (for the `sandbox-id` annotation).
    pub sandbox_id: &'a str,
    pub config: &'a v1::ContainerConfig,
    pub sandbox: &'a v1::PodSandboxConfig,
    pub image: &'a oci_spec::image::ImageConfiguration,
    /// The mounted container root (absolute). Only read: `/etc/passwd`, `/etc/group`.
    pub rootfs: &'a Path,
    /// Decided by the caller from `NamespaceOption`.
    pub namespaces: &'a Namespaces,
    /// hostname/hosts/resolv.conf/shm of the sandbox, bind-mounted into the container.
    pub files: &'a SandboxFiles,
    /// cgroupfs path, e.g. `/nodelet/<sandbox>/<id>`.
    pub cgroups_path: &'a str,
    pub host: &'a HostLimits,
}

/// Everything [`sandbox_spec`] needs for the infra container.
pub struct SandboxInput<'a> {
    pub id: &'a str,
    pub config: &'a v1::PodSandboxConfig,
    /// The infra container's root (absolute).
    pub rootfs: &'a Path,
    /// The infra process and its arguments.
    pub args: Vec<String>,
    /// Mounts beyond the system ones (e.g. the binary, `/dev/shm`); one on a system
    /// mount's path replaces it.
    pub extra_mounts: Vec<Mount>,
    pub namespaces: &'a Namespaces,
    pub cgroups_path: &'a str,
    pub host: &'a HostLimits,
}

/// The user a process runs as, as the CRI security context and the image ask for it.
#[derive(Debug, Clone, Default)]
pub struct UserRequest<'a> {
    pub run_as_user: Option<i64>,
    /// Wins over `run_as_user` when not empty.
    pub run_as_username: &'a str,
    /// Overrides the primary group found for the user.
    pub run_as_group: Option<i64>,
    pub supplemental_groups: &'a [i64],
    /// `Merge` adds the groups of `/etc/group` that list the user as a member.
    pub supplemental_groups_policy: v1::SupplementalGroupsPolicy,
    /// The image config's `User`: "", "name", "uid", "name:group", "uid:gid"…
    pub image_user: &'a str,
}

impl<'a> UserRequest<'a> {
    pub fn from_container(sc: &'a v1::LinuxContainerSecurityContext, image_user: &'a str) -> Self {
        UserRequest {
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
            run_as_username: &sc.run_as_username,
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups: &sc.supplemental_groups,
            supplemental_groups_policy: sc.supplemental_groups_policy(),
            image_user,
        }
    }

    pub fn from_sandbox(sc: &'a v1::LinuxSandboxSecurityContext) -> Self {
        UserRequest {
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
            run_as_username: "",
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups: &sc.supplemental_groups,
            supplemental_groups_policy: sc.supplemental_groups_policy(),
            image_user: "",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

const OCI_VERSION: &str = "1.0.2";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// What we ask for; clamped to [`HostLimits::max_nofile`].
const NOFILE: u64 = 1_048_576;
/// The infra container's score (kubelet's value for the pause container).
const SANDBOX_OOM_SCORE_ADJ: i32 = -998;

const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const ANN_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const ANN_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const ANN_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const ANN_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const ANN_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
const ANN_SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";

/// The capabilities of a non-privileged container before add/drop.
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability oci-spec knows, indexed by its kernel number.
const KERNEL_CAPS: [Capability; 41] = [
    Capability::Chown,             // 0
    Capability::DacOverride,       // 1
    Capability::DacReadSearch,     // 2
    Capability::Fowner,            // 3
    Capability::Fsetid,            // 4
    Capability::Kill,              // 5
    Capability::Setgid,            // 6
    Capability::Setuid,            // 7
    Capability::Setpcap,           // 8
    Capability::LinuxImmutable,    // 9
    Capability::NetBindService,    // 10
    Capability::NetBroadcast,      // 11
    Capability::NetAdmin,          // 12
    Capability::NetRaw,            // 13
    Capability::IpcLock,           // 14
    Capability::IpcOwner,          // 15
    Capability::SysModule,         // 16
    Capability::SysRawio,          // 17
    Capability::SysChroot,         // 18
    Capability::SysPtrace,         // 19
    Capability::SysPacct,          // 20
    Capability::SysAdmin,          // 21
    Capability::SysBoot,           // 22
    Capability::SysNice,           // 23
    Capability::SysResource,       // 24
    Capability::SysTime,           // 25
    Capability::SysTtyConfig,      // 26
    Capability::Mknod,             // 27
    Capability::Lease,             // 28
    Capability::AuditWrite,        // 29
    Capability::AuditControl,      // 30
    Capability::Setfcap,           // 31
    Capability::MacOverride,       // 32
    Capability::MacAdmin,          // 33
    Capability::Syslog,            // 34
    Capability::WakeAlarm,         // 35
    Capability::BlockSuspend,      // 36
    Capability::AuditRead,         // 37
    Capability::Perfmon,           // 38
    Capability::Bpf,               // 39
    Capability::CheckpointRestore, // 40
];

/// Paths hidden from a non-privileged container when CRI names none.
const DEFAULT_MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in a non-privileged container when CRI names none.
const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

/// The OCI spec of an application container.
#[instrument(skip_all, fields(container.id = input.id, sandbox.id = input.sandbox_id))]
pub fn container_spec(input: &ContainerInput<'_>) -> Result<Spec> {
    let config = input.config;
    let default_sc = v1::LinuxContainerSecurityContext::default();
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        // As containerd: a group alone is not a user (the kubelet resolves one first).
        return Err(invalid(
            "run_as_group is set without run_as_user or run_as_username",
        ));
    }
    let privileged = sc.privileged;
    if privileged && !sandbox_privileged(input.sandbox) {
        return Err(invalid(
            "privileged container requested in a sandbox that is not privileged",
        ));
    }
    let image = input.image.config().as_ref();
    let image_user = image.and_then(|c| c.user().as_deref()).unwrap_or("");

    // Process.
    let args = process_args(config, image)?;
    let hostname = pod_hostname(input.sandbox);
    let env = merge_env(
        image.and_then(|c| c.env().as_deref()).unwrap_or(&[]),
        &hostname,
        config.tty,
        &config.envs,
    );
    let cwd = working_dir(config, image)?;
    let user = resolve_user(input.rootfs, &UserRequest::from_container(sc, image_user))?;
    let caps = capability_sets(
        sc.capabilities.as_ref(),
        privileged,
        &input.host.capabilities,
    )?;
    let seccomp = {
        let choice = seccomp_choice(
            sc.seccomp.as_ref(),
            legacy_seccomp_path(sc),
            Seccomp::Unconfined,
        )?;
        seccomp_profile(&choice, privileged, input.host, &caps.granted)?
    };
    let apparmor = apparmor_profile(
        sc.apparmor.as_ref(),
        legacy_apparmor(sc),
        privileged,
        input.host,
    )?;
    let oom = resources.map(|r| clamp_oom_score_adj(r.oom_score_adj, input.host));

    let mut process = Process::default();
    process
        .set_terminal(Some(config.tty))
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(args))
        .set_command_line(None)
        .set_env(Some(env))
        .set_cwd(cwd)
        .set_capabilities(Some(caps.oci()?))
        .set_rlimits(Some(vec![nofile_rlimit(input.host)?]))
        .set_no_new_privileges(Some(sc.no_new_privs))
        .set_apparmor_profile(apparmor)
        .set_oom_score_adj(oom)
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);

    // Mounts and devices.
    let (mounts, rootfs_propagation) = container_mounts(input, sc, privileged)?;
    let mut devices = Vec::new();
    let mut rules = default_device_rules()?;
    if privileged {
        devices.extend(host_devices(Path::new("/dev"))?);
        rules = vec![device_rule(true, None, None, None, "rwm")?];
    }
    for d in &config.devices {
        for dev in cri_device(d)? {
            if !privileged {
                rules.push(device_rule(
                    true,
                    Some(dev.typ()),
                    Some(dev.major()),
                    Some(dev.minor()),
                    permissions(d)?,
                )?);
            }
            devices.retain(|existing: &LinuxDevice| existing.path() != dev.path());
            devices.push(dev);
        }
    }

    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            paths_or_default(&sc.masked_paths, &DEFAULT_MASKED_PATHS),
            paths_or_default(&sc.readonly_paths, &DEFAULT_READONLY_PATHS),
        )
    };

    let mut linux = oci_spec::runtime::Linux::default();
    linux
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl(None)
        .set_resources(Some(linux_resources(resources, rules, input.host)?))
        .set_cgroups_path(non_empty(input.cgroups_path).map(PathBuf::from))
        .set_namespaces(Some(linux_namespaces(input.namespaces)?))
        .set_devices(Some(devices))
        .set_seccomp(seccomp)
        .set_rootfs_propagation(rootfs_propagation)
        .set_masked_paths(Some(masked))
        .set_readonly_paths(Some(readonly))
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_personality(None);

    let mut annotations: HashMap<String, String> = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(ANN_CONTAINER_TYPE.into(), "container".into());
    annotations.insert(ANN_SANDBOX_ID.into(), input.sandbox_id.into());
    if let Some(m) = &config.metadata {
        annotations.insert(ANN_CONTAINER_NAME.into(), m.name.clone());
    }
    if let Some(i) = &config.image {
        annotations.insert(ANN_IMAGE_NAME.into(), i.image.clone());
    }
    sandbox_annotations(input.sandbox, &mut annotations);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf())
        .set_readonly(Some(sc.readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.into())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname(spec_hostname(input.namespaces, &input.sandbox.hostname))
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));
    Ok(spec)
}

/// The OCI spec of the infra container that holds the pod's namespaces.
#[instrument(skip_all, fields(sandbox.id = input.id))]
pub fn sandbox_spec(input: &SandboxInput<'_>) -> Result<Spec> {
    let config = input.config;
    if input.args.is_empty() {
        return Err(invalid(
            "no command specified for the sandbox infra process",
        ));
    }
    let default_sc = v1::LinuxSandboxSecurityContext::default();
    let linux_cfg = config.linux.as_ref();
    let sc = linux_cfg
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let privileged = sc.privileged;
    let sysctls = match linux_cfg {
        Some(l) => validate_sysctls(&l.sysctls, input.namespaces)?,
        None => HashMap::new(),
    };

    let user = resolve_user(input.rootfs, &UserRequest::from_sandbox(sc))?;
    let caps = CapabilitySets {
        granted: Capabilities::new(),
        ambient: Capabilities::new(),
    };
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    let choice = seccomp_choice(sc.seccomp.as_ref(), legacy, Seccomp::RuntimeDefault)?;
    let seccomp = seccomp_profile(&choice, privileged, input.host, &caps.granted)?;
    let apparmor = apparmor_profile(sc.apparmor.as_ref(), "", privileged, input.host)?;

    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(input.args.clone()))
        .set_command_line(None)
        .set_env(Some(vec![format!("PATH={DEFAULT_PATH}")]))
        .set_cwd(PathBuf::from("/"))
        .set_capabilities(Some(caps.oci()?))
        .set_rlimits(Some(vec![nofile_rlimit(input.host)?]))
        .set_no_new_privileges(Some(true))
        .set_apparmor_profile(apparmor)
        .set_oom_score_adj(Some(clamp_oom_score_adj(
            i64::from(SANDBOX_OOM_SCORE_ADJ),
            input.host,
        )))
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);

    // System mounts, then the caller's; one of the caller's on a system path replaces it.
    let shm = tmpfs_shm()?;
    let system: Vec<Mount> = system_mounts(false, false)?
        .into_iter()
        .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
        .chain(std::iter::once(shm))
        .collect();
    let taken: HashSet<PathBuf> = input
        .extra_mounts
        .iter()
        .map(|m| clean_path(m.destination()))
        .collect();
    let mut mounts = without_overridden(system, &taken);
    mounts.extend(input.extra_mounts.iter().cloned());

    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    };

    let mut linux = oci_spec::runtime::Linux::default();
    linux
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl((!sysctls.is_empty()).then_some(sysctls))
        .set_resources(Some(linux_resources(
            None,
            default_device_rules()?,
            input.host,
        )?))
        .set_cgroups_path(non_empty(input.cgroups_path).map(PathBuf::from))
        .set_namespaces(Some(linux_namespaces(input.namespaces)?))
        .set_devices(Some(Vec::new()))
        .set_seccomp(seccomp)
        .set_rootfs_propagation(None)
        .set_masked_paths(Some(masked))
        .set_readonly_paths(Some(readonly))
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_personality(None);

    let mut annotations: HashMap<String, String> = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(ANN_CONTAINER_TYPE.into(), "sandbox".into());
    annotations.insert(ANN_SANDBOX_ID.into(), input.id.into());
    annotations.insert(ANN_SANDBOX_LOG_DIR.into(), config.log_directory.clone());
    sandbox_annotations(config, &mut annotations);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf())
        .set_readonly(Some(true));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.into())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname(spec_hostname(input.namespaces, &config.hostname))
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));
    Ok(spec)
}

/// Writes `<dir>/config.json`, readable by root only (the env of a container can carry
/// secrets). Not fsynced: the bundle is read by the OCI runtime right away and later by
/// exec, and it is worthless after a power loss, which ends the container too.
pub fn write_bundle(dir: &Path, spec: &Spec) -> Result<()> {
    let data = serde_json::to_vec_pretty(spec).map_err(Error::Encode)?;
    let path = dir.join("config.json");
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    };
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&data))
        .map_err(io("write", &path))?;
    debug!(path = %path.display(), "wrote bundle config");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Process: args, env, cwd
// ---------------------------------------------------------------------------------------

/// Kubernetes' rules: `command` replaces the image Entrypoint (and drops its Cmd); `args`
/// alone replace the image Cmd; neither runs Entrypoint + Cmd.
fn process_args(
    config: &v1::ContainerConfig,
    image: Option<&oci_spec::image::Config>,
) -> Result<Vec<String>> {
    let entrypoint = image.and_then(|c| c.entrypoint().as_deref()).unwrap_or(&[]);
    let cmd = image.and_then(|c| c.cmd().as_deref()).unwrap_or(&[]);
    let args: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else if !config.args.is_empty() {
        entrypoint.iter().chain(&config.args).cloned().collect()
    } else {
        entrypoint.iter().chain(cmd).cloned().collect()
    };
    if args.is_empty() {
        return Err(invalid("no command specified"));
    }
    Ok(args)
}

/// Image env, then `HOSTNAME` (and `TERM` for a TTY), then CRI envs; a later key replaces
/// an earlier one in place. `PATH` is added first when nobody set it.
fn merge_env(image_env: &[String], hostname: &str, tty: bool, cri: &[v1::KeyValue]) -> Vec<String> {
    fn set(env: &mut Vec<String>, entry: String) {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        let pos = env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match pos {
            Some(i) => env[i] = entry,
            None => env.push(entry),
        }
    }
    let has = |env: &[String], key: &str| {
        env.iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    };
    let mut env = Vec::with_capacity(image_env.len() + cri.len() + 3);
    for e in image_env {
        set(&mut env, e.clone());
    }
    set(&mut env, format!("HOSTNAME={hostname}"));
    if tty && !has(&env, "TERM") {
        set(&mut env, "TERM=xterm".into());
    }
    for kv in cri.iter().filter(|kv| !kv.key.is_empty()) {
        set(&mut env, format!("{}={}", kv.key, kv.value));
    }
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env
}

fn working_dir(
    config: &v1::ContainerConfig,
    image: Option<&oci_spec::image::Config>,
) -> Result<PathBuf> {
    let dir = non_empty(&config.working_dir)
        .or_else(|| {
            image
                .and_then(|c| c.working_dir().as_deref())
                .and_then(non_empty)
        })
        .unwrap_or("/");
    if !dir.starts_with('/') {
        return Err(invalid(format!(
            "working directory {dir:?} is not an absolute path"
        )));
    }
    Ok(PathBuf::from(dir))
}

/// The hostname containers see: the sandbox's, or the node's for a hostNetwork pod that
/// did not get one.
fn pod_hostname(sandbox: &v1::PodSandboxConfig) -> String {
    if !sandbox.hostname.is_empty() {
        return sandbox.hostname.clone();
    }
    match fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(h) => h.trim().to_string(),
        Err(err) => {
            warn!(?err, "cannot read the node's hostname for HOSTNAME");
            String::new()
        }
    }
}

/// `hostname` may only be set in a UTS namespace that is not the host's.
fn spec_hostname(ns: &Namespaces, hostname: &str) -> Option<String> {
    (ns.uts != Ns::Host && !hostname.is_empty()).then(|| hostname.to_string())
}

fn clamp_oom_score_adj(requested: i64, host: &HostLimits) -> i32 {
    let wanted = requested.clamp(-1000, 1000) as i32;
    if wanted < host.min_oom_score_adj {
        warn!(
            requested,
            applied = host.min_oom_score_adj,
            "oom_score_adj below this server's own is refused by the host, clamping"
        );
        host.min_oom_score_adj
    } else {
        wanted
    }
}

fn nofile_rlimit(host: &HostLimits) -> Result<PosixRlimit> {
    let n = if NOFILE > host.max_nofile {
        warn!(
            requested = NOFILE,
            applied = host.max_nofile,
            "RLIMIT_NOFILE above this server's hard limit is refused by the host, clamping"
        );
        host.max_nofile
    } else {
        NOFILE
    };
    Ok(oci_spec::runtime::PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(n)
        .soft(n)
        .build()?)
}

fn sandbox_privileged(sandbox: &v1::PodSandboxConfig) -> bool {
    sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|sc| sc.privileged)
}

fn sandbox_annotations(sandbox: &v1::PodSandboxConfig, out: &mut HashMap<String, String>) {
    if let Some(m) = &sandbox.metadata {
        out.insert(ANN_SANDBOX_NAME.into(), m.name.clone());
        out.insert(ANN_SANDBOX_NAMESPACE.into(), m.namespace.clone());
        out.insert(ANN_SANDBOX_UID.into(), m.uid.clone());
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn paths_or_default(cri: &[String], default: &[&str]) -> Vec<String> {
    if cri.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        cri.to_vec()
    }
}

// ---------------------------------------------------------------------------------------
// User and groups
// ---------------------------------------------------------------------------------------

/// Resolves the process user from the CRI security context and the image's `User`,
/// looking names up in `<rootfs>/etc/passwd` and `<rootfs>/etc/group`.
///
/// Precedence: `run_as_username`, then `run_as_user`, then the image's user; `run_as_group`
/// (else the image's group, else the user's passwd group) is the primary group. A numeric
/// uid absent from passwd gets gid 0; an unknown name is an error. `additional_gids` holds
/// the primary gid, then (policy `Merge`) the groups listing the user in `/etc/group`,
/// then the CRI supplemental groups.
///
/// The files are opened inside `rootfs` as if it were `/`: a symlink in the image cannot
/// lead the lookup to the host's files.
pub fn resolve_user(rootfs: &Path, req: &UserRequest<'_>) -> Result<User> {
    enum Sel<'s> {
        Id(u32),
        Name(&'s str),
    }
    fn sel(s: &str) -> Option<Sel<'_>> {
        if s.is_empty() {
            None
        } else if let Ok(id) = s.parse::<u32>() {
            Some(Sel::Id(id))
        } else {
            Some(Sel::Name(s))
        }
    }
    let (image_user, image_group) = match req.image_user.split_once(':') {
        Some((u, g)) => (u, g),
        None => (req.image_user, ""),
    };
    let user_sel = if !req.run_as_username.is_empty() {
        Sel::Name(req.run_as_username)
    } else if let Some(uid) = req.run_as_user {
        Sel::Id(to_id(uid, "run_as_user")?)
    } else {
        sel(image_user).unwrap_or(Sel::Id(0))
    };
    // The image's group only applies with the image's user.
    let from_image = req.run_as_username.is_empty() && req.run_as_user.is_none();

    let passwd = parse_passwd(&read_in_root(rootfs, "/etc/passwd")?.unwrap_or_default());
    let (uid, mut gid, name) = match user_sel {
        Sel::Id(uid) => match passwd.iter().find(|p| p.uid == uid) {
            Some(p) => (uid, p.gid, Some(p.name.clone())),
            None => (uid, 0, None),
        },
        Sel::Name(n) => match passwd.iter().find(|p| p.name == n) {
            Some(p) => (p.uid, p.gid, Some(p.name.clone())),
            None => {
                return Err(invalid(format!(
                    "user {n:?} not found in /etc/passwd of image"
                )));
            }
        },
    };

    let mut groups: Option<Vec<GroupEntry>> = None;
    let load_groups = |groups: &mut Option<Vec<GroupEntry>>| -> Result<()> {
        if groups.is_none() {
            *groups = Some(parse_group(
                &read_in_root(rootfs, "/etc/group")?.unwrap_or_default(),
            ));
        }
        Ok(())
    };
    if let Some(g) = req.run_as_group {
        gid = to_id(g, "run_as_group")?;
    } else if from_image {
        match sel(image_group) {
            Some(Sel::Id(g)) => gid = g,
            Some(Sel::Name(n)) => {
                load_groups(&mut groups)?;
                gid = groups
                    .iter()
                    .flatten()
                    .find(|g| g.name == n)
                    .map(|g| g.gid)
                    .ok_or_else(|| {
                        invalid(format!("group {n:?} not found in /etc/group of image"))
                    })?;
            }
            None => {}
        }
    }

    let mut additional = vec![gid];
    if req.supplemental_groups_policy == v1::SupplementalGroupsPolicy::Merge
        && let Some(name) = &name
    {
        load_groups(&mut groups)?;
        additional.extend(
            groups
                .iter()
                .flatten()
                .filter(|g| g.members.iter().any(|m| m == name))
                .map(|g| g.gid),
        );
    }
    for &g in req.supplemental_groups {
        additional.push(to_id(g, "supplemental_groups")?);
    }
    let mut seen = HashSet::new();
    additional.retain(|g| seen.insert(*g));

    let mut user = User::default();
    user.set_uid(uid)
        .set_gid(gid)
        .set_additional_gids(Some(additional));
    debug!(uid, gid, "resolved user");
    Ok(user)
}

fn to_id(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| invalid(format!("{what} {v} is out of range")))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines and comments are skipped.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let uid = f.next()?.trim().parse().ok()?;
            let gid = f.next()?.trim().parse().ok()?;
            (!name.is_empty()).then(|| PasswdEntry {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect()
}

/// `name:password:gid:member,member`; malformed lines and comments are skipped.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let gid = f.next()?.trim().parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            (!name.is_empty()).then(|| GroupEntry {
                name: name.to_string(),
                gid,
                members,
            })
        })
        .collect()
}

/// Largest `/etc/passwd` or `/etc/group` we read from an image.
const MAX_ACCOUNT_FILE: u64 = 16 << 20;
/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// Reads `path` of the image as if `rootfs` were `/`. `None` when it does not exist.
fn read_in_root(rootfs: &Path, path: &str) -> Result<Option<String>> {
    let shown = rootfs.join(path.trim_start_matches('/'));
    let io = |source| Error::Io {
        op: "read",
        path: shown.clone(),
        source,
    };
    let Some(file) = open_in_root(rootfs, Path::new(path)).map_err(io)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    file.take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut buf)
        .map_err(io)?;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Opens a regular file at `path` inside `root`, resolving every symlink relative to
/// `root` (`..` stops at it), one component at a time with `O_NOFOLLOW`: what the image
/// contains cannot make us read a file outside of it. `None` when a component is missing.
fn open_in_root(root: &Path, path: &Path) -> std::io::Result<Option<File>> {
    let root_fd: OwnedFd = File::open(root)?.into();
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut todo: VecDeque<OsString> = components(path);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            dirs.pop();
            continue;
        }
        let dir = dirs.last().unwrap_or(&root_fd).as_fd();
        let st = match nix::sys::stat::fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        {
            Ok(st) => st,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFLNK {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = PathBuf::from(nix::fcntl::readlinkat(dir, name.as_os_str())?);
            if target.is_absolute() {
                dirs.clear();
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        if todo.is_empty() {
            if kind != libc::S_IFREG {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a regular file",
                ));
            }
            let fd = nix::fcntl::openat(
                dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            )?;
            return Ok(Some(File::from(fd)));
        }
        if kind != libc::S_IFDIR {
            return Ok(None);
        }
        let fd = nix::fcntl::openat(
            dir,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        dirs.push(fd);
    }
    // The path named the root itself: not a file.
    Ok(None)
}

/// The names of `path` (and `..`), without the root and `.` components.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------------------

/// The capabilities a process gets: `granted` is its bounding, effective and permitted
/// set; `ambient` (also inheritable, as the kernel requires) survives an exec as non-root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CapabilitySets {
    granted: Capabilities,
    ambient: Capabilities,
}

impl CapabilitySets {
    fn oci(&self) -> Result<LinuxCapabilities> {
        Ok(LinuxCapabilitiesBuilder::default()
            .bounding(self.granted.clone())
            .effective(self.granted.clone())
            .permitted(self.granted.clone())
            .inheritable(self.ambient.clone())
            .ambient(self.ambient.clone())
            .build()?)
    }
}

/// Default set, then "ALL" in add (everything) or drop (nothing), then individual adds,
/// then individual drops. Privileged: everything, add/drop ignored. "Everything" is
/// `host`, the capabilities this server may hand out (its bounding set), not all the
/// kernel defines; the defaults are cut to it too. An explicit add of a capability
/// outside it is refused by name (the OCI runtime would fail the start).
fn capability_sets(
    caps: Option<&v1::Capability>,
    privileged: bool,
    host: &Capabilities,
) -> Result<CapabilitySets> {
    let none = v1::Capability::default();
    let caps = caps.unwrap_or(&none);
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    let grantable = |name: &String| {
        let cap = parse_capability(name)?;
        if host.contains(&cap) {
            Ok(cap)
        } else {
            Err(invalid(format!(
                "capability {name:?} is not in the runtime's bounding set"
            )))
        }
    };
    let mut granted: Capabilities = if privileged {
        host.clone()
    } else {
        DEFAULT_CAPS
            .into_iter()
            .filter(|c| host.contains(c))
            .collect()
    };
    if !privileged {
        if caps.add_capabilities.iter().any(is_all) {
            granted = host.clone();
        }
        if caps.drop_capabilities.iter().any(is_all) {
            granted.clear();
        }
        for c in caps.add_capabilities.iter().filter(|c| !is_all(c)) {
            granted.insert(grantable(c)?);
        }
        for c in caps.drop_capabilities.iter().filter(|c| !is_all(c)) {
            granted.remove(&parse_capability(c)?);
        }
    }
    let mut ambient = Capabilities::new();
    for c in &caps.add_ambient_capabilities {
        let cap = grantable(c)?;
        granted.insert(cap);
        ambient.insert(cap);
    }
    Ok(CapabilitySets { granted, ambient })
}

/// "NET_ADMIN", "CAP_NET_ADMIN", "cap_net_admin" → `NetAdmin`.
fn parse_capability(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| invalid(format!("unknown capability {name:?}")))
}

/// Every capability the running kernel knows (`/proc/sys/kernel/cap_last_cap`) that we
/// can name; all we know when the file cannot be read.
fn kernel_capabilities() -> Capabilities {
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    match last {
        Some(last) => KERNEL_CAPS
            .iter()
            .take(last.saturating_add(1))
            .copied()
            .collect(),
        None => {
            warn!("cannot read /proc/sys/kernel/cap_last_cap, granting every known capability");
            KERNEL_CAPS.into_iter().collect()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn bind(dest: &Path, source: &Path, options: Vec<String>) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options)
        .build()?)
}

/// The kernel filesystems every container gets. `/sys` and the cgroup tree are writable
/// only for a privileged container.
fn system_mounts(privileged: bool, with_cgroup: bool) -> Result<Vec<Mount>> {
    let ro = if privileged { "rw" } else { "ro" };
    let mut v = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro])?,
    ];
    if with_cgroup {
        v.push(mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        )?);
    }
    Ok(v)
}

fn tmpfs_shm() -> Result<Mount> {
    mount(
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    )
}

/// Drops the mounts whose destination is taken, and everything under `/dev` when `/dev`
/// itself is.
fn without_overridden(mounts: Vec<Mount>, taken: &HashSet<PathBuf>) -> Vec<Mount> {
    let dev_taken = taken.contains(Path::new("/dev"));
    mounts
        .into_iter()
        .filter(|m| {
            let dst = clean_path(m.destination());
            let under_dev = dst.starts_with("/dev") && dst != Path::new("/dev");
            !(taken.contains(&dst) || (dev_taken && under_dev))
        })
        .collect()
}

/// System mounts, then the sandbox files and the CRI mounts ordered parents first. A
/// CRI mount on a path replaces ours there. Returns the mounts and the rootfs
/// propagation the CRI mounts need.
fn container_mounts(
    input: &ContainerInput<'_>,
    sc: &v1::LinuxContainerSecurityContext,
    privileged: bool,
) -> Result<(Vec<Mount>, Option<String>)> {
    let mut user: Vec<(PathBuf, Mount)> = Vec::new();
    let mut propagation = None;
    for m in &input.config.mounts {
        let (dst, mount, prop) = cri_mount(m)?;
        propagation = match (propagation, prop) {
            (_, v1::MountPropagation::PropagationBidirectional) | (Some("rshared"), _) => {
                Some("rshared")
            }
            (_, v1::MountPropagation::PropagationHostToContainer) | (Some("rslave"), _) => {
                Some("rslave")
            }
            (p, _) => p,
        };
        user.push((dst, mount));
    }
    let taken: HashSet<PathBuf> = user.iter().map(|(d, _)| d.clone()).collect();

    // The sandbox's files, unless the CRI mounts bring their own (kubelet mounts its own
    // /etc/hosts for most pods).
    let ro = if sc.readonly_rootfs { "ro" } else { "rw" };
    let files = input.files;
    let mut extra: Vec<(&str, &Path, &str)> = vec![
        ("/etc/hostname", &files.hostname, ro),
        ("/etc/hosts", &files.hosts, ro),
        ("/etc/resolv.conf", &files.resolv_conf, ro),
    ];
    let mut system = system_mounts(privileged, true)?;
    match (&files.shm, &input.namespaces.ipc) {
        (Some(shm), _) => extra.push(("/dev/shm", shm, "rw")),
        (None, Ns::Host) => extra.push(("/dev/shm", Path::new("/dev/shm"), "rw")),
        (None, _) => system.push(tmpfs_shm()?),
    }
    for (dst, src, ro) in extra {
        let dst = PathBuf::from(dst);
        if !taken.contains(&dst) {
            let m = bind(
                &dst,
                src,
                vec!["rbind".into(), "rprivate".into(), ro.into()],
            )?;
            user.push((dst, m));
        }
    }
    // Parents before children; stable, so equal depths keep their order.
    user.sort_by_key(|(d, _)| d.components().count());
    let taken: HashSet<PathBuf> = user.iter().map(|(d, _)| d.clone()).collect();
    let mut mounts = without_overridden(system, &taken);
    mounts.extend(user.into_iter().map(|(_, m)| m));
    Ok((mounts, propagation.map(String::from)))
}

/// One CRI mount as a recursive bind mount.
fn cri_mount(m: &v1::Mount) -> Result<(PathBuf, Mount, v1::MountPropagation)> {
    if !m.container_path.starts_with('/') {
        return Err(invalid(format!(
            "mount container_path {:?} is not an absolute path",
            m.container_path
        )));
    }
    let dst = clean_path(Path::new(&m.container_path));
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(invalid(format!(
            "mount {}: image volumes are not supported",
            m.container_path
        )));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(invalid(format!(
            "mount {}: id-mapped mounts are not supported",
            m.container_path
        )));
    }
    if m.host_path.is_empty() {
        return Err(invalid(format!(
            "mount {}: empty host_path",
            m.container_path
        )));
    }
    let src = fs::canonicalize(&m.host_path).map_err(|err| {
        invalid(format!(
            "mount {}: host_path {:?}: {err}",
            m.container_path, m.host_path
        ))
    })?;
    let prop = m.propagation();
    let mut options = vec!["rbind".to_string()];
    options.push(
        match prop {
            v1::MountPropagation::PropagationPrivate => "rprivate",
            v1::MountPropagation::PropagationHostToContainer => "rslave",
            v1::MountPropagation::PropagationBidirectional => "rshared",
        }
        .into(),
    );
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(format!(
                "mount {}: recursive_read_only needs readonly",
                m.container_path
            )));
        }
        if prop != v1::MountPropagation::PropagationPrivate {
            return Err(invalid(format!(
                "mount {}: recursive_read_only needs private propagation",
                m.container_path
            )));
        }
    }
    options.push(if m.readonly { "ro" } else { "rw" }.into());
    if m.recursive_read_only {
        options.push("rro".into());
    }
    let mount = bind(&dst, &src, options)?;
    Ok((dst, mount, prop))
}

/// Lexical clean-up of an absolute path: `.` and repeated `/` go, `..` pops (not above `/`).
fn clean_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------

fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup> {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    Ok(rule)
}

/// Deny everything, then allow what every container needs: mknod of any node, and the
/// standard character devices (null, zero, full, random, urandom, tty, console, ptmx,
/// the pts).
fn default_device_rules() -> Result<Vec<LinuxDeviceCgroup>> {
    use LinuxDeviceType::{B, C};
    let mut v = vec![
        device_rule(false, None, None, None, "rwm")?,
        device_rule(true, Some(C), None, None, "m")?,
        device_rule(true, Some(B), None, None, "m")?,
    ];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        v.push(device_rule(true, Some(C), Some(major), Some(minor), "rwm")?);
    }
    v.push(device_rule(true, Some(C), Some(136), None, "rwm")?);
    Ok(v)
}

/// A CRI device's cgroup permissions: a non-empty subset of "rwm"; "rwm" when empty.
fn permissions(d: &v1::Device) -> Result<&str> {
    let p = d.permissions.as_str();
    if p.is_empty() {
        return Ok("rwm");
    }
    if p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        Ok(p)
    } else {
        Err(invalid(format!(
            "device {}: invalid permissions {p:?}",
            d.host_path
        )))
    }
}

/// The device node(s) of a CRI device: one node, or every node under a directory.
fn cri_device(d: &v1::Device) -> Result<Vec<LinuxDevice>> {
    let host = Path::new(&d.host_path);
    let container = if d.container_path.is_empty() {
        host
    } else {
        Path::new(&d.container_path)
    };
    if !container.is_absolute() {
        return Err(invalid(format!(
            "device container_path {:?} is not an absolute path",
            d.container_path
        )));
    }
    let meta = fs::metadata(host)
        .map_err(|err| invalid(format!("device host_path {:?}: {err}", d.host_path)))?;
    if meta.is_dir() {
        let mut out = Vec::new();
        for mut dev in host_devices(host)? {
            let inside = container.join(dev.path().strip_prefix(host).unwrap_or(dev.path()));
            dev.set_path(inside);
            out.push(dev);
        }
        return Ok(out);
    }
    linux_device(container, &meta)?
        .map(|d| vec![d])
        .ok_or_else(|| {
            invalid(format!(
                "device host_path {:?} is not a device",
                d.host_path
            ))
        })
}

fn linux_device(path: &Path, meta: &fs::Metadata) -> Result<Option<LinuxDevice>> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    let mut dev = LinuxDevice::default();
    dev.set_path(path.to_path_buf())
        .set_typ(typ)
        .set_major(nix::sys::stat::major(rdev) as i64)
        .set_minor(nix::sys::stat::minor(rdev) as i64)
        .set_file_mode(Some(meta.mode() & 0o777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Ok(Some(dev))
}

/// Every device node under `dir` (a privileged container gets all of `/dev`), skipping
/// the per-container pseudo filesystems and the console.
fn host_devices(dir: &Path) -> Result<Vec<LinuxDevice>> {
    const SKIP_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = fs::read_dir(&d).map_err(|source| Error::Io {
            op: "list devices in",
            path: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                let name = entry.file_name();
                if !SKIP_DIRS.iter().any(|s| name == *s) {
                    todo.push(path);
                }
                continue;
            }
            if path == Path::new("/dev/console") {
                continue;
            }
            if let Some(dev) = linux_device(&path, &meta)? {
                out.push(dev);
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Namespaces, resources, sysctls
// ---------------------------------------------------------------------------------------

/// `Host` → no entry (the runtime's namespace), `New` → a new one, `Join` → that path.
/// The mount namespace is always new.
fn linux_namespaces(ns: &Namespaces) -> Result<Vec<LinuxNamespace>> {
    let mut out = Vec::new();
    for (typ, how) in [
        (LinuxNamespaceType::Pid, &ns.pid),
        (LinuxNamespaceType::Network, &ns.network),
        (LinuxNamespaceType::Ipc, &ns.ipc),
        (LinuxNamespaceType::Uts, &ns.uts),
        (LinuxNamespaceType::Mount, &Ns::New),
    ] {
        let path = match how {
            Ns::Host => continue,
            Ns::New => None,
            Ns::Join(p) => Some(p.clone()),
        };
        let mut n = LinuxNamespace::default();
        n.set_typ(typ).set_path(path);
        out.push(n);
    }
    Ok(out)
}

/// CRI resources → OCI. Zero means unset; per-container pids limits do not exist in CRI.
fn linux_resources(
    r: Option<&v1::LinuxContainerResources>,
    devices: Vec<LinuxDeviceCgroup>,
    host: &HostLimits,
) -> Result<LinuxResources> {
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));
    let Some(r) = r else {
        return Ok(out);
    };
    let unsigned = |v: i64, what: &str| {
        u64::try_from(v).map_err(|_| invalid(format!("{what} {v} is negative")))
    };
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(unsigned(r.cpu_shares, "cpu_shares")?));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period != 0 {
        cpu.set_period(Some(unsigned(r.cpu_period, "cpu_period")?));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes != 0 {
        memory.set_swap(Some(r.memory_swap_limit_in_bytes));
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }
    if !r.hugepage_limits.is_empty() && !host.hugetlb_controller {
        warn_hugetlb_missing(&r.hugepage_limits);
    } else if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::new();
        for h in &r.hugepage_limits {
            let limit = i64::try_from(h.limit).map_err(|_| {
                invalid(format!(
                    "hugepage limit {} for {} is out of range",
                    h.limit, h.page_size
                ))
            })?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone()).set_limit(limit);
            limits.push(l);
        }
        out.set_hugepage_limits(Some(limits));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    Ok(out)
}

/// Hugepage limits asked for on a host without the hugetlb controller are dropped.
pub(crate) fn warn_hugetlb_missing(limits: &[v1::HugepageLimit]) {
    let sizes: Vec<&str> = limits.iter().map(|h| h.page_size.as_str()).collect();
    warn!(
        page_sizes = ?sizes,
        "no hugetlb cgroup controller on this host: hugepage limits dropped"
    );
}

/// Only namespaced sysctls may be set for a pod, and none of a namespace it shares with
/// the host. Names with `/` separators are accepted and turned into dots.
pub(crate) fn validate_sysctls(
    sysctls: &HashMap<String, String>,
    ns: &Namespaces,
) -> Result<HashMap<String, String>> {
    let sorted: BTreeMap<&String, &String> = sysctls.iter().collect();
    let mut out = HashMap::new();
    for (raw, value) in sorted {
        let name = normalize_sysctl(raw);
        let net = name.starts_with("net.");
        let ipc = name.starts_with("kernel.shm")
            || name.starts_with("kernel.msg")
            || name == "kernel.sem"
            || name.starts_with("fs.mqueue.");
        if !net && !ipc {
            return Err(invalid(format!(
                "sysctl {raw:?} is not namespaced: a pod may only set net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*"
            )));
        }
        if net && ns.network == Ns::Host {
            return Err(invalid(format!(
                "sysctl {raw:?} cannot be set in a pod using the host network"
            )));
        }
        if ipc && ns.ipc == Ns::Host {
            return Err(invalid(format!(
                "sysctl {raw:?} cannot be set in a pod using the host IPC namespace"
            )));
        }
        out.insert(name, value.clone());
    }
    Ok(out)
}

/// Kubernetes accepts `net/ipv4/ip_forward` for `net.ipv4.ip_forward`: when the first
/// separator is `/`, slashes and dots swap.
fn normalize_sysctl(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Seccomp and AppArmor
// ---------------------------------------------------------------------------------------

/// Which seccomp profile a process asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seccomp {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

#[allow(deprecated)]
fn legacy_seccomp_path(sc: &v1::LinuxContainerSecurityContext) -> &str {
    &sc.seccomp_profile_path
}

#[allow(deprecated)]
fn legacy_apparmor(sc: &v1::LinuxContainerSecurityContext) -> &str {
    &sc.apparmor_profile
}

/// The `seccomp` field, else the deprecated `seccomp_profile_path` ("runtime/default",
/// "docker/default", "unconfined", "localhost/<path>"), else `unset`.
fn seccomp_choice(
    profile: Option<&v1::SecurityProfile>,
    legacy: &str,
    unset: Seccomp,
) -> Result<Seccomp> {
    if let Some(p) = profile {
        return Ok(match p.profile_type() {
            ProfileType::RuntimeDefault => Seccomp::RuntimeDefault,
            ProfileType::Unconfined => Seccomp::Unconfined,
            ProfileType::Localhost => Seccomp::Localhost(localhost_path(&p.localhost_ref)?),
        });
    }
    Ok(match legacy {
        "" => unset,
        "runtime/default" | "docker/default" => Seccomp::RuntimeDefault,
        "unconfined" => Seccomp::Unconfined,
        other => match other.strip_prefix("localhost/") {
            Some(path) => Seccomp::Localhost(localhost_path(path)?),
            None => return Err(invalid(format!("unknown seccomp profile {other:?}"))),
        },
    })
}

fn localhost_path(r: &str) -> Result<PathBuf> {
    let r = r.strip_prefix("localhost/").unwrap_or(r);
    if !r.starts_with('/') {
        return Err(invalid(format!(
            "seccomp profile {r:?} is not an absolute path"
        )));
    }
    Ok(PathBuf::from(r))
}

/// The seccomp section of the spec: none for privileged or unconfined processes or a
/// kernel without seccomp; our default profile, cut to what `caps` already allows; or a
/// Localhost profile read from disk.
fn seccomp_profile(
    choice: &Seccomp,
    privileged: bool,
    host: &HostLimits,
    caps: &Capabilities,
) -> Result<Option<LinuxSeccomp>> {
    if privileged || *choice == Seccomp::Unconfined {
        return Ok(None);
    }
    if !host.seccomp_supported {
        warn!(profile = ?choice, "seccomp is not supported by this kernel, running unconfined");
        return Ok(None);
    }
    match choice {
        Seccomp::Unconfined => Ok(None),
        Seccomp::RuntimeDefault => default_seccomp(caps).map(Some),
        Seccomp::Localhost(path) => {
            let data = fs::read(path).map_err(|err| {
                invalid(format!("read seccomp profile {}: {err}", path.display()))
            })?;
            let profile: LinuxSeccomp = serde_json::from_slice(&data).map_err(|err| {
                invalid(format!("parse seccomp profile {}: {err}", path.display()))
            })?;
            Ok(Some(profile))
        }
    }
}

/// Our default profile's data: see `seccomp_default.json`.
const DEFAULT_SECCOMP: &str = include_str!("seccomp_default.json");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DenyProfile {
    #[allow(dead_code)]
    about: String,
    default_action: LinuxSeccompAction,
    rules: Vec<DenyRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DenyRule {
    #[allow(dead_code)]
    why: String,
    names: Vec<String>,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    unless_capabilities: Vec<String>,
}

/// The RuntimeDefault profile.
///
/// It is a **denylist**: the default action allows, and the rules make dangerous syscalls
/// fail with `EPERM` (kernel modules, kexec, reboot, raw I/O ports, the kernel keyring and
/// log, io_uring, mount-table changes, new namespaces, …). Docker's and containerd's
/// profiles are allowlists of ~350 syscalls that must follow every kernel release; until
/// we carry one, a short list of what must never be reachable gives most of the
/// protection with none of the breakage of a stale allowlist. A rule tied to capabilities
/// is left out when the container holds one of them (as Docker's profile does), so
/// `CAP_SYS_ADMIN` still lets a container mount.
fn default_seccomp(caps: &Capabilities) -> Result<LinuxSeccomp> {
    let profile: DenyProfile = serde_json::from_str(DEFAULT_SECCOMP)
        .map_err(|err| Error::DefaultProfile(err.to_string()))?;
    let mut syscalls = Vec::new();
    for rule in profile.rules {
        let mut exempt = false;
        for c in &rule.unless_capabilities {
            let cap = parse_capability(c).map_err(|err| Error::DefaultProfile(err.to_string()))?;
            exempt |= caps.contains(&cap);
        }
        if exempt {
            continue;
        }
        let mut s = LinuxSyscall::default();
        s.set_names(rule.names)
            .set_action(LinuxSeccompAction::ScmpActErrno)
            .set_errno_ret(Some(rule.errno_ret.unwrap_or(libc::EPERM as u32)))
            .set_args(rule.args);
        syscalls.push(s);
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp
        .set_default_action(profile.default_action)
        .set_architectures(native_architectures())
        .set_syscalls(Some(syscalls));
    Ok(seccomp)
}

/// The architectures a process of this machine can make syscalls in.
fn native_architectures() -> Option<Vec<Arch>> {
    if cfg!(target_arch = "x86_64") {
        Some(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
    } else if cfg!(target_arch = "aarch64") {
        Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
    } else {
        None
    }
}

/// The AppArmor profile to run under. Ignored where the host has no AppArmor; only
/// Localhost profiles (already loaded, named by `localhost_ref`) are applied.
fn apparmor_profile(
    profile: Option<&v1::SecurityProfile>,
    legacy: &str,
    privileged: bool,
    host: &HostLimits,
) -> Result<Option<String>> {
    let (typ, name) = match (profile, legacy) {
        (Some(p), _) => (p.profile_type(), p.localhost_ref.as_str()),
        (None, "") => return Ok(None),
        (None, "runtime/default") => (ProfileType::RuntimeDefault, ""),
        (None, "unconfined") => (ProfileType::Unconfined, ""),
        (None, other) => match other.strip_prefix("localhost/") {
            Some(name) => (ProfileType::Localhost, name),
            None => return Err(invalid(format!("unknown apparmor profile {other:?}"))),
        },
    };
    if !host.apparmor_enabled {
        debug!(
            ?typ,
            "apparmor is not enabled on this host, ignoring the profile"
        );
        return Ok(None);
    }
    if privileged {
        return Ok(None);
    }
    match typ {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => {
            warn!("no runtime/default apparmor profile is loaded by nodelet, running unconfined");
            Ok(None)
        }
        ProfileType::Localhost => {
            let name = name.strip_prefix("localhost/").unwrap_or(name);
            if name.is_empty() {
                return Err(invalid("apparmor profile Localhost without a name"));
            }
            Ok(Some(name.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{Config as ImageConfig, ImageConfiguration};
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1::/:/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        web:x:1001:1001::/home/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        app:x:1000:\n\
        web:x:1001:\n\
        audio:x:29:app,web\n\
        video:x:44: app \n\
        staff:x:50:web\n";

    fn host() -> HostLimits {
        HostLimits {
            min_oom_score_adj: 0,
            max_nofile: 20_000,
            seccomp_supported: true,
            apparmor_enabled: false,
            capabilities: KERNEL_CAPS.into_iter().collect(),
            hugetlb_controller: true,
        }
    }

    fn pod_namespaces() -> Namespaces {
        Namespaces {
            network: Ns::Join("/run/netns/pod".into()),
            ipc: Ns::Join("/proc/1/ns/ipc".into()),
            uts: Ns::Join("/proc/1/ns/uts".into()),
            pid: Ns::New,
        }
    }

    fn image(entrypoint: &[&str], cmd: &[&str], env: &[&str], user: &str) -> ImageConfiguration {
        let strings =
            |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        let mut c = ImageConfig::default();
        c.set_entrypoint(strings(entrypoint))
            .set_cmd(strings(cmd))
            .set_env(strings(env))
            .set_user(non_empty(user).map(String::from));
        let mut img = ImageConfiguration::default();
        img.set_config(Some(c));
        img
    }

    /// A temporary rootfs with passwd/group and the sandbox files, plus a config to edit.
    struct Fixture {
        dir: tempfile::TempDir,
        config: v1::ContainerConfig,
        sandbox: v1::PodSandboxConfig,
        image: ImageConfiguration,
        namespaces: Namespaces,
        files: SandboxFiles,
        host: HostLimits,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let etc = dir.path().join("rootfs/etc");
            fs::create_dir_all(&etc).expect("mkdir etc");
            fs::write(etc.join("passwd"), PASSWD).expect("passwd");
            fs::write(etc.join("group"), GROUP).expect("group");
            let files_dir = dir.path().join("sandbox");
            fs::create_dir_all(files_dir.join("shm")).expect("mkdir sandbox");
            for f in ["hostname", "hosts", "resolv.conf"] {
                fs::write(files_dir.join(f), "").expect("sandbox file");
            }
            let files = SandboxFiles {
                hostname: files_dir.join("hostname"),
                hosts: files_dir.join("hosts"),
                resolv_conf: files_dir.join("resolv.conf"),
                shm: Some(files_dir.join("shm")),
            };
            let config = v1::ContainerConfig {
                metadata: Some(v1::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(v1::ImageSpec {
                    image: "registry.local/app:1".into(),
                    ..Default::default()
                }),
                linux: Some(v1::LinuxContainerConfig {
                    resources: Some(v1::LinuxContainerResources {
                        oom_score_adj: 1000,
                        ..Default::default()
                    }),
                    security_context: Some(v1::LinuxContainerSecurityContext::default()),
                }),
                ..Default::default()
            };
            let sandbox = v1::PodSandboxConfig {
                metadata: Some(v1::PodSandboxMetadata {
                    name: "pod".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                hostname: "pod-host".into(),
                ..Default::default()
            };
            Fixture {
                dir,
                config,
                sandbox,
                image: image(&["/entry"], &["cmd"], &[], ""),
                namespaces: pod_namespaces(),
                files,
                host: host(),
            }
        }

        fn rootfs(&self) -> PathBuf {
            self.dir.path().join("rootfs")
        }

        fn sc(&mut self) -> &mut v1::LinuxContainerSecurityContext {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn resources(&mut self) -> &mut v1::LinuxContainerResources {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default)
        }

        fn spec(&self) -> Result<Spec> {
            let rootfs = self.rootfs();
            container_spec(&ContainerInput {
                id: "c1",
                sandbox_id: "s1",
                config: &self.config,
                sandbox: &self.sandbox,
                image: &self.image,
                rootfs: &rootfs,
                namespaces: &self.namespaces,
                files: &self.files,
                cgroups_path: "/nodelet/s1/c1",
                host: &self.host,
            })
        }
    }

    fn process(spec: &Spec) -> &Process {
        spec.process().as_ref().expect("process")
    }

    #[test]
    fn run_as_group_needs_a_user() {
        let mut f = Fixture::new();
        f.sc().run_as_group = Some(v1::Int64Value { value: 3000 });
        let err = f.spec().expect_err("group alone");
        assert_eq!(
            err.to_string(),
            "run_as_group is set without run_as_user or run_as_username"
        );
        f.sc().run_as_username = "root".into();
        f.spec().expect("group with a user name");
        f.sc().run_as_username = String::new();
        f.sc().run_as_user = Some(v1::Int64Value { value: 0 });
        f.spec().expect("group with a uid");
    }

    fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
        spec.linux().as_ref().expect("linux")
    }

    fn mount_at<'s>(spec: &'s Spec, dest: &str) -> Option<&'s Mount> {
        spec.mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new(dest))
    }

    fn options(m: &Mount) -> Vec<&str> {
        m.options().iter().flatten().map(String::as_str).collect()
    }

    fn kv(k: &str, v: &str) -> v1::KeyValue {
        v1::KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        type Argv = &'static [&'static str];
        // (what, image entrypoint, image cmd, CRI command, CRI args, expected)
        type Case = (&'static str, Argv, Argv, Argv, Argv, Option<Argv>);
        let cases: Vec<Case> = vec![
            (
                "neither: entrypoint + cmd",
                &["/e"],
                &["c1", "c2"],
                &[],
                &[],
                Some(&["/e", "c1", "c2"]),
            ),
            (
                "command drops entrypoint and cmd",
                &["/e"],
                &["c"],
                &["/x"],
                &[],
                Some(&["/x"]),
            ),
            (
                "command + args",
                &["/e"],
                &["c"],
                &["/x"],
                &["a"],
                Some(&["/x", "a"]),
            ),
            (
                "args replace cmd",
                &["/e"],
                &["c"],
                &[],
                &["a", "b"],
                Some(&["/e", "a", "b"]),
            ),
            (
                "args without entrypoint",
                &[],
                &["c"],
                &[],
                &["/a"],
                Some(&["/a"]),
            ),
            ("cmd only", &[], &["/c"], &[], &[], Some(&["/c"])),
            ("nothing at all", &[], &[], &[], &[], None),
        ];
        for (what, ep, cmd, command, args, want) in cases {
            let img = image(ep, cmd, &[], "");
            let config = v1::ContainerConfig {
                command: strings(command),
                args: strings(args),
                ..Default::default()
            };
            let got = process_args(&config, img.config().as_ref());
            match want {
                Some(want) => assert_eq!(got.expect(what), strings(want), "{what}"),
                None => {
                    let err = got.expect_err(what);
                    assert!(matches!(err, Error::InvalidArgument(_)), "{what}");
                    assert_eq!(err.to_string(), "no command specified");
                }
            }
        }
    }

    #[test]
    fn env_merges_image_and_cri() {
        let path = format!("PATH={DEFAULT_PATH}");
        // (what, image env, tty, CRI envs, expected)
        type Case<'p> = (
            &'static str,
            &'static [&'static str],
            bool,
            Vec<v1::KeyValue>,
            Vec<&'p str>,
        );
        let cases: Vec<Case> = vec![
            ("defaults", &[], false, vec![], vec![&path, "HOSTNAME=h"]),
            (
                "cri overrides image in place",
                &["PATH=/bin", "A=1", "B=2"],
                false,
                vec![kv("A", "x"), kv("C", "3")],
                vec!["PATH=/bin", "A=x", "B=2", "HOSTNAME=h", "C=3"],
            ),
            (
                "cri may override HOSTNAME and PATH",
                &[],
                false,
                vec![kv("HOSTNAME", "mine"), kv("PATH", "/p")],
                vec!["HOSTNAME=mine", "PATH=/p"],
            ),
            (
                "tty adds TERM",
                &[],
                true,
                vec![],
                vec![&path, "HOSTNAME=h", "TERM=xterm"],
            ),
            (
                "image TERM kept",
                &["TERM=vt100"],
                true,
                vec![],
                vec![&path, "TERM=vt100", "HOSTNAME=h"],
            ),
            (
                "value with =",
                &[],
                false,
                vec![kv("Q", "a=b")],
                vec![&path, "HOSTNAME=h", "Q=a=b"],
            ),
        ];
        for (what, image_env, tty, cri, want) in cases {
            let got = merge_env(&strings(image_env), "h", tty, &cri);
            assert_eq!(got, strings(&want), "{what}");
        }
    }

    #[test]
    fn working_dir_prefers_cri_then_image_then_root() {
        let mut img = image(&["/e"], &[], &[], "");
        let mut c = img.config().clone().expect("config");
        c.set_working_dir(Some("/srv".into()));
        img.set_config(Some(c));
        let mut config = v1::ContainerConfig::default();
        assert_eq!(
            working_dir(&config, img.config().as_ref()).expect("image"),
            Path::new("/srv")
        );
        assert_eq!(working_dir(&config, None).expect("none"), Path::new("/"));
        config.working_dir = "/work".into();
        assert_eq!(
            working_dir(&config, img.config().as_ref()).expect("cri"),
            Path::new("/work")
        );
        config.working_dir = "rel".into();
        assert!(working_dir(&config, None).is_err());
    }

    #[test]
    fn user_resolution() {
        let f = Fixture::new();
        let rootfs = f.rootfs();
        struct Case {
            what: &'static str,
            req: UserRequest<'static>,
            want: Result<(u32, u32, Vec<u32>), &'static str>,
        }
        let strict = v1::SupplementalGroupsPolicy::Strict;
        let cases = vec![
            Case {
                what: "empty image user is root",
                req: UserRequest::default(),
                want: Ok((0, 0, vec![0])),
            },
            Case {
                what: "image user by name, merged groups",
                req: UserRequest {
                    image_user: "app",
                    ..Default::default()
                },
                want: Ok((1000, 1000, vec![1000, 29, 44])),
            },
            Case {
                what: "image user by uid in passwd",
                req: UserRequest {
                    image_user: "1001",
                    ..Default::default()
                },
                want: Ok((1001, 1001, vec![1001, 29, 50])),
            },
            Case {
                what: "uid not in passwd gets gid 0",
                req: UserRequest {
                    image_user: "4242",
                    ..Default::default()
                },
                want: Ok((4242, 0, vec![0])),
            },
            Case {
                what: "uid:gid",
                req: UserRequest {
                    image_user: "4242:77",
                    ..Default::default()
                },
                want: Ok((4242, 77, vec![77])),
            },
            Case {
                what: "name:group",
                req: UserRequest {
                    image_user: "app:staff",
                    ..Default::default()
                },
                want: Ok((1000, 50, vec![50, 29, 44])),
            },
            Case {
                what: "name:gid",
                req: UserRequest {
                    image_user: "web:7",
                    ..Default::default()
                },
                want: Ok((1001, 7, vec![7, 29, 50])),
            },
            Case {
                what: "unknown name",
                req: UserRequest {
                    image_user: "nobody",
                    ..Default::default()
                },
                want: Err("user \"nobody\" not found in /etc/passwd of image"),
            },
            Case {
                what: "unknown group",
                req: UserRequest {
                    image_user: "app:wheel",
                    ..Default::default()
                },
                want: Err("group \"wheel\" not found in /etc/group of image"),
            },
            Case {
                what: "run_as_user wins over the image, image group ignored",
                req: UserRequest {
                    run_as_user: Some(1001),
                    image_user: "app:staff",
                    ..Default::default()
                },
                want: Ok((1001, 1001, vec![1001, 29, 50])),
            },
            Case {
                what: "run_as_username wins over run_as_user",
                req: UserRequest {
                    run_as_user: Some(1001),
                    run_as_username: "app",
                    ..Default::default()
                },
                want: Ok((1000, 1000, vec![1000, 29, 44])),
            },
            Case {
                what: "run_as_group overrides the primary group",
                req: UserRequest {
                    run_as_user: Some(1000),
                    run_as_group: Some(3000),
                    ..Default::default()
                },
                want: Ok((1000, 3000, vec![3000, 29, 44])),
            },
            Case {
                what: "run_as_group alone keeps the image user",
                req: UserRequest {
                    run_as_group: Some(3000),
                    image_user: "web",
                    ..Default::default()
                },
                want: Ok((1001, 3000, vec![3000, 29, 50])),
            },
            Case {
                what: "supplemental groups are added, duplicates dropped",
                req: UserRequest {
                    run_as_user: Some(1000),
                    supplemental_groups: &[4000, 29, 1000],
                    ..Default::default()
                },
                want: Ok((1000, 1000, vec![1000, 29, 44, 4000])),
            },
            Case {
                what: "strict policy ignores /etc/group membership",
                req: UserRequest {
                    run_as_user: Some(1000),
                    supplemental_groups: &[4000],
                    supplemental_groups_policy: strict,
                    ..Default::default()
                },
                want: Ok((1000, 1000, vec![1000, 4000])),
            },
            Case {
                what: "negative uid",
                req: UserRequest {
                    run_as_user: Some(-1),
                    ..Default::default()
                },
                want: Err("run_as_user -1 is out of range"),
            },
        ];
        for c in cases {
            let got = resolve_user(&rootfs, &c.req);
            match c.want {
                Ok((uid, gid, extra)) => {
                    let u = got.expect(c.what);
                    assert_eq!((u.uid(), u.gid()), (uid, gid), "{}", c.what);
                    assert_eq!(u.additional_gids().clone(), Some(extra), "{}", c.what);
                }
                Err(msg) => {
                    let err = got.expect_err(c.what);
                    assert!(matches!(err, Error::InvalidArgument(_)), "{}", c.what);
                    assert_eq!(err.to_string(), msg, "{}", c.what);
                }
            }
        }
    }

    #[test]
    fn user_files_never_leave_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A "host" passwd beside the rootfs that a naive lookup would reach.
        fs::write(dir.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").expect("host passwd");
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
        fs::create_dir_all(rootfs.join("data")).expect("mkdir");
        fs::write(rootfs.join("data/passwd"), "inner:x:7:8::/:/bin/sh\n").expect("inner");

        // Absolute symlink: resolved against the rootfs, not the host.
        symlink("/data/passwd", rootfs.join("etc/passwd")).expect("symlink");
        let u = resolve_user(
            &rootfs,
            &UserRequest {
                image_user: "inner",
                ..Default::default()
            },
        )
        .expect("absolute link inside root");
        assert_eq!((u.uid(), u.gid()), (7, 8));

        // Relative symlink climbing out: `..` stops at the rootfs.
        fs::remove_file(rootfs.join("etc/passwd")).expect("rm");
        symlink("../../../../../passwd", rootfs.join("etc/passwd")).expect("symlink");
        let err = resolve_user(
            &rootfs,
            &UserRequest {
                image_user: "evil",
                ..Default::default()
            },
        )
        .expect_err("must not read the host file");
        assert_eq!(
            err.to_string(),
            "user \"evil\" not found in /etc/passwd of image"
        );

        // A symlinked /etc directory is resolved inside the rootfs too.
        fs::remove_dir_all(rootfs.join("etc")).expect("rm etc");
        symlink("data", rootfs.join("etc")).expect("symlink etc");
        let u = resolve_user(
            &rootfs,
            &UserRequest {
                image_user: "inner",
                ..Default::default()
            },
        )
        .expect("symlinked etc");
        assert_eq!(u.uid(), 7);

        // A symlink loop is an error, not a hang.
        fs::remove_file(rootfs.join("etc")).expect("rm etc link");
        fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
        symlink("passwd", rootfs.join("etc/passwd")).expect("loop");
        assert!(matches!(
            resolve_user(&rootfs, &UserRequest::default()),
            Err(Error::Io { .. })
        ));

        // No passwd at all: numeric users still work.
        fs::remove_file(rootfs.join("etc/passwd")).expect("rm loop");
        let u = resolve_user(
            &rootfs,
            &UserRequest {
                image_user: "5",
                ..Default::default()
            },
        )
        .expect("missing passwd");
        assert_eq!((u.uid(), u.gid()), (5, 0));
    }

    #[test]
    fn capabilities_add_drop_all() {
        let defaults: Capabilities = DEFAULT_CAPS.into_iter().collect();
        let with = |extra: &[Capability]| {
            let mut s = defaults.clone();
            s.extend(extra.iter().copied());
            s
        };
        let without = |gone: &[Capability]| {
            let mut s = defaults.clone();
            for c in gone {
                s.remove(c);
            }
            s
        };
        // (what, add, drop, expected granted set or error)
        type Case = (
            &'static str,
            &'static [&'static str],
            &'static [&'static str],
            Result<Capabilities, &'static str>,
        );
        let cases: Vec<Case> = vec![
            ("defaults", &[], &[], Ok(defaults.clone())),
            (
                "add bare",
                &["NET_ADMIN"],
                &[],
                Ok(with(&[Capability::NetAdmin])),
            ),
            (
                "add prefixed lowercase",
                &["cap_sys_time"],
                &[],
                Ok(with(&[Capability::SysTime])),
            ),
            (
                "drop",
                &[],
                &["CAP_CHOWN", "KILL"],
                Ok(without(&[Capability::Chown, Capability::Kill])),
            ),
            (
                "drop wins over add",
                &["NET_ADMIN"],
                &["NET_ADMIN"],
                Ok(defaults.clone()),
            ),
            (
                "drop ALL then add",
                &["NET_BIND_SERVICE"],
                &["ALL"],
                Ok([Capability::NetBindService].into_iter().collect()),
            ),
            ("drop all", &[], &["all"], Ok(Capabilities::new())),
            ("unknown", &["FLY"], &[], Err("unknown capability \"FLY\"")),
        ];
        for (what, add, drop, want) in cases {
            let caps = v1::Capability {
                add_capabilities: strings(add),
                drop_capabilities: strings(drop),
                add_ambient_capabilities: vec![],
            };
            match (
                capability_sets(Some(&caps), false, &host().capabilities),
                want,
            ) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got.granted, want, "{what}");
                    assert!(got.ambient.is_empty(), "{what}");
                }
                (Err(err), Err(msg)) => assert_eq!(err.to_string(), msg, "{what}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }

        let kernel: Capabilities = KERNEL_CAPS.into_iter().collect();
        let all_but_chown = capability_sets(
            Some(&v1::Capability {
                add_capabilities: strings(&["ALL"]),
                drop_capabilities: strings(&["CHOWN"]),
                add_ambient_capabilities: vec![],
            }),
            false,
            &kernel,
        )
        .expect("ALL");
        assert_eq!(all_but_chown.granted.len(), kernel.len() - 1);
        assert!(!all_but_chown.granted.contains(&Capability::Chown));

        // Privileged: every capability the runtime has; add/drop ignored.
        let privileged = capability_sets(
            Some(&v1::Capability {
                add_capabilities: vec![],
                drop_capabilities: strings(&["ALL"]),
                add_ambient_capabilities: vec![],
            }),
            true,
            &kernel,
        )
        .expect("privileged");
        assert_eq!(privileged.granted, kernel);
        if let Some(last) = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        {
            assert_eq!(
                kernel_capabilities().len(),
                (last + 1).min(KERNEL_CAPS.len())
            );
        }

        // A runtime whose bounding set lacks SYS_ADMIN and NET_RAW (a nested container):
        // privileged and ALL mean what it has; the defaults lose NET_RAW; an explicit
        // add of what it lacks is refused by name.
        let mut narrow = kernel.clone();
        narrow.remove(&Capability::SysAdmin);
        narrow.remove(&Capability::NetRaw);
        let p = capability_sets(None, true, &narrow).expect("privileged");
        assert_eq!(p.granted, narrow);
        let all = capability_sets(
            Some(&v1::Capability {
                add_capabilities: strings(&["ALL"]),
                ..Default::default()
            }),
            false,
            &narrow,
        )
        .expect("ALL");
        assert_eq!(all.granted, narrow);
        let defaults = capability_sets(None, false, &narrow).expect("defaults");
        assert_eq!(defaults.granted.len(), DEFAULT_CAPS.len() - 1);
        assert!(!defaults.granted.contains(&Capability::NetRaw));
        let err = capability_sets(
            Some(&v1::Capability {
                add_capabilities: strings(&["SYS_ADMIN"]),
                ..Default::default()
            }),
            false,
            &narrow,
        )
        .expect_err("outside the bounding set");
        assert_eq!(
            err.to_string(),
            "capability \"SYS_ADMIN\" is not in the runtime's bounding set"
        );

        // Ambient caps are granted and inheritable too.
        let ambient = capability_sets(
            Some(&v1::Capability {
                add_capabilities: vec![],
                drop_capabilities: strings(&["ALL"]),
                add_ambient_capabilities: strings(&["NET_BIND_SERVICE"]),
            }),
            false,
            &kernel,
        )
        .expect("ambient");
        let one: Capabilities = [Capability::NetBindService].into_iter().collect();
        assert_eq!(ambient.granted, one);
        let oci = ambient.oci().expect("oci");
        assert_eq!(oci.ambient().as_ref(), Some(&one));
        assert_eq!(oci.inheritable().as_ref(), Some(&one));
    }

    #[test]
    fn kernel_cap_table_matches_capability_numbers() {
        // Spot-check the table against the kernel's numbering.
        for (n, cap) in [
            (0, Capability::Chown),
            (13, Capability::NetRaw),
            (21, Capability::SysAdmin),
            (27, Capability::Mknod),
            (31, Capability::Setfcap),
            (37, Capability::AuditRead),
            (40, Capability::CheckpointRestore),
        ] {
            assert_eq!(KERNEL_CAPS[n], cap, "cap {n}");
        }
        let unique: HashSet<_> = KERNEL_CAPS.iter().collect();
        assert_eq!(unique.len(), KERNEL_CAPS.len());
    }

    #[test]
    fn cri_mount_propagation() {
        let f = Fixture::new();
        let host = f.dir.path().join("vol");
        fs::create_dir_all(&host).expect("vol");
        let host_str = host.to_string_lossy().into_owned();
        let cases = [
            (
                v1::MountPropagation::PropagationPrivate,
                false,
                "rprivate",
                "rw",
                None,
            ),
            (
                v1::MountPropagation::PropagationHostToContainer,
                true,
                "rslave",
                "ro",
                Some("rslave"),
            ),
            (
                v1::MountPropagation::PropagationBidirectional,
                false,
                "rshared",
                "rw",
                Some("rshared"),
            ),
        ];
        for (prop, readonly, opt, rw, rootfs_prop) in cases {
            let mut f = Fixture::new();
            f.config.mounts = vec![v1::Mount {
                container_path: "/data/".into(),
                host_path: host_str.clone(),
                readonly,
                propagation: prop as i32,
                ..Default::default()
            }];
            let spec = f.spec().expect("spec");
            let m = mount_at(&spec, "/data").expect("mount");
            assert_eq!(m.typ().as_deref(), Some("bind"));
            assert_eq!(m.source().as_deref(), Some(host.as_path()));
            assert_eq!(options(m), vec!["rbind", opt, rw], "{prop:?}");
            assert_eq!(
                linux(&spec).rootfs_propagation().as_deref(),
                rootfs_prop,
                "{prop:?}"
            );
        }

        // Bidirectional anywhere wins over host-to-container.
        let mut f2 = Fixture::new();
        f2.config.mounts = vec![
            v1::Mount {
                container_path: "/a".into(),
                host_path: host_str.clone(),
                propagation: v1::MountPropagation::PropagationBidirectional as i32,
                ..Default::default()
            },
            v1::Mount {
                container_path: "/b".into(),
                host_path: host_str.clone(),
                propagation: v1::MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            },
        ];
        let spec = f2.spec().expect("spec");
        assert_eq!(
            linux(&spec).rootfs_propagation().as_deref(),
            Some("rshared")
        );
        drop(f);
    }

    #[test]
    fn cri_mounts_replace_defaults_and_sort_parents_first() {
        let mut f = Fixture::new();
        let vol = f.dir.path().join("vol");
        let hosts = f.dir.path().join("kubelet-hosts");
        fs::create_dir_all(&vol).expect("vol");
        fs::write(&hosts, "").expect("hosts");
        let m = |c: &str, h: &Path| v1::Mount {
            container_path: c.into(),
            host_path: h.to_string_lossy().into_owned(),
            ..Default::default()
        };
        f.config.mounts = vec![
            m("/data/sub", &vol),
            m("/etc/hosts", &hosts),
            m("/data", &vol),
            m("/sys/fs/cgroup", &vol),
        ];
        let spec = f.spec().expect("spec");
        let dests: Vec<&Path> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().as_path())
            .collect();
        // Each destination once.
        let unique: HashSet<_> = dests.iter().collect();
        assert_eq!(unique.len(), dests.len(), "{dests:?}");
        // The kubelet's /etc/hosts replaces the sandbox's.
        assert_eq!(
            mount_at(&spec, "/etc/hosts").and_then(|m| m.source().clone()),
            Some(fs::canonicalize(&hosts).expect("canon"))
        );
        // The CRI mount on /sys/fs/cgroup replaces the cgroup mount.
        assert_eq!(
            mount_at(&spec, "/sys/fs/cgroup")
                .and_then(|m| m.typ().clone())
                .as_deref(),
            Some("bind")
        );
        // Parents before children.
        let pos = |d: &str| dests.iter().position(|x| *x == Path::new(d)).expect(d);
        assert!(pos("/data") < pos("/data/sub"));
        assert!(pos("/proc") < pos("/data"));
        // The sandbox files and shm are there.
        for d in [
            "/etc/hostname",
            "/etc/resolv.conf",
            "/dev/shm",
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
        ] {
            assert!(mount_at(&spec, d).is_some(), "{d}");
        }
        assert_eq!(
            mount_at(&spec, "/dev/shm").and_then(|m| m.source().clone()),
            f.files.shm.clone()
        );

        // A CRI /dev replaces every default under /dev.
        let mut f = Fixture::new();
        let dev = f.dir.path().join("dev");
        fs::create_dir_all(&dev).expect("dev");
        f.config.mounts = vec![m("/dev", &dev)];
        let spec = f.spec().expect("spec");
        assert!(mount_at(&spec, "/dev/pts").is_none());
        assert!(mount_at(&spec, "/dev/mqueue").is_none());
        // …but our /dev/shm bind is a CRI-style mount and stays, after /dev.
        assert_eq!(
            mount_at(&spec, "/dev")
                .and_then(|m| m.typ().clone())
                .as_deref(),
            Some("bind")
        );
    }

    #[test]
    fn shm_source_follows_ipc() {
        let cases = [
            (
                "own shm",
                true,
                Ns::Join("/proc/1/ns/ipc".into()),
                Some("bind"),
                Some("sandbox"),
            ),
            ("host ipc", false, Ns::Host, Some("bind"), Some("/dev/shm")),
            ("no shm file", false, Ns::New, Some("tmpfs"), Some("shm")),
        ];
        for (what, has_shm, ipc, typ, source) in cases {
            let mut f = Fixture::new();
            if !has_shm {
                f.files.shm = None;
            }
            f.namespaces.ipc = ipc;
            let spec = f.spec().expect("spec");
            let m = mount_at(&spec, "/dev/shm").expect(what);
            assert_eq!(m.typ().as_deref(), typ, "{what}");
            let src = m.source().clone().unwrap_or_default();
            assert!(
                src.to_string_lossy().contains(source.unwrap_or("")),
                "{what}: {src:?}"
            );
        }
    }

    #[test]
    fn bad_mounts_are_invalid_arguments() {
        let f = Fixture::new();
        let ok_host = f.dir.path().to_string_lossy().into_owned();
        let cases = [
            (
                "/data",
                "/nonexistent/nodelet-test",
                "/nonexistent/nodelet-test",
            ),
            ("relative", ok_host.as_str(), "not an absolute path"),
            ("/data", "", "empty host_path"),
        ];
        for (container, host, needle) in cases {
            let mut f = Fixture::new();
            f.config.mounts = vec![v1::Mount {
                container_path: container.into(),
                host_path: host.into(),
                ..Default::default()
            }];
            let err = f.spec().expect_err(needle);
            assert!(matches!(err, Error::InvalidArgument(_)), "{needle}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn readonly_rootfs_makes_sandbox_files_readonly() {
        for readonly in [false, true] {
            let mut f = Fixture::new();
            f.sc().readonly_rootfs = readonly;
            let spec = f.spec().expect("spec");
            assert_eq!(
                spec.root().as_ref().and_then(|r| r.readonly()),
                Some(readonly)
            );
            let want = if readonly { "ro" } else { "rw" };
            for d in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
                let m = mount_at(&spec, d).expect(d);
                assert!(options(m).contains(&want), "{d} readonly={readonly}");
            }
            let shm = mount_at(&spec, "/dev/shm").expect("shm");
            assert!(options(shm).contains(&"rw"));
        }
    }

    #[test]
    fn namespaces_mapping() {
        let ns = |typ: LinuxNamespaceType, path: Option<&str>| {
            let mut n = LinuxNamespace::default();
            n.set_typ(typ).set_path(path.map(PathBuf::from));
            n
        };
        use LinuxNamespaceType as T;
        let cases = [
            (
                "pod",
                pod_namespaces(),
                vec![
                    ns(T::Pid, None),
                    ns(T::Network, Some("/run/netns/pod")),
                    ns(T::Ipc, Some("/proc/1/ns/ipc")),
                    ns(T::Uts, Some("/proc/1/ns/uts")),
                    ns(T::Mount, None),
                ],
            ),
            (
                "host everything",
                Namespaces {
                    network: Ns::Host,
                    ipc: Ns::Host,
                    uts: Ns::Host,
                    pid: Ns::Host,
                },
                vec![ns(T::Mount, None)],
            ),
            (
                "shared pid",
                Namespaces {
                    network: Ns::New,
                    ipc: Ns::New,
                    uts: Ns::New,
                    pid: Ns::Join("/proc/9/ns/pid".into()),
                },
                vec![
                    ns(T::Pid, Some("/proc/9/ns/pid")),
                    ns(T::Network, None),
                    ns(T::Ipc, None),
                    ns(T::Uts, None),
                    ns(T::Mount, None),
                ],
            ),
        ];
        for (what, input, want) in cases {
            assert_eq!(linux_namespaces(&input).expect(what), want, "{what}");
        }
    }

    #[test]
    fn hostname_only_with_own_uts() {
        let mut f = Fixture::new();
        let spec = f.spec().expect("spec");
        assert_eq!(spec.hostname().as_deref(), Some("pod-host"));
        assert!(
            process(&spec)
                .env()
                .iter()
                .flatten()
                .any(|e| e == "HOSTNAME=pod-host")
        );
        f.namespaces.uts = Ns::Host;
        let spec = f.spec().expect("spec");
        assert_eq!(spec.hostname().as_deref(), None);
    }

    #[test]
    fn oom_score_adj_is_clamped_up() {
        let cases = [
            // (requested, host min, applied)
            (1000, 0, 1000),
            (-997, 0, 0),
            (-997, -999, -997),
            (5000, 0, 1000),
            (-5000, -1000, -1000),
        ];
        for (requested, min, want) in cases {
            let h = HostLimits {
                min_oom_score_adj: min,
                ..host()
            };
            assert_eq!(
                clamp_oom_score_adj(requested, &h),
                want,
                "{requested} min {min}"
            );
        }
        let mut f = Fixture::new();
        f.resources().oom_score_adj = -997;
        let spec = f.spec().expect("spec");
        assert_eq!(process(&spec).oom_score_adj(), Some(0));
    }

    #[test]
    fn nofile_is_clamped_to_the_host() {
        for (max, want) in [(20_000, 20_000), (u64::MAX, NOFILE), (NOFILE, NOFILE)] {
            let h = HostLimits {
                max_nofile: max,
                ..host()
            };
            let r = nofile_rlimit(&h).expect("rlimit");
            assert_eq!(r.typ(), PosixRlimitType::RlimitNofile);
            assert_eq!((r.soft(), r.hard()), (want, want), "max {max}");
        }
        assert_eq!(
            parse_nofile_hard(
                "Limit  Soft Limit  Hard Limit  Units\nMax open files  1024  524288  files\n"
            ),
            Some(524_288)
        );
        assert_eq!(
            parse_nofile_hard("Max open files  unlimited  unlimited  files\n"),
            Some(u64::MAX)
        );
    }

    #[test]
    fn own_capabilities_and_hugetlb_from_proc() {
        // CapBnd lacks bit 21 (SYS_ADMIN); CapPrm lacks bit 13 (NET_RAW).
        let full: u64 = (1 << 41) - 1;
        let status = format!(
            "Name:\tcri\nCapPrm:\t{:016x}\nCapBnd:\t{:016x}\nSeccomp:\t0\n",
            full & !(1 << 13),
            full & !(1 << 21)
        );
        let caps = own_capabilities(&status).expect("caps");
        assert!(!caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::NetRaw));
        assert!(caps.contains(&Capability::Chown));
        assert_eq!(own_capabilities("Name:\tx\n"), None);

        let v1_with = "30 25 0:26 / /sys/fs/cgroup/hugetlb rw,nosuid - cgroup cgroup rw,hugetlb\n";
        let v1_without = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
            31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert!(mountinfo_has_v1_controller(v1_with, "hugetlb"));
        assert!(!mountinfo_has_v1_controller(v1_without, "hugetlb"));
        assert!(!mountinfo_has_v1_controller("garbage", "hugetlb"));
    }

    #[test]
    fn resources_mapping() {
        let r = v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![v1::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let out = linux_resources(Some(&r), vec![], &host()).expect("resources");
        let cpu = out.cpu().clone().expect("cpu");
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        let mem = out.memory().expect("memory");
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), None, "swap only when CRI sets it");
        let huge = out.hugepage_limits().clone().expect("hugepages");
        assert_eq!(
            (huge[0].page_size().as_str(), huge[0].limit()),
            ("2MB", 4 << 20)
        );
        assert_eq!(
            out.unified()
                .as_ref()
                .and_then(|u| u.get("memory.high"))
                .map(String::as_str),
            Some("1000000")
        );
        assert!(out.pids().is_none());

        // No hugetlb controller: the limits go (the kubelet sends them regardless), the
        // rest stays.
        let no_hugetlb = HostLimits {
            hugetlb_controller: false,
            ..host()
        };
        let out = linux_resources(Some(&r), vec![], &no_hugetlb).expect("no hugetlb");
        assert_eq!(out.hugepage_limits(), &None);
        assert_eq!(out.memory().expect("memory").limit(), Some(64 << 20));

        let swap = v1::LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            memory_swap_limit_in_bytes: 2 << 20,
            ..Default::default()
        };
        let out = linux_resources(Some(&swap), vec![], &host()).expect("swap");
        assert_eq!(out.memory().and_then(|m| m.swap()), Some(2 << 20));

        let empty = linux_resources(
            Some(&v1::LinuxContainerResources::default()),
            vec![],
            &host(),
        )
        .expect("empty");
        assert!(empty.cpu().is_none() && empty.memory().is_none());

        let bad = v1::LinuxContainerResources {
            cpu_shares: -2,
            ..Default::default()
        };
        assert!(matches!(
            linux_resources(Some(&bad), vec![], &host()),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn sandbox_sysctls_are_namespaced_only() {
        let host_net = Namespaces {
            network: Ns::Host,
            ..pod_namespaces()
        };
        let host_ipc = Namespaces {
            ipc: Ns::Host,
            ..pod_namespaces()
        };
        let pod = pod_namespaces();
        let cases: Vec<(&str, &Namespaces, Result<&str, &str>)> = vec![
            ("net.ipv4.ip_forward", &pod, Ok("net.ipv4.ip_forward")),
            (
                "net/ipv4/conf/eth0.1/rp_filter",
                &pod,
                Ok("net.ipv4.conf.eth0/1.rp_filter"),
            ),
            ("kernel.shm_rmid_forced", &pod, Ok("kernel.shm_rmid_forced")),
            ("kernel.msgmax", &pod, Ok("kernel.msgmax")),
            ("kernel.sem", &pod, Ok("kernel.sem")),
            ("fs.mqueue.msg_max", &pod, Ok("fs.mqueue.msg_max")),
            (
                "kernel.panic",
                &pod,
                Err("sysctl \"kernel.panic\" is not namespaced"),
            ),
            (
                "vm.swappiness",
                &pod,
                Err("sysctl \"vm.swappiness\" is not namespaced"),
            ),
            ("kernel.semaphore", &pod, Err("not namespaced")),
            ("net.core.somaxconn", &host_net, Err("host network")),
            ("kernel.shmmax", &host_ipc, Err("host IPC")),
            ("net.core.somaxconn", &host_ipc, Ok("net.core.somaxconn")),
        ];
        for (name, ns, want) in cases {
            let input: HashMap<String, String> =
                [(name.to_string(), "1".to_string())].into_iter().collect();
            match (validate_sysctls(&input, ns), want) {
                (Ok(got), Ok(key)) => {
                    assert_eq!(got.get(key).map(String::as_str), Some("1"), "{name}")
                }
                (Err(err), Err(needle)) => {
                    assert!(matches!(err, Error::InvalidArgument(_)), "{name}");
                    assert!(err.to_string().contains(needle), "{name}: {err}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn seccomp_profile_choice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = dir.path().join("profile.json");
        fs::write(&local, r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#)
            .expect("profile");
        let broken = dir.path().join("broken.json");
        fs::write(&broken, "{").expect("broken");
        let profile = |t: ProfileType, r: &str| {
            Some(v1::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            })
        };
        let local_ref = local.to_string_lossy().into_owned();
        let broken_ref = broken.to_string_lossy().into_owned();
        let legacy_local = format!("localhost/{local_ref}");
        enum Want {
            None,
            Default,
            Local,
            Err(&'static str),
        }
        let cases = vec![
            ("unset is unconfined", None, "", false, true, Want::None),
            (
                "runtime default",
                profile(ProfileType::RuntimeDefault, ""),
                "",
                false,
                true,
                Want::Default,
            ),
            (
                "legacy runtime/default",
                None,
                "runtime/default",
                false,
                true,
                Want::Default,
            ),
            (
                "unconfined",
                profile(ProfileType::Unconfined, ""),
                "",
                false,
                true,
                Want::None,
            ),
            (
                "privileged is unconfined",
                profile(ProfileType::RuntimeDefault, ""),
                "",
                true,
                true,
                Want::None,
            ),
            (
                "kernel without seccomp",
                profile(ProfileType::RuntimeDefault, ""),
                "",
                false,
                false,
                Want::None,
            ),
            (
                "localhost",
                profile(ProfileType::Localhost, &local_ref),
                "",
                false,
                true,
                Want::Local,
            ),
            (
                "legacy localhost",
                None,
                &legacy_local,
                false,
                true,
                Want::Local,
            ),
            (
                "localhost missing",
                profile(ProfileType::Localhost, "/nonexistent/p.json"),
                "",
                false,
                true,
                Want::Err("/nonexistent/p.json"),
            ),
            (
                "localhost broken",
                profile(ProfileType::Localhost, &broken_ref),
                "",
                false,
                true,
                Want::Err("broken.json"),
            ),
            (
                "localhost relative",
                profile(ProfileType::Localhost, "p.json"),
                "",
                false,
                true,
                Want::Err("not an absolute path"),
            ),
        ];
        for (what, p, legacy, privileged, supported, want) in cases {
            let h = HostLimits {
                seccomp_supported: supported,
                ..host()
            };
            let caps: Capabilities = DEFAULT_CAPS.into_iter().collect();
            let got = seccomp_choice(p.as_ref(), legacy, Seccomp::Unconfined)
                .and_then(|c| seccomp_profile(&c, privileged, &h, &caps));
            match (got, want) {
                (Ok(None), Want::None) => {}
                (Ok(Some(s)), Want::Default) => {
                    assert_eq!(
                        s.default_action(),
                        LinuxSeccompAction::ScmpActAllow,
                        "{what}"
                    );
                }
                (Ok(Some(s)), Want::Local) => {
                    assert_eq!(
                        s.default_action(),
                        LinuxSeccompAction::ScmpActErrno,
                        "{what}"
                    );
                }
                (Err(err), Want::Err(needle)) => {
                    assert!(matches!(err, Error::InvalidArgument(_)), "{what}");
                    assert!(err.to_string().contains(needle), "{what}: {err}");
                }
                (got, _) => panic!("{what}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn default_seccomp_denies_what_caps_do_not_allow() {
        let denied = |caps: &Capabilities| -> HashSet<String> {
            let s = default_seccomp(caps).expect("default profile");
            s.syscalls()
                .iter()
                .flatten()
                .filter(|r| r.args().is_none())
                .flat_map(|r| r.names().clone())
                .collect()
        };
        let defaults: Capabilities = DEFAULT_CAPS.into_iter().collect();
        let plain = denied(&defaults);
        for name in [
            "mount",
            "unshare",
            "kexec_load",
            "init_module",
            "keyctl",
            "io_uring_setup",
            "clone3",
            "reboot",
        ] {
            assert!(plain.contains(name), "{name} must be denied by default");
        }
        for name in ["read", "clone", "ptrace", "chroot"] {
            assert!(!plain.contains(name), "{name} must stay allowed");
        }
        let mut admin = defaults.clone();
        admin.insert(Capability::SysAdmin);
        let with_admin = denied(&admin);
        assert!(!with_admin.contains("mount") && !with_admin.contains("unshare"));
        assert!(with_admin.contains("kexec_load") && with_admin.contains("keyctl"));

        // clone is only filtered for namespace flags, one rule per flag.
        let s = default_seccomp(&defaults).expect("profile");
        let clone_rules = s
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names() == &["clone".to_string()])
            .count();
        assert_eq!(clone_rules, 7);
        let clone3 = s
            .syscalls()
            .iter()
            .flatten()
            .find(|r| r.names().iter().any(|n| n == "clone3"))
            .expect("clone3");
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));
        assert_eq!(
            s.architectures().is_some(),
            cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
        );
    }

    #[test]
    fn apparmor_only_where_enabled() {
        let local = Some(v1::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: "localhost/k8s-deny-write".into(),
        });
        let rd = Some(v1::SecurityProfile::default());
        let on = HostLimits {
            apparmor_enabled: true,
            ..host()
        };
        let off = host();
        assert_eq!(
            apparmor_profile(local.as_ref(), "", false, &off).expect("off"),
            None
        );
        assert_eq!(
            apparmor_profile(local.as_ref(), "", false, &on)
                .expect("on")
                .as_deref(),
            Some("k8s-deny-write")
        );
        assert_eq!(
            apparmor_profile(local.as_ref(), "", true, &on).expect("privileged"),
            None
        );
        assert_eq!(
            apparmor_profile(rd.as_ref(), "", false, &on).expect("default"),
            None
        );
        assert_eq!(
            apparmor_profile(None, "localhost/p", false, &on)
                .expect("legacy")
                .as_deref(),
            Some("p")
        );
    }

    #[test]
    fn devices_and_cgroup_rules() {
        let mut f = Fixture::new();
        f.config.devices = vec![v1::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let spec = f.spec().expect("spec");
        let l = linux(&spec);
        let dev = l
            .devices()
            .iter()
            .flatten()
            .find(|d| d.path() == Path::new("/dev/mynull"))
            .expect("device");
        assert_eq!(
            (dev.typ(), dev.major(), dev.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        let rules = l
            .resources()
            .as_ref()
            .and_then(|r| r.devices().clone())
            .expect("rules");
        assert!(!rules[0].allow(), "deny all first");
        assert!(rules.iter().any(|r| r.allow()
            && r.major() == Some(1)
            && r.minor() == Some(3)
            && r.access().as_deref() == Some("rw")));
        // The pts are allowed by default.
        assert!(
            rules
                .iter()
                .any(|r| r.allow() && r.major() == Some(136) && r.minor().is_none())
        );

        let cases = [
            ("/nonexistent/dev", "", "/nonexistent/dev"),
            ("/dev/null", "rwx", "invalid permissions"),
        ];
        for (host_path, perms, needle) in cases {
            let mut f = Fixture::new();
            f.config.devices = vec![v1::Device {
                container_path: "/dev/x".into(),
                host_path: host_path.into(),
                permissions: perms.into(),
            }];
            let err = f.spec().expect_err(needle);
            assert!(err.to_string().contains(needle), "{err}");
        }
        let mut f = Fixture::new();
        f.config.devices = vec![v1::Device {
            container_path: "/dev/x".into(),
            host_path: f.files.hosts.to_string_lossy().into_owned(),
            permissions: String::new(),
        }];
        assert!(
            f.spec()
                .expect_err("regular file")
                .to_string()
                .contains("is not a device")
        );
    }

    #[test]
    fn privileged_container() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        let err = f.spec().expect_err("sandbox not privileged");
        assert!(matches!(err, Error::InvalidArgument(_)));

        f.sandbox.linux = Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        f.sc().seccomp = Some(v1::SecurityProfile::default());
        let spec = f.spec().expect("privileged");
        let l = linux(&spec);
        assert_eq!(l.masked_paths().as_deref(), Some(&[][..]));
        assert_eq!(l.readonly_paths().as_deref(), Some(&[][..]));
        assert!(l.seccomp().is_none());
        let rules = l
            .resources()
            .as_ref()
            .and_then(|r| r.devices().clone())
            .expect("rules");
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow() && rules[0].typ().is_none());
        assert!(
            l.devices()
                .iter()
                .flatten()
                .any(|d| d.path() == Path::new("/dev/null"))
        );
        for d in ["/sys", "/sys/fs/cgroup"] {
            assert!(options(mount_at(&spec, d).expect(d)).contains(&"rw"), "{d}");
        }
        let caps = process(&spec).capabilities().clone().expect("caps");
        assert_eq!(caps.bounding().clone(), Some(kernel_capabilities()));
    }

    #[test]
    fn container_spec_defaults() {
        let mut f = Fixture::new();
        f.config.annotations = [("a".to_string(), "b".to_string())].into_iter().collect();
        f.sc().no_new_privs = true;
        let spec = f.spec().expect("spec");
        let p = process(&spec);
        assert_eq!(p.args().as_deref(), Some(&strings(&["/entry", "cmd"])[..]));
        assert_eq!(p.cwd(), Path::new("/"));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), Some(1000));
        assert_eq!(p.terminal(), Some(false));
        let rl = p.rlimits().clone().expect("rlimits");
        assert_eq!(rl[0].hard(), 20_000);
        let caps = p.capabilities().clone().expect("caps");
        assert_eq!(
            caps.bounding().clone(),
            Some(DEFAULT_CAPS.into_iter().collect())
        );
        assert_eq!(caps.ambient().clone(), Some(Capabilities::new()));
        let l = linux(&spec);
        assert_eq!(
            l.masked_paths().clone(),
            Some(strings(&DEFAULT_MASKED_PATHS))
        );
        assert_eq!(
            l.readonly_paths().clone(),
            Some(strings(&DEFAULT_READONLY_PATHS))
        );
        assert_eq!(
            l.cgroups_path().as_deref(),
            Some(Path::new("/nodelet/s1/c1"))
        );
        assert!(
            l.seccomp().is_none(),
            "no profile asked: unconfined, as containerd"
        );
        assert!(l.sysctl().is_none());
        let cgroup = mount_at(&spec, "/sys/fs/cgroup").expect("cgroup");
        assert!(options(cgroup).contains(&"ro"));
        assert!(mount_at(&spec, "/run").is_none());
        let ann = spec.annotations().clone().expect("annotations");
        for (k, v) in [
            ("a", "b"),
            (ANN_CONTAINER_TYPE, "container"),
            (ANN_SANDBOX_ID, "s1"),
            (ANN_CONTAINER_NAME, "app"),
            (ANN_IMAGE_NAME, "registry.local/app:1"),
            (ANN_SANDBOX_NAME, "pod"),
            (ANN_SANDBOX_NAMESPACE, "default"),
            (ANN_SANDBOX_UID, "uid-1"),
        ] {
            assert_eq!(ann.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(
            spec.root().as_ref().map(|r| r.path().clone()),
            Some(f.rootfs())
        );

        // CRI masked/readonly lists win when given.
        f.sc().masked_paths = strings(&["/proc/x"]);
        f.sc().readonly_paths = strings(&["/proc/y"]);
        let spec = f.spec().expect("spec");
        assert_eq!(
            linux(&spec).masked_paths().clone(),
            Some(strings(&["/proc/x"]))
        );
        assert_eq!(
            linux(&spec).readonly_paths().clone(),
            Some(strings(&["/proc/y"]))
        );
    }

    #[test]
    fn sandbox_spec_for_the_infra_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = host();
        let mut config = v1::PodSandboxConfig {
            hostname: "pod-host".into(),
            metadata: Some(v1::PodSandboxMetadata {
                name: "pod".into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 0,
            }),
            linux: Some(v1::LinuxPodSandboxConfig {
                sysctls: [(
                    "net.ipv4.ip_unprivileged_port_start".to_string(),
                    "0".to_string(),
                )]
                .into_iter()
                .collect(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    run_as_user: Some(v1::Int64Value { value: 65535 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let shm_mount = bind(
            Path::new("/dev/shm"),
            Path::new("/run/nodelet/shm"),
            vec!["rbind".into()],
        )
        .expect("bind");
        let ns = pod_namespaces();
        let spec_of = |config: &v1::PodSandboxConfig, ns: &Namespaces| {
            sandbox_spec(&SandboxInput {
                id: "s1",
                config,
                rootfs: dir.path(),
                args: strings(&["/pause"]),
                extra_mounts: vec![shm_mount.clone()],
                namespaces: ns,
                cgroups_path: "/nodelet/s1",
                host: &h,
            })
        };
        let spec = spec_of(&config, &ns).expect("sandbox");
        let p = process(&spec);
        assert_eq!(p.args().as_deref(), Some(&strings(&["/pause"])[..]));
        assert_eq!((p.user().uid(), p.user().gid()), (65535, 0));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), Some(0), "-998 clamped to the host's 0");
        let caps = p.capabilities().clone().expect("caps");
        assert_eq!(caps.bounding().clone(), Some(Capabilities::new()));
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        assert_eq!(spec.hostname().as_deref(), Some("pod-host"));
        let l = linux(&spec);
        assert_eq!(
            l.sysctl()
                .as_ref()
                .and_then(|s| s.get("net.ipv4.ip_unprivileged_port_start"))
                .map(String::as_str),
            Some("0")
        );
        assert!(l.seccomp().is_some(), "RuntimeDefault unless unconfined");
        let shm = mount_at(&spec, "/dev/shm").expect("shm");
        assert_eq!(shm.source().as_deref(), Some(Path::new("/run/nodelet/shm")));
        assert_eq!(
            spec.mounts()
                .iter()
                .flatten()
                .filter(|m| m.destination() == Path::new("/dev/shm"))
                .count(),
            1
        );
        let ann = spec.annotations().clone().expect("annotations");
        assert_eq!(
            ann.get(ANN_CONTAINER_TYPE).map(String::as_str),
            Some("sandbox")
        );
        assert_eq!(ann.get(ANN_SANDBOX_ID).map(String::as_str), Some("s1"));

        // hostNetwork: net.* sysctls are refused, hostname stays the node's.
        let host_ns = Namespaces {
            network: Ns::Host,
            uts: Ns::Host,
            ..pod_namespaces()
        };
        let err = spec_of(&config, &host_ns).expect_err("net sysctl with host network");
        assert!(
            err.to_string()
                .contains("net.ipv4.ip_unprivileged_port_start"),
            "{err}"
        );
        if let Some(l) = config.linux.as_mut() {
            l.sysctls.clear();
            if let Some(sc) = l.security_context.as_mut() {
                sc.seccomp = Some(v1::SecurityProfile {
                    profile_type: ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                });
            }
        }
        let spec = spec_of(&config, &host_ns).expect("host network sandbox");
        assert_eq!(spec.hostname().as_deref(), None);
        assert!(linux(&spec).seccomp().is_none());
        assert!(linux(&spec).sysctl().is_none());
    }

    #[test]
    fn write_bundle_round_trips() {
        let f = Fixture::new();
        let spec = f.spec().expect("spec");
        let dir = tempfile::tempdir().expect("tempdir");
        write_bundle(dir.path(), &spec).expect("write");
        let back = Spec::load(dir.path().join("config.json")).expect("load");
        assert_eq!(back, spec);
        assert!(!dir.path().join(".config.json.tmp").exists());
        let mode = fs::metadata(dir.path().join("config.json"))
            .expect("meta")
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Overwrite in place.
        write_bundle(dir.path(), &spec).expect("rewrite");
        let err = write_bundle(&dir.path().join("missing"), &spec).expect_err("no dir");
        assert!(matches!(err, Error::Io { .. }));
    }
}
