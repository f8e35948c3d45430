//! The pure planner: desired pod + observed runtime state → what to do next.
//!
//! One call looks at the whole pod and says which sandbox to create, which containers to
//! kill (and why), which to start (in order), and which are held back by crash-loop
//! backoff. It does no I/O and keeps no state: the worker calls it again after every
//! runtime event (or at `requeue_after`) and the plan converges on the desired pod.
//!
//! The decisions follow the upstream kubelet's (`computePodActions`):
//! - a missing, not-ready or duplicated sandbox, a sandbox in the wrong network mode, or
//!   one without an IP means the pod is killed and a new sandbox created — unless the
//!   pod is done for good (restartPolicy Never with containers that ran, or OnFailure
//!   with every regular container succeeded);
//! - init containers run one at a time in spec order, each must exit 0 before the next;
//!   restartable init containers (sidecars) keep running, and the next init container
//!   starts once the sidecar has started (with a startup probe: once it succeeded);
//! - regular containers start once every init container completed, and are restarted
//!   per restartPolicy, on a spec hash change, or after a failed liveness/startup probe;
//! - once no regular container runs or will run again, the pod is killed (sidecars
//!   included) and `phase_done` says it is finished for good.
//!
//! Contract with the executor: kill every container in `kill`; when `kill_pod` is set,
//! also stop every ready sandbox of the pod; then create the sandbox if asked; then
//! start `start` in order, stopping at the first init container that fails to start.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Container, Pod};
use proto::v1;

use crate::translate::ContainerKind;
use crate::{
    ANNOTATION_CONTAINER_HASH, ANNOTATION_RESTART_COUNT, Backoff, LABEL_CONTAINER_NAME, Observed,
};

/// The waiting reason of a container held back by backoff.
pub const REASON_CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";

/// Everything a plan depends on. Probe results are keyed by CRI container id.
pub struct Input<'a> {
    /// The desired pod; a deletion timestamp means terminate.
    pub pod: &'a Pod,
    /// What the runtime has for this pod UID.
    pub observed: &'a Observed,
    /// The spec hash of a container, compared with `ANNOTATION_CONTAINER_HASH`.
    pub hash_of: &'a dyn Fn(&Container) -> String,
    /// Crash-loop backoff per container name (see `BackoffPolicy::record_exits`).
    pub backoff: &'a HashMap<String, Backoff>,
    /// Containers whose liveness probe failed.
    pub liveness_failed: &'a HashSet<String>,
    /// Containers whose startup probe failed.
    pub startup_failed: &'a HashSet<String>,
    /// Containers whose startup probe succeeded.
    pub started: &'a HashSet<String>,
    pub now: SystemTime,
}

/// What to do with the pod, in executor order: kill, sandbox, start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Stop every container and the sandbox.
    pub kill_pod: bool,
    /// Create a new sandbox with this attempt number.
    pub create_sandbox: Option<u32>,
    /// Containers to stop (when `kill_pod` is set: every running one).
    pub kill: Vec<Kill>,
    /// Containers to create and start, in this order.
    pub start: Vec<Start>,
    /// Containers that would start but are held back by crash-loop backoff.
    pub waiting: Vec<Waiting>,
    /// When the earliest backoff expires: sync again then.
    pub requeue_after: Option<Duration>,
    /// The pod finished for good: nothing will ever start again.
    pub phase_done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    pub container_id: String,
    pub name: String,
    pub reason: KillReason,
    pub message: String,
}

/// Why a container is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KillReason {
    /// Its spec hash differs from the desired container's.
    SpecChanged,
    LivenessFailed,
    StartupFailed,
    /// No container of that name in the pod spec.
    NotInSpec,
    /// An init container failed under restartPolicy Never: the pod failed.
    InitFailed,
    /// The runtime does not know its state; killed before a restart so that two
    /// instances never run at once.
    UnknownState,
    /// An older instance still running beside the newest one of its name.
    Superseded,
    /// The sandbox is gone or unusable and is re-created.
    SandboxChanged,
    /// The pod is being deleted.
    PodTerminating,
    /// No regular container runs or will run again.
    PodFinished,
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SpecChanged => "SpecChanged",
            Self::LivenessFailed => "LivenessFailed",
            Self::StartupFailed => "StartupFailed",
            Self::NotInSpec => "NotInSpec",
            Self::InitFailed => "InitFailed",
            Self::UnknownState => "UnknownState",
            Self::Superseded => "Superseded",
            Self::SandboxChanged => "SandboxChanged",
            Self::PodTerminating => "PodTerminating",
            Self::PodFinished => "PodFinished",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub name: String,
    pub kind: ContainerKind,
    /// The restart count of the new instance (CRI `metadata.attempt` and
    /// `ANNOTATION_RESTART_COUNT`).
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub name: String,
    /// `CrashLoopBackOff`.
    pub reason: String,
    /// As the upstream kubelet words it, for the container's waiting state.
    pub message: String,
    /// The earliest time the container may start.
    pub until: SystemTime,
}

/// Computes what to do next with the pod.
pub fn compute(input: &Input<'_>) -> Plan {
    let mut planner = Planner {
        input,
        instances: Instances::new(input.observed),
        current: Instances::of_current_sandbox(input.observed),
        policy: RestartPolicy::of(input.pod),
        plan: Plan::default(),
    };
    planner.run();
    planner.plan
}

/// The pod's `restartPolicy` (default Always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub(crate) fn of(pod: &Pod) -> Self {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }
}

/// `restartPolicy: Always` on an init container.
pub(crate) fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

pub(crate) fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
}

pub(crate) fn regular_containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

pub(crate) fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// The newest sandbox (by creation time; on ties the first listed).
pub(crate) fn newest_sandbox(sandboxes: &[v1::PodSandboxStatus]) -> Option<&v1::PodSandboxStatus> {
    sandboxes.iter().rev().max_by_key(|s| s.created_at)
}

/// Whether the pod needs a new sandbox, and the attempt number it gets: none yet, more
/// than one ready, the newest not ready, in the wrong network mode, or without an IP.
pub(crate) fn sandbox_needed(pod: &Pod, sandboxes: &[v1::PodSandboxStatus]) -> Option<u32> {
    let Some(newest) = newest_sandbox(sandboxes) else {
        return Some(0);
    };
    let next = newest
        .metadata
        .as_ref()
        .map_or(0, |m| m.attempt)
        .saturating_add(1);
    let ready = sandboxes
        .iter()
        .filter(|s| s.state() == v1::PodSandboxState::SandboxReady)
        .count();
    if ready > 1 || newest.state() != v1::PodSandboxState::SandboxReady {
        return Some(next);
    }
    let want = if host_network(pod) {
        v1::NamespaceMode::Node
    } else {
        v1::NamespaceMode::Pod
    };
    let have = newest
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .map_or(v1::NamespaceMode::Pod, |o| o.network());
    if have != want {
        return Some(next);
    }
    if !host_network(pod) && newest.network.as_ref().is_some_and(|n| n.ip.is_empty()) {
        return Some(next);
    }
    None
}

/// The container name of a CRI container: its kubelet label, else its metadata name.
pub(crate) fn container_name(c: &v1::ContainerStatus) -> &str {
    c.labels
        .get(LABEL_CONTAINER_NAME)
        .map(String::as_str)
        .or_else(|| c.metadata.as_ref().map(|m| m.name.as_str()))
        .unwrap_or_default()
}

/// The restart count of a CRI container: its annotation, else its metadata attempt.
pub(crate) fn restart_count(c: &v1::ContainerStatus) -> u32 {
    c.annotations
        .get(ANNOTATION_RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .or_else(|| c.metadata.as_ref().map(|m| m.attempt))
        .unwrap_or(0)
}

/// CRI nanoseconds since the epoch; zero and negative mean unset.
pub(crate) fn system_time(nanos: i64) -> Option<SystemTime> {
    let nanos = u64::try_from(nanos).ok().filter(|n| *n > 0)?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

/// Whether an instance of a container exited with a failure (OOM kills count even when
/// the exit code says otherwise).
fn exited_failed(c: &v1::ContainerStatus) -> bool {
    c.exit_code != 0 || c.reason == "OOMKilled"
}

/// Whether a container whose newest instance is `newest` should be (re)started.
pub(crate) fn should_restart(
    policy: RestartPolicy,
    sidecar: bool,
    newest: Option<&v1::ContainerStatus>,
) -> bool {
    let Some(newest) = newest else {
        return true;
    };
    match newest.state() {
        v1::ContainerState::ContainerRunning => false,
        v1::ContainerState::ContainerCreated | v1::ContainerState::ContainerUnknown => true,
        v1::ContainerState::ContainerExited => {
            sidecar
                || match policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => newest.exit_code != 0,
                    RestartPolicy::Never => false,
                }
        }
    }
}

/// Every CRI container of the pod by name, newest first.
pub(crate) struct Instances<'o> {
    by_name: HashMap<&'o str, Vec<&'o v1::ContainerStatus>>,
}

impl<'o> Instances<'o> {
    pub(crate) fn new(observed: &'o Observed) -> Self {
        Self::group(&observed.containers)
    }

    /// Only the containers created since the newest sandbox was.
    pub(crate) fn of_current_sandbox(observed: &'o Observed) -> Self {
        let since = newest_sandbox(&observed.sandboxes).map_or(0, |s| s.created_at);
        Self::group(observed.containers.iter().filter(|c| c.created_at >= since))
    }

    fn group(containers: impl IntoIterator<Item = &'o v1::ContainerStatus>) -> Self {
        let mut by_name: HashMap<&str, Vec<&v1::ContainerStatus>> = HashMap::new();
        for c in containers {
            by_name.entry(container_name(c)).or_default().push(c);
        }
        for list in by_name.values_mut() {
            list.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        }
        Self { by_name }
    }

    pub(crate) fn all(&self, name: &str) -> &[&'o v1::ContainerStatus] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn newest(&self, name: &str) -> Option<&'o v1::ContainerStatus> {
        self.all(name).first().copied()
    }

    /// The restart count of the next instance of `name`.
    pub(crate) fn next_attempt(&self, name: &str) -> u32 {
        self.newest(name)
            .map_or(0, |c| restart_count(c).saturating_add(1))
    }
}

/// Running, or possibly running.
fn live(c: &v1::ContainerStatus) -> bool {
    matches!(
        c.state(),
        v1::ContainerState::ContainerRunning | v1::ContainerState::ContainerUnknown
    )
}

enum Init {
    /// Every init container completed (or the pod was initialized before).
    Done,
    InProgress,
    /// An init container failed under restartPolicy Never.
    Failed {
        name: String,
    },
}

struct Planner<'i, 'a> {
    input: &'i Input<'a>,
    /// Every instance: restart counts, backoff, restart policy.
    instances: Instances<'a>,
    /// Instances created in the newest sandbox: initialization progress, which starts
    /// over in a new sandbox.
    current: Instances<'a>,
    policy: RestartPolicy,
    plan: Plan,
}

impl Planner<'_, '_> {
    fn run(&mut self) {
        let pod = self.input.pod;
        let (init, regular) = (init_containers(pod), regular_containers(pod));

        if pod.metadata.deletion_timestamp.is_some() {
            self.kill_pod(KillReason::PodTerminating, "pod is being deleted");
            return;
        }

        if let Some(attempt) = sandbox_needed(pod, &self.input.observed.sandboxes) {
            if self.finished_without_sandbox(regular) {
                self.plan.phase_done = true;
                self.kill_pod(
                    KillReason::PodFinished,
                    "pod finished, its sandbox is not re-created",
                );
                return;
            }
            self.kill_pod(
                KillReason::SandboxChanged,
                "pod sandbox changed, containers are killed and re-created",
            );
            self.plan.create_sandbox = Some(attempt);
            // A new sandbox starts from the beginning: the first init container, or every
            // regular container that has not finished for good.
            if let Some(first) = init.first() {
                self.schedule(first, init_kind(first));
            } else {
                for c in regular {
                    if !(self.policy == RestartPolicy::OnFailure && self.succeeded(c)) {
                        self.schedule(c, ContainerKind::Regular);
                    }
                }
            }
            return;
        }

        self.kill_strays(init, regular);

        match self.init_actions(init, regular) {
            Init::Done => {}
            Init::InProgress => return,
            Init::Failed { name } => {
                self.plan.start.clear();
                self.plan.waiting.clear();
                self.plan.requeue_after = None;
                self.plan.phase_done = true;
                let message = format!("init container {name} failed and restartPolicy is Never");
                self.kill_pod(KillReason::InitFailed, &message);
                return;
            }
        }

        let (keep, scheduled) = self.regular_actions(regular);
        if keep == 0 && scheduled == 0 {
            // Nothing runs or will run again: sidecars must not keep the pod alive.
            self.plan.start.clear();
            self.plan.waiting.clear();
            self.plan.requeue_after = None;
            self.plan.phase_done = true;
            self.kill_pod(KillReason::PodFinished, "all regular containers finished");
        }
    }

    /// With the sandbox gone: whether the pod is done for good rather than re-created.
    fn finished_without_sandbox(&self, regular: &[Container]) -> bool {
        match self.policy {
            // Something ran in the lost sandbox and will never run again.
            RestartPolicy::Never => !self.input.observed.containers.is_empty(),
            RestartPolicy::OnFailure => {
                regular.iter().all(|c| self.succeeded(c))
                    && regular
                        .iter()
                        .any(|c| self.instances.newest(&c.name).is_some())
            }
            RestartPolicy::Always => false,
        }
    }

    fn succeeded(&self, c: &Container) -> bool {
        self.instances
            .newest(&c.name)
            .is_some_and(|s| s.state() == v1::ContainerState::ContainerExited && s.exit_code == 0)
    }

    /// Running containers not in the spec, and older instances beside a newer one.
    fn kill_strays(&mut self, init: &[Container], regular: &[Container]) {
        let observed = self.input.observed;
        for c in observed.containers.iter().filter(|c| live(c)) {
            let name = container_name(c);
            if !init.iter().chain(regular).any(|s| s.name == name) {
                self.kill(
                    c,
                    KillReason::NotInSpec,
                    format!("container {name} is not in the pod spec"),
                );
            } else if self.instances.newest(name).is_some_and(|n| n.id != c.id) {
                self.kill(
                    c,
                    KillReason::Superseded,
                    format!("container {name} has a newer instance"),
                );
            }
        }
    }

    /// Walks the init containers from the last one back, as the completed ones may have
    /// been removed from the runtime: the last one with an instance tells how far
    /// initialization got. Only instances of the current sandbox count: a new sandbox
    /// runs every init container again.
    fn init_actions(&mut self, init: &[Container], regular: &[Container]) -> Init {
        if init.is_empty() {
            return Init::Done;
        }
        // A regular container created or running means initialization completed before,
        // even when the init containers are gone.
        let initialized_before = regular.iter().any(|c| {
            self.current.newest(&c.name).is_some_and(|s| {
                matches!(
                    s.state(),
                    v1::ContainerState::ContainerCreated | v1::ContainerState::ContainerRunning
                )
            })
        });
        let mut done = initialized_before;
        let mut later_started = initialized_before;
        let mut starts: Vec<usize> = Vec::new();

        for (i, c) in init.iter().enumerate().rev() {
            let sidecar = is_sidecar(c);
            let last = i + 1 == init.len();
            let Some(st) = self.current.newest(&c.name) else {
                if later_started && sidecar {
                    starts.push(i);
                }
                continue;
            };
            if later_started && !sidecar {
                continue;
            }
            match st.state() {
                // Created but never started: start again.
                v1::ContainerState::ContainerCreated => starts.push(i),
                v1::ContainerState::ContainerRunning if sidecar => {
                    if self.sidecar_running(c, st, i, last, later_started, &mut starts) {
                        done = true;
                    }
                }
                // A plain init container runs to completion.
                v1::ContainerState::ContainerRunning => {}
                v1::ContainerState::ContainerExited if sidecar => starts.push(i),
                v1::ContainerState::ContainerExited if exited_failed(st) => {
                    if self.policy == RestartPolicy::Never {
                        return Init::Failed {
                            name: c.name.clone(),
                        };
                    }
                    starts.push(i);
                }
                v1::ContainerState::ContainerExited => {
                    if last {
                        done = true;
                    } else {
                        starts.push(i + 1);
                    }
                }
                v1::ContainerState::ContainerUnknown => {
                    if !sidecar && self.policy == RestartPolicy::Never {
                        return Init::Failed {
                            name: c.name.clone(),
                        };
                    }
                    let message = format!(
                        "init container {} is in unknown state, killed before restart",
                        c.name
                    );
                    self.kill(st, KillReason::UnknownState, message);
                    starts.push(i);
                }
            }
            later_started = true;
        }
        if !later_started {
            starts.push(0);
        }
        starts.sort_unstable();
        starts.dedup();
        for i in starts {
            if let Some(c) = init.get(i) {
                self.schedule(c, init_kind(c));
            }
        }
        if done { Init::Done } else { Init::InProgress }
    }

    /// A running sidecar: restart it on a failed probe or a changed spec, start the
    /// next init container once it has started. Returns whether it completes
    /// initialization (it is the last init container and has started).
    fn sidecar_running(
        &mut self,
        c: &Container,
        st: &v1::ContainerStatus,
        i: usize,
        last: bool,
        later_started: bool,
        starts: &mut Vec<usize>,
    ) -> bool {
        let name = &c.name;
        if self.input.startup_failed.contains(&st.id) {
            let message = format!("init container {name} failed startup probe, will be restarted");
            self.kill(st, KillReason::StartupFailed, message);
            starts.push(i);
            return false;
        }
        if c.startup_probe.is_some() && !self.input.started.contains(&st.id) {
            return false;
        }
        if !last && !later_started {
            starts.push(i + 1);
        }
        if self.spec_changed(c, st) {
            let message = format!("init container {name} definition changed, will be restarted");
            self.kill(st, KillReason::SpecChanged, message);
            starts.push(i);
        } else if self.input.liveness_failed.contains(&st.id) {
            let message = format!("init container {name} failed liveness probe, will be restarted");
            self.kill(st, KillReason::LivenessFailed, message);
            starts.push(i);
        }
        last
    }

    /// Regular containers once initialized. Returns how many keep running and how many
    /// were scheduled (started or held back by backoff).
    fn regular_actions(&mut self, regular: &[Container]) -> (usize, usize) {
        let (mut keep, mut scheduled) = (0, 0);
        for c in regular {
            let name = &c.name;
            let newest = self.instances.newest(name);
            let Some(st) = newest.filter(|s| s.state() == v1::ContainerState::ContainerRunning)
            else {
                if should_restart(self.policy, false, newest) {
                    if let Some(st) =
                        newest.filter(|s| s.state() == v1::ContainerState::ContainerUnknown)
                    {
                        let message =
                            format!("container {name} is in unknown state, killed before restart");
                        self.kill(st, KillReason::UnknownState, message);
                    }
                    self.schedule(c, ContainerKind::Regular);
                    scheduled += 1;
                }
                continue;
            };
            let restart_on_failure = self.policy != RestartPolicy::Never;
            let (reason, what, restart) = if self.spec_changed(c, st) {
                // A changed spec restarts whatever the policy.
                (KillReason::SpecChanged, "definition changed", true)
            } else if self.input.liveness_failed.contains(&st.id) {
                (
                    KillReason::LivenessFailed,
                    "failed liveness probe",
                    restart_on_failure,
                )
            } else if self.input.startup_failed.contains(&st.id) {
                (
                    KillReason::StartupFailed,
                    "failed startup probe",
                    restart_on_failure,
                )
            } else {
                keep += 1;
                continue;
            };
            let message = if restart {
                format!("container {name} {what}, will be restarted")
            } else {
                format!("container {name} {what}")
            };
            self.kill(st, reason, message);
            if restart {
                self.schedule(c, ContainerKind::Regular);
                scheduled += 1;
            }
        }
        (keep, scheduled)
    }

    fn spec_changed(&self, c: &Container, st: &v1::ContainerStatus) -> bool {
        let want = (self.input.hash_of)(c);
        st.annotations.get(ANNOTATION_CONTAINER_HASH) != Some(&want)
    }

    /// Starts `c` now, or holds it back while its crash-loop backoff runs.
    fn schedule(&mut self, c: &Container, kind: ContainerKind) {
        let name = c.name.clone();
        let attempt = self.instances.next_attempt(&name);
        if let Some((until, delay)) = self.backoff_until(&name) {
            let wait = until.duration_since(self.input.now).unwrap_or_default();
            self.plan.requeue_after = Some(self.plan.requeue_after.map_or(wait, |r| r.min(wait)));
            let message = format!(
                "back-off {} restarting failed container={name} pod={}",
                go_duration(delay),
                pod_ref(self.input.pod)
            );
            self.plan.waiting.push(Waiting {
                name,
                reason: REASON_CRASH_LOOP_BACK_OFF.to_owned(),
                message,
                until,
            });
            return;
        }
        self.plan.start.push(Start {
            name,
            kind,
            attempt,
        });
    }

    /// The end of the backoff of `name`, if it has exited before and is still backing
    /// off, with the delay.
    fn backoff_until(&self, name: &str) -> Option<(SystemTime, Duration)> {
        let exited = self
            .instances
            .all(name)
            .iter()
            .any(|c| c.state() == v1::ContainerState::ContainerExited);
        if !exited {
            return None;
        }
        let b = self.input.backoff.get(name)?;
        let until = b.last_finish.checked_add(b.delay)?;
        (until > self.input.now).then_some((until, b.delay))
    }

    fn kill(&mut self, c: &v1::ContainerStatus, reason: KillReason, message: String) {
        if self.plan.kill.iter().any(|k| k.container_id == c.id) {
            return;
        }
        self.plan.kill.push(Kill {
            container_id: c.id.clone(),
            name: container_name(c).to_owned(),
            reason,
            message,
        });
    }

    /// Kills the pod: every live container not already being killed gets `reason`.
    fn kill_pod(&mut self, reason: KillReason, message: &str) {
        self.plan.kill_pod = true;
        let observed = self.input.observed;
        for c in observed.containers.iter().filter(|c| live(c)) {
            self.kill(c, reason, message.to_owned());
        }
    }
}

fn init_kind(c: &Container) -> ContainerKind {
    if is_sidecar(c) {
        ContainerKind::Sidecar
    } else {
        ContainerKind::Init
    }
}

/// `name_namespace(uid)`, as the upstream kubelet names pods in messages.
fn pod_ref(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}_{}({})",
        m.name.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or("default"),
        m.uid.as_deref().unwrap_or_default()
    )
}

/// A whole-second duration the way Go prints it (`10s`, `2m40s`, `5m0s`).
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{ANNOTATION_CONTAINER_HASH, ANNOTATION_RESTART_COUNT, LABEL_CONTAINER_NAME};
    use serde_json::json;

    pub(crate) const SEC: i64 = 1_000_000_000;

    pub(crate) fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("test pod literal")
    }

    /// The fake spec hash: the image.
    pub(crate) fn hash(c: &Container) -> String {
        c.image.clone().unwrap_or_default()
    }

    pub(crate) fn sandbox(id: &str, attempt: u32, ready: bool, ip: &str) -> v1::PodSandboxStatus {
        v1::PodSandboxStatus {
            id: id.into(),
            metadata: Some(v1::PodSandboxMetadata {
                name: "p".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt,
            }),
            state: if ready {
                v1::PodSandboxState::SandboxReady
            } else {
                v1::PodSandboxState::SandboxNotready
            } as i32,
            created_at: 100 * SEC + i64::from(attempt) * SEC,
            network: Some(v1::PodSandboxNetworkStatus {
                ip: ip.into(),
                additional_ips: vec![],
            }),
            linux: Some(v1::LinuxPodSandboxStatus {
                namespaces: Some(v1::Namespace {
                    options: Some(v1::NamespaceOption {
                        network: v1::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                }),
            }),
            ..Default::default()
        }
    }

    /// A CRI container `name` (attempt `attempt`, image = spec hash) created at
    /// `created` seconds.
    pub(crate) fn ctr(
        name: &str,
        attempt: u32,
        image: &str,
        state: v1::ContainerState,
        exit_code: i32,
        created: i64,
    ) -> v1::ContainerStatus {
        let exited = state == v1::ContainerState::ContainerExited;
        v1::ContainerStatus {
            id: format!("{name}-{attempt}"),
            metadata: Some(v1::ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state: state as i32,
            created_at: created * SEC,
            started_at: if state == v1::ContainerState::ContainerCreated {
                0
            } else {
                (created + 1) * SEC
            },
            finished_at: if exited { (created + 2) * SEC } else { 0 },
            exit_code,
            image: Some(v1::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            image_ref: format!("sha256:{image}"),
            labels: [(LABEL_CONTAINER_NAME.to_owned(), name.to_owned())].into(),
            annotations: [
                (ANNOTATION_CONTAINER_HASH.to_owned(), image.to_owned()),
                (ANNOTATION_RESTART_COUNT.to_owned(), attempt.to_string()),
            ]
            .into(),
            ..Default::default()
        }
    }

    pub(crate) fn running(name: &str, attempt: u32, created: i64) -> v1::ContainerStatus {
        ctr(
            name,
            attempt,
            "img",
            v1::ContainerState::ContainerRunning,
            0,
            created,
        )
    }

    pub(crate) fn exited(name: &str, attempt: u32, code: i32, created: i64) -> v1::ContainerStatus {
        ctr(
            name,
            attempt,
            "img",
            v1::ContainerState::ContainerExited,
            code,
            created,
        )
    }

    fn with_state(mut c: v1::ContainerStatus, state: v1::ContainerState) -> v1::ContainerStatus {
        c.state = state as i32;
        c
    }

    /// A pod with the given restart policy, init containers and containers (all with
    /// image `img`); init names starting with `side` are sidecars.
    pub(crate) fn pod_with(policy: &str, init: &[&str], regular: &[&str]) -> Pod {
        let spec_of = |name: &&str| {
            if name.starts_with("side") {
                json!({"name": name, "image": "img", "restartPolicy": "Always"})
            } else {
                json!({"name": name, "image": "img"})
            }
        };
        pod(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "uid-1"},
            "spec": {
                "restartPolicy": policy,
                "initContainers": init.iter().map(spec_of).collect::<Vec<_>>(),
                "containers": regular.iter().map(spec_of).collect::<Vec<_>>(),
            }
        }))
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1000)
    }

    #[derive(Default)]
    struct Case {
        name: &'static str,
        pod: Option<Pod>,
        sandboxes: Vec<v1::PodSandboxStatus>,
        containers: Vec<v1::ContainerStatus>,
        backoff: Vec<(&'static str, u64, u64)>,
        liveness_failed: Vec<&'static str>,
        startup_failed: Vec<&'static str>,
        started: Vec<&'static str>,
        // expectations
        kill_pod: bool,
        create_sandbox: Option<u32>,
        kill: Vec<(&'static str, KillReason)>,
        start: Vec<(&'static str, ContainerKind, u32)>,
        waiting: Vec<&'static str>,
        requeue_after: Option<u64>,
        phase_done: bool,
    }

    fn ready_sandbox() -> Vec<v1::PodSandboxStatus> {
        vec![sandbox("sb1", 0, true, "10.0.0.2")]
    }

    fn run(case: Case) {
        let pod = case
            .pod
            .unwrap_or_else(|| pod_with("Always", &[], &["web"]));
        let observed = Observed {
            sandboxes: case.sandboxes,
            containers: case.containers,
        };
        let backoff: HashMap<String, Backoff> = case
            .backoff
            .iter()
            .map(|(n, finish, delay)| {
                (
                    (*n).to_owned(),
                    Backoff {
                        last_finish: UNIX_EPOCH + Duration::from_secs(*finish),
                        delay: Duration::from_secs(*delay),
                    },
                )
            })
            .collect();
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<HashSet<_>>();
        let (liveness_failed, startup_failed, started) = (
            set(&case.liveness_failed),
            set(&case.startup_failed),
            set(&case.started),
        );
        let plan = compute(&Input {
            pod: &pod,
            observed: &observed,
            hash_of: &hash,
            backoff: &backoff,
            liveness_failed: &liveness_failed,
            startup_failed: &startup_failed,
            started: &started,
            now: now(),
        });
        let name = case.name;
        assert_eq!(plan.kill_pod, case.kill_pod, "{name}: kill_pod");
        assert_eq!(
            plan.create_sandbox, case.create_sandbox,
            "{name}: create_sandbox"
        );
        let kill: Vec<(&str, KillReason)> = plan
            .kill
            .iter()
            .map(|k| (k.container_id.as_str(), k.reason))
            .collect();
        assert_eq!(kill, case.kill, "{name}: kill");
        let start: Vec<(&str, ContainerKind, u32)> = plan
            .start
            .iter()
            .map(|s| (s.name.as_str(), s.kind, s.attempt))
            .collect();
        assert_eq!(start, case.start, "{name}: start");
        let waiting: Vec<&str> = plan.waiting.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(waiting, case.waiting, "{name}: waiting");
        assert_eq!(
            plan.requeue_after,
            case.requeue_after.map(Duration::from_secs),
            "{name}: requeue_after"
        );
        assert_eq!(plan.phase_done, case.phase_done, "{name}: phase_done");
    }

    use ContainerKind::{Init as I, Regular as R, Sidecar as S};
    use v1::ContainerState::{ContainerCreated, ContainerUnknown};

    #[test]
    fn sandbox_and_regular_containers() {
        let cases = vec![
            Case {
                name: "new pod: sandbox attempt 0 and every container",
                pod: Some(pod_with("Always", &[], &["web", "log"])),
                kill_pod: true,
                create_sandbox: Some(0),
                start: vec![("web", R, 0), ("log", R, 0)],
                ..Default::default()
            },
            Case {
                name: "everything running: nothing to do",
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 200)],
                ..Default::default()
            },
            Case {
                name: "sandbox not ready, Always: kill pod, next attempt, restart all",
                sandboxes: vec![sandbox("sb1", 0, false, "10.0.0.2")],
                containers: vec![exited("web", 3, 137, 200)],
                kill_pod: true,
                create_sandbox: Some(1),
                start: vec![("web", R, 4)],
                ..Default::default()
            },
            Case {
                name: "sandbox without IP is re-created, running container killed",
                sandboxes: vec![sandbox("sb1", 2, true, "")],
                containers: vec![running("web", 0, 200)],
                kill_pod: true,
                create_sandbox: Some(3),
                kill: vec![("web-0", KillReason::SandboxChanged)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "two ready sandboxes: re-create after the newest",
                sandboxes: vec![
                    sandbox("sb2", 1, true, "10.0.0.3"),
                    sandbox("sb1", 0, true, "10.0.0.2"),
                ],
                containers: vec![running("web", 0, 200)],
                kill_pod: true,
                create_sandbox: Some(2),
                kill: vec![("web-0", KillReason::SandboxChanged)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "hostNetwork pod in a pod-network sandbox: re-create",
                pod: Some(pod(json!({
                    "metadata": {"name": "p", "uid": "uid-1"},
                    "spec": {"hostNetwork": true, "containers": [{"name": "web", "image": "img"}]}
                }))),
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 200)],
                kill_pod: true,
                create_sandbox: Some(1),
                kill: vec![("web-0", KillReason::SandboxChanged)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "sandbox dead, OnFailure: succeeded container is not re-created",
                pod: Some(pod_with("OnFailure", &[], &["ok", "bad"])),
                sandboxes: vec![sandbox("sb1", 0, false, "10.0.0.2")],
                containers: vec![exited("ok", 0, 0, 200), exited("bad", 0, 1, 200)],
                kill_pod: true,
                create_sandbox: Some(1),
                start: vec![("bad", R, 1)],
                ..Default::default()
            },
            Case {
                name: "sandbox dead, OnFailure, all succeeded: finished, no sandbox",
                pod: Some(pod_with("OnFailure", &[], &["ok"])),
                sandboxes: vec![sandbox("sb1", 0, false, "10.0.0.2")],
                containers: vec![exited("ok", 0, 0, 200)],
                kill_pod: true,
                phase_done: true,
                ..Default::default()
            },
            Case {
                name: "sandbox dead, Never, containers exited: finished, no sandbox",
                pod: Some(pod_with("Never", &[], &["a", "b"])),
                sandboxes: vec![sandbox("sb1", 0, false, "10.0.0.2")],
                containers: vec![exited("a", 0, 0, 200), exited("b", 0, 2, 200)],
                kill_pod: true,
                phase_done: true,
                ..Default::default()
            },
            Case {
                name: "sandbox dead, Never, no container ever created: new sandbox",
                pod: Some(pod_with("Never", &[], &["a"])),
                sandboxes: vec![sandbox("sb1", 0, false, "")],
                kill_pod: true,
                create_sandbox: Some(1),
                start: vec![("a", R, 0)],
                ..Default::default()
            },
            Case {
                name: "Always restarts an exited container, attempt from the annotation",
                sandboxes: ready_sandbox(),
                containers: vec![exited("web", 0, 0, 150), exited("web", 4, 0, 200)],
                start: vec![("web", R, 5)],
                ..Default::default()
            },
            Case {
                name: "attempt falls back to metadata.attempt",
                sandboxes: ready_sandbox(),
                containers: vec![{
                    let mut c = exited("web", 6, 1, 200);
                    c.annotations.remove(ANNOTATION_RESTART_COUNT);
                    c.annotations
                        .insert(ANNOTATION_CONTAINER_HASH.into(), "img".into());
                    c
                }],
                start: vec![("web", R, 7)],
                ..Default::default()
            },
            Case {
                name: "OnFailure restarts a failed container, keeps a succeeded one down",
                pod: Some(pod_with("OnFailure", &[], &["ok", "bad", "up"])),
                sandboxes: ready_sandbox(),
                containers: vec![
                    exited("ok", 0, 0, 200),
                    exited("bad", 1, 2, 200),
                    running("up", 0, 200),
                ],
                start: vec![("bad", R, 2)],
                ..Default::default()
            },
            Case {
                name: "Never: exited containers stay down while another runs",
                pod: Some(pod_with("Never", &[], &["a", "b"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("a", 0, 1, 200), running("b", 0, 200)],
                ..Default::default()
            },
            Case {
                name: "Never: all exited: pod finished and killed",
                pod: Some(pod_with("Never", &[], &["a", "b"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("a", 0, 1, 200), exited("b", 0, 0, 200)],
                kill_pod: true,
                phase_done: true,
                ..Default::default()
            },
            Case {
                name: "OnFailure all succeeded: pod finished",
                pod: Some(pod_with("OnFailure", &[], &["a"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("a", 2, 0, 200)],
                kill_pod: true,
                phase_done: true,
                ..Default::default()
            },
            Case {
                name: "spec hash changed: kill and start again",
                sandboxes: ready_sandbox(),
                containers: vec![ctr(
                    "web",
                    0,
                    "old",
                    v1::ContainerState::ContainerRunning,
                    0,
                    200,
                )],
                kill: vec![("web-0", KillReason::SpecChanged)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "spec hash changed restarts even under Never",
                pod: Some(pod_with("Never", &[], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![ctr(
                    "web",
                    0,
                    "old",
                    v1::ContainerState::ContainerRunning,
                    0,
                    200,
                )],
                kill: vec![("web-0", KillReason::SpecChanged)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "liveness failed: kill and restart",
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 2, 200)],
                liveness_failed: vec!["web-2"],
                kill: vec![("web-2", KillReason::LivenessFailed)],
                start: vec![("web", R, 3)],
                ..Default::default()
            },
            Case {
                name: "liveness failed under Never: kill, no restart, pod finished",
                pod: Some(pod_with("Never", &[], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 200)],
                liveness_failed: vec!["web-0"],
                kill_pod: true,
                kill: vec![("web-0", KillReason::LivenessFailed)],
                phase_done: true,
                ..Default::default()
            },
            Case {
                name: "startup failed: kill and restart",
                pod: Some(pod_with("OnFailure", &[], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 200)],
                startup_failed: vec!["web-0"],
                kill: vec![("web-0", KillReason::StartupFailed)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "unknown state: kill before restart",
                sandboxes: ready_sandbox(),
                containers: vec![with_state(running("web", 0, 200), ContainerUnknown)],
                kill: vec![("web-0", KillReason::UnknownState)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "created but never started: start again",
                sandboxes: ready_sandbox(),
                containers: vec![with_state(running("web", 0, 200), ContainerCreated)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "container not in spec is killed",
                sandboxes: ready_sandbox(),
                containers: vec![
                    running("web", 0, 200),
                    running("gone", 0, 200),
                    exited("old", 0, 0, 200),
                ],
                kill: vec![("gone-0", KillReason::NotInSpec)],
                ..Default::default()
            },
            Case {
                name: "older instance still running beside the newest is killed",
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 150), running("web", 1, 200)],
                kill: vec![("web-0", KillReason::Superseded)],
                ..Default::default()
            },
            Case {
                name: "terminating: kill pod, nothing starts",
                pod: Some(pod(json!({
                    "metadata": {"name": "p", "uid": "uid-1", "deletionTimestamp": "2024-01-01T00:00:00Z"},
                    "spec": {"containers": [{"name": "web", "image": "img"}, {"name": "log", "image": "img"}]}
                }))),
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 200), exited("log", 0, 1, 200)],
                kill_pod: true,
                kill: vec![("web-0", KillReason::PodTerminating)],
                ..Default::default()
            },
            Case {
                name: "terminating without sandbox: no new sandbox",
                pod: Some(pod(json!({
                    "metadata": {"name": "p", "uid": "uid-1", "deletionTimestamp": "2024-01-01T00:00:00Z"},
                    "spec": {"containers": [{"name": "web", "image": "img"}]}
                }))),
                kill_pod: true,
                ..Default::default()
            },
        ];
        for case in cases {
            run(case);
        }
    }

    #[test]
    fn backoff() {
        let cases = vec![
            Case {
                name: "exited within its backoff: waiting, requeue at expiry",
                sandboxes: ready_sandbox(),
                // finished at 202 s; backoff recorded 990 + 20 = 1010, now 1000
                containers: vec![exited("web", 3, 1, 200)],
                backoff: vec![("web", 990, 20)],
                waiting: vec!["web"],
                requeue_after: Some(10),
                ..Default::default()
            },
            Case {
                name: "backoff expired: start",
                sandboxes: ready_sandbox(),
                containers: vec![exited("web", 3, 1, 200)],
                backoff: vec![("web", 980, 20)],
                start: vec![("web", R, 4)],
                ..Default::default()
            },
            Case {
                name: "backoff applies only to containers that exited before",
                sandboxes: ready_sandbox(),
                containers: vec![with_state(running("web", 0, 200), ContainerCreated)],
                backoff: vec![("web", 990, 300)],
                start: vec![("web", R, 1)],
                ..Default::default()
            },
            Case {
                name: "earliest expiry wins; a waiting container keeps the pod alive",
                pod: Some(pod_with("OnFailure", &[], &["a", "b"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("a", 0, 1, 200), exited("b", 0, 1, 200)],
                backoff: vec![("a", 995, 40), ("b", 990, 20)],
                waiting: vec!["a", "b"],
                requeue_after: Some(10),
                ..Default::default()
            },
            Case {
                name: "after a sandbox re-creation backoff still holds the container",
                sandboxes: vec![sandbox("sb1", 0, false, "10.0.0.2")],
                containers: vec![exited("web", 1, 1, 200)],
                backoff: vec![("web", 995, 20)],
                kill_pod: true,
                create_sandbox: Some(1),
                waiting: vec!["web"],
                requeue_after: Some(15),
                ..Default::default()
            },
            Case {
                name: "init container in backoff holds initialization",
                pod: Some(pod_with("Always", &["init"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("init", 0, 1, 200)],
                backoff: vec![("init", 995, 10)],
                waiting: vec!["init"],
                requeue_after: Some(5),
                ..Default::default()
            },
        ];
        for case in cases {
            run(case);
        }
    }

    #[test]
    fn init_containers() {
        let cases = vec![
            Case {
                name: "new pod with init containers: sandbox and the first init container only",
                pod: Some(pod_with("Always", &["i1", "i2"], &["web"])),
                kill_pod: true,
                create_sandbox: Some(0),
                start: vec![("i1", I, 0)],
                ..Default::default()
            },
            Case {
                name: "sandbox ready, nothing ran yet: first init container",
                pod: Some(pod_with("Always", &["i1", "i2"], &["web"])),
                sandboxes: ready_sandbox(),
                start: vec![("i1", I, 0)],
                ..Default::default()
            },
            Case {
                name: "first init running: wait",
                pod: Some(pod_with("Always", &["i1", "i2"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("i1", 0, 200)],
                ..Default::default()
            },
            Case {
                name: "first init succeeded: start the second",
                pod: Some(pod_with("Always", &["i1", "i2"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("i1", 0, 0, 200)],
                start: vec![("i2", I, 0)],
                ..Default::default()
            },
            Case {
                name: "last init succeeded: regular containers start",
                pod: Some(pod_with("Always", &["i1", "i2"], &["web", "log"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("i1", 0, 0, 200), exited("i2", 0, 0, 210)],
                start: vec![("web", R, 0), ("log", R, 0)],
                ..Default::default()
            },
            Case {
                name: "init failed, OnFailure: restart it",
                pod: Some(pod_with("OnFailure", &["i1", "i2"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![exited("i1", 0, 0, 200), exited("i2", 2, 1, 210)],
                start: vec![("i2", I, 3)],
                ..Default::default()
            },
            Case {
                name: "init OOM-killed counts as failed",
                pod: Some(pod_with("Always", &["i1"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![{
                    let mut c = exited("i1", 0, 0, 200);
                    c.reason = "OOMKilled".into();
                    c
                }],
                start: vec![("i1", I, 1)],
                ..Default::default()
            },
            Case {
                name: "init failed, Never: pod failed and killed",
                pod: Some(pod_with("Never", &["side", "i1"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("side", 0, 190), exited("i1", 0, 1, 200)],
                kill_pod: true,
                kill: vec![("side-0", KillReason::InitFailed)],
                phase_done: true,
                ..Default::default()
            },
            Case {
                name: "init in unknown state, Always: kill and restart",
                pod: Some(pod_with("Always", &["i1"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![with_state(running("i1", 0, 200), ContainerUnknown)],
                kill: vec![("i1-0", KillReason::UnknownState)],
                start: vec![("i1", I, 1)],
                ..Default::default()
            },
            Case {
                name: "init containers gone after initialization: not run again",
                pod: Some(pod_with("Always", &["i1", "i2"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 200)],
                ..Default::default()
            },
            Case {
                name: "sidecar running and started: next init container starts",
                pod: Some(pod_with("Always", &["side", "i1"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("side", 0, 200)],
                start: vec![("i1", I, 0)],
                ..Default::default()
            },
            Case {
                name: "sidecar with startup probe not yet started: wait",
                pod: Some(pod(json!({
                    "metadata": {"name": "p", "uid": "uid-1"},
                    "spec": {
                        "initContainers": [{"name": "side", "image": "img", "restartPolicy": "Always",
                                            "startupProbe": {"exec": {"command": ["true"]}}}],
                        "containers": [{"name": "web", "image": "img"}]
                    }
                }))),
                sandboxes: ready_sandbox(),
                containers: vec![running("side", 0, 200)],
                ..Default::default()
            },
            Case {
                name: "sidecar with startup probe succeeded: regular containers start",
                pod: Some(pod(json!({
                    "metadata": {"name": "p", "uid": "uid-1"},
                    "spec": {
                        "initContainers": [{"name": "side", "image": "img", "restartPolicy": "Always",
                                            "startupProbe": {"exec": {"command": ["true"]}}}],
                        "containers": [{"name": "web", "image": "img"}]
                    }
                }))),
                sandboxes: ready_sandbox(),
                containers: vec![running("side", 0, 200)],
                started: vec!["side-0"],
                start: vec![("web", R, 0)],
                ..Default::default()
            },
            Case {
                name: "sidecar startup failed: kill and restart it",
                pod: Some(pod_with("Always", &["side"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("side", 0, 200)],
                startup_failed: vec!["side-0"],
                kill: vec![("side-0", KillReason::StartupFailed)],
                start: vec![("side", S, 1)],
                ..Default::default()
            },
            Case {
                name: "sidecar exited after initialization: restarted even under Never",
                pod: Some(pod_with("Never", &["side", "i1"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![
                    exited("side", 0, 0, 190),
                    exited("i1", 0, 0, 200),
                    running("web", 0, 210),
                ],
                start: vec![("side", S, 1)],
                ..Default::default()
            },
            Case {
                name: "sidecar removed after initialization: started again",
                pod: Some(pod_with("Always", &["side"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("web", 0, 210)],
                start: vec![("side", S, 0)],
                ..Default::default()
            },
            Case {
                name: "sidecar spec changed: kill and restart it, regular containers keep running",
                pod: Some(pod_with("Always", &["side"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![
                    ctr(
                        "side",
                        0,
                        "old",
                        v1::ContainerState::ContainerRunning,
                        0,
                        190,
                    ),
                    running("web", 0, 210),
                ],
                kill: vec![("side-0", KillReason::SpecChanged)],
                start: vec![("side", S, 1)],
                ..Default::default()
            },
            Case {
                name: "sidecar liveness failed: kill and restart it",
                pod: Some(pod_with("Always", &["side"], &["web"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("side", 0, 190), running("web", 0, 210)],
                liveness_failed: vec!["side-0"],
                kill: vec![("side-0", KillReason::LivenessFailed)],
                start: vec![("side", S, 1)],
                ..Default::default()
            },
            Case {
                name: "regular containers done under Never: sidecars killed, pod finished",
                pod: Some(pod_with("Never", &["side"], &["job"])),
                sandboxes: ready_sandbox(),
                containers: vec![running("side", 0, 190), exited("job", 0, 0, 210)],
                kill_pod: true,
                kill: vec![("side-0", KillReason::PodFinished)],
                phase_done: true,
                ..Default::default()
            },
            Case {
                name: "new sandbox: init containers of the old one do not count",
                pod: Some(pod_with("Always", &["i1", "i2"], &["web"])),
                sandboxes: vec![
                    sandbox("sb2", 1, true, "10.0.0.3"),
                    sandbox("sb1", 0, false, "10.0.0.2"),
                ],
                containers: vec![
                    exited("i1", 0, 0, 50),
                    exited("i2", 0, 0, 55),
                    exited("web", 2, 1, 60),
                ],
                start: vec![("i1", I, 1)],
                ..Default::default()
            },
            Case {
                name: "sandbox re-created: init containers run again from the first",
                pod: Some(pod_with("Always", &["side", "i1"], &["web"])),
                sandboxes: vec![sandbox("sb1", 0, false, "10.0.0.2")],
                containers: vec![
                    exited("side", 0, 0, 190),
                    exited("i1", 0, 0, 200),
                    exited("web", 0, 1, 210),
                ],
                kill_pod: true,
                create_sandbox: Some(1),
                start: vec![("side", S, 1)],
                ..Default::default()
            },
        ];
        for case in cases {
            run(case);
        }
    }

    #[test]
    fn waiting_message_reads_like_upstream() {
        let pod = pod_with("Always", &[], &["web"]);
        let observed = Observed {
            sandboxes: ready_sandbox(),
            containers: vec![exited("web", 5, 1, 200)],
        };
        let backoff: HashMap<String, Backoff> = [(
            "web".to_owned(),
            Backoff {
                last_finish: now(),
                delay: Duration::from_secs(160),
            },
        )]
        .into();
        let none = HashSet::new();
        let plan = compute(&Input {
            pod: &pod,
            observed: &observed,
            hash_of: &hash,
            backoff: &backoff,
            liveness_failed: &none,
            startup_failed: &none,
            started: &none,
            now: now(),
        });
        assert_eq!(
            plan.waiting,
            vec![Waiting {
                name: "web".into(),
                reason: "CrashLoopBackOff".into(),
                message: "back-off 2m40s restarting failed container=web pod=p_default(uid-1)"
                    .into(),
                until: now() + Duration::from_secs(160),
            }]
        );
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(160)));
    }
}
