//! `PodStatus` as the upstream kubelet computes it, from the pod, what the runtime
//! reports, the probe results and the previous status.
//!
//! - Container statuses: one per spec container, in spec order. The newest runtime
//!   instance of a name gives `state`, the one before it `lastState`; a container that
//!   will be started again and has a waiting reason (CrashLoopBackOff, ImagePullBackOff,
//!   CreateContainerError…) shows that reason, its last run moving to `lastState`.
//! - Phase: the upstream rules (init containers, sidecars, restartPolicy), and a
//!   terminal phase never changes again.
//! - Conditions: PodReadyToStartContainers, Initialized, Ready, ContainersReady,
//!   PodScheduled; `lastTransitionTime` moves only when a condition's status changes.
//!   Conditions the kubelet does not own (readiness gates) are kept from the pod.

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proto::v1;

use crate::Observed;
use crate::plan::{self, Instances, RestartPolicy};
use crate::translate::{self, ContainerKind, QosClass};

pub const PHASE_PENDING: &str = "Pending";
pub const PHASE_RUNNING: &str = "Running";
pub const PHASE_SUCCEEDED: &str = "Succeeded";
pub const PHASE_FAILED: &str = "Failed";

pub const CONDITION_POD_SCHEDULED: &str = "PodScheduled";
pub const CONDITION_READY_TO_START_CONTAINERS: &str = "PodReadyToStartContainers";
pub const CONDITION_INITIALIZED: &str = "Initialized";
pub const CONDITION_CONTAINERS_READY: &str = "ContainersReady";
pub const CONDITION_READY: &str = "Ready";

const REASON_CONTAINERS_NOT_READY: &str = "ContainersNotReady";
const REASON_CONTAINERS_NOT_INITIALIZED: &str = "ContainersNotInitialized";
const REASON_POD_COMPLETED: &str = "PodCompleted";
const REASON_POD_FAILED: &str = "PodFailed";
const REASON_READINESS_GATES_NOT_READY: &str = "ReadinessGatesNotReady";
const REASON_CONTAINER_CREATING: &str = "ContainerCreating";
const REASON_POD_INITIALIZING: &str = "PodInitializing";
const REASON_STATUS_UNKNOWN: &str = "ContainerStatusUnknown";
const REASON_COMPLETED: &str = "Completed";

/// Conditions this module computes; any other condition of the pod is kept as is.
const KUBELET_CONDITIONS: [&str; 5] = [
    CONDITION_POD_SCHEDULED,
    CONDITION_READY_TO_START_CONTAINERS,
    CONDITION_INITIALIZED,
    CONDITION_CONTAINERS_READY,
    CONDITION_READY,
];

/// Everything a status depends on. Probe results are keyed by CRI container id.
pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub observed: &'a Observed,
    /// Containers passing their readiness probe (containers without one need not be
    /// listed: they are ready once started).
    pub ready: &'a HashSet<String>,
    /// Containers whose startup probe succeeded (same: only those with a probe matter).
    pub started: &'a HashSet<String>,
    /// Why a container that is to start is not running, by container name: (reason,
    /// message), e.g. CrashLoopBackOff, ImagePullBackOff, CreateContainerError.
    pub waiting: &'a HashMap<String, (String, String)>,
    /// The CRI runtime's name, for `containerID` (`<runtime>://<id>`).
    pub runtime_name: &'a str,
    pub host_ip: &'a str,
    pub now: SystemTime,
    /// The status last computed for this pod, if any (else the pod's own status is used).
    pub previous: Option<&'a PodStatus>,
    /// The pod was killed for good and none of its containers runs again (upstream
    /// podIsTerminal): once all have stopped, the phase is Succeeded or Failed whatever
    /// the restart policy.
    pub terminal: bool,
}

/// Computes the pod's status.
pub fn compute(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let old = input.previous.or(pod.status.as_ref());
    let init = plan::init_containers(pod);
    let regular = plan::regular_containers(pod);
    let current = Instances::of_current_sandbox(input.observed);
    let regular_started = regular.iter().any(|c| {
        current
            .newest(&c.name)
            .is_some_and(|s| s.state() != v1::ContainerState::ContainerCreated)
    });
    let builder = Builder {
        input,
        old,
        instances: Instances::new(input.observed),
        policy: RestartPolicy::of(pod),
        has_init: !init.is_empty(),
        regular_started,
    };
    let init_statuses: Vec<ContainerStatus> = init
        .iter()
        .map(|c| builder.container(c, init_kind(c)))
        .collect();
    let mut statuses: Vec<ContainerStatus> = regular
        .iter()
        .map(|c| builder.container(c, ContainerKind::Regular))
        .collect();

    let mut phase = phase(
        builder.policy,
        init,
        &init_statuses,
        &statuses,
        regular_started,
        input.terminal,
    );
    if !is_terminal(phase) {
        // A pod never leaves a terminal phase.
        let old_phase = old.and_then(|o| o.phase.as_deref());
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if let Some(terminal) = [old_phase, api_phase]
            .into_iter()
            .flatten()
            .find(|p| is_terminal(p))
        {
            phase = terminal;
        }
    }

    let mut status = PodStatus {
        phase: Some(phase.to_owned()),
        qos_class: Some(qos_name(translate::qos_class(pod)).to_owned()),
        ..Default::default()
    };
    if let Some(old) = old.filter(|o| o.phase.as_deref() == Some(phase)) {
        status.reason.clone_from(&old.reason);
        status.message.clone_from(&old.message);
    }
    if !input.host_ip.is_empty() {
        status.host_ip = Some(input.host_ip.to_owned());
        status.host_ips = Some(vec![HostIP {
            ip: input.host_ip.to_owned(),
        }]);
    }
    let ips = pod_ips(input, old);
    status.pod_ip = ips.first().cloned();
    if !ips.is_empty() {
        status.pod_ips = Some(ips.into_iter().map(|ip| PodIP { ip }).collect());
    }
    status.start_time = old
        .and_then(|o| o.start_time.clone())
        .or_else(|| {
            input
                .observed
                .sandboxes
                .iter()
                .map(|s| s.created_at)
                .filter(|t| *t > 0)
                .min()
                .and_then(time)
        })
        .or_else(|| system_time(input.now));
    status.conditions = Some(conditions(input, old, phase, &init_statuses, &statuses));
    if !init_statuses.is_empty() {
        status.init_container_statuses = Some(init_statuses);
    }
    // Published with the regular containers by name and the init containers in their
    // order, as upstream (conditions name containers in spec order, above).
    statuses.sort_by(|a, b| a.name.cmp(&b.name));
    status.container_statuses = Some(statuses);
    status
}

fn is_terminal(phase: &str) -> bool {
    phase == PHASE_SUCCEEDED || phase == PHASE_FAILED
}

fn init_kind(c: &Container) -> ContainerKind {
    if plan::is_sidecar(c) {
        ContainerKind::Sidecar
    } else {
        ContainerKind::Init
    }
}

fn qos_name(q: QosClass) -> &'static str {
    match q {
        QosClass::Guaranteed => "Guaranteed",
        QosClass::Burstable => "Burstable",
        QosClass::BestEffort => "BestEffort",
    }
}

/// The newest sandbox's IPs while it is ready; the node's for host-network pods; else
/// the ones last reported (a finished pod keeps its IP).
fn pod_ips(input: &StatusInput<'_>, old: Option<&PodStatus>) -> Vec<String> {
    let mut ips = Vec::new();
    if let Some(s) = plan::newest_sandbox(&input.observed.sandboxes)
        .filter(|s| s.state() == v1::PodSandboxState::SandboxReady)
        && let Some(net) = &s.network
        && !net.ip.is_empty()
    {
        ips.push(net.ip.clone());
        ips.extend(
            net.additional_ips
                .iter()
                .map(|a| a.ip.clone())
                .filter(|ip| !ip.is_empty()),
        );
    }
    if ips.is_empty() && plan::host_network(input.pod) && !input.host_ip.is_empty() {
        ips.push(input.host_ip.to_owned());
    }
    if ips.is_empty()
        && let Some(old) = old
    {
        ips = match &old.pod_ips {
            Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.clone()).collect(),
            _ => old.pod_ip.iter().cloned().collect(),
        };
    }
    ips
}

/// CRI nanoseconds as an API time; zero means unset.
fn time(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    Timestamp::from_nanosecond(i128::from(nanos)).ok().map(Time)
}

fn system_time(t: SystemTime) -> Option<Time> {
    let nanos = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    Timestamp::from_nanosecond(nanos).ok().map(Time)
}

fn waiting(reason: Option<&str>, message: Option<&str>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: reason.map(str::to_owned),
            message: message.map(str::to_owned),
        }),
        ..Default::default()
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

struct Builder<'i, 'a> {
    input: &'i StatusInput<'a>,
    old: Option<&'a PodStatus>,
    instances: Instances<'a>,
    policy: RestartPolicy,
    has_init: bool,
    /// A regular container of the current sandbox has started: every init container ran.
    regular_started: bool,
}

impl Builder<'_, '_> {
    fn old_status(&self, name: &str, kind: ContainerKind) -> Option<&ContainerStatus> {
        let old = self.old?;
        let list = match kind {
            ContainerKind::Regular => old.container_statuses.as_deref(),
            ContainerKind::Init | ContainerKind::Sidecar => old.init_container_statuses.as_deref(),
        };
        list.unwrap_or_default().iter().find(|s| s.name == name)
    }

    fn container(&self, c: &Container, kind: ContainerKind) -> ContainerStatus {
        let name = c.name.as_str();
        let old = self.old_status(name, kind);
        let default_reason = if self.has_init {
            REASON_POD_INITIALIZING
        } else {
            REASON_CONTAINER_CREATING
        };
        let mut st = ContainerStatus {
            name: name.to_owned(),
            image: c.image.clone().unwrap_or_default(),
            state: Some(waiting(Some(default_reason), None)),
            ..Default::default()
        };
        if let Some(old) = old {
            if old.state.as_ref().is_some_and(|s| s.terminated.is_some()) {
                st = old.clone();
            } else {
                st.restart_count = old.restart_count;
                st.last_state.clone_from(&old.last_state);
            }
        }

        let deleting = self.input.pod.metadata.deletion_timestamp.is_some() || self.input.terminal;
        let instances = self.instances.all(name);
        // An init container of an initialized pod that the runtime no longer has (removed
        // by hand, or by GC before an agent restart lost its status) ran to completion,
        // as upstream reports it; it is not run again.
        let completed_and_gone = kind == ContainerKind::Init
            && instances.is_empty()
            && self.regular_started
            && st
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .is_some_and(|w| w.reason.as_deref() == Some(default_reason));
        match instances {
            [] if completed_and_gone => {
                st.state = Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some(REASON_COMPLETED.to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            [] => self.vanished(&mut st, old, default_reason, deleting),
            [newest, rest @ ..] => {
                st = self.convert(c, newest, old);
                if let Some(prev) = rest.first() {
                    st.last_state = self.convert(c, prev, None).state;
                }
            }
        }

        // A container that will be started again shows why it is not running yet. An
        // init container (sidecars too, as upstream) that exited 0 keeps showing that.
        let newest = instances.first().copied();
        let init_done = kind != ContainerKind::Regular
            && newest.is_some_and(|n| {
                n.state() == v1::ContainerState::ContainerExited && n.exit_code == 0
            });
        if !init_done
            && !completed_and_gone
            && !deleting
            && plan::should_restart(self.policy, kind == ContainerKind::Sidecar, newest)
            && let Some((reason, message)) = self.input.waiting.get(name)
        {
            if st.state.as_ref().is_some_and(|s| s.terminated.is_some()) {
                st.last_state = st.state.take();
            }
            st.state = Some(waiting(
                non_empty(reason).as_deref(),
                non_empty(message).as_deref(),
            ));
        }

        let state = st.state.as_ref();
        let running = state.is_some_and(|s| s.running.is_some());
        let id = newest.map(|n| n.id.as_str()).unwrap_or_default();
        let started = running && (c.startup_probe.is_none() || self.input.started.contains(id));
        st.started = Some(started);
        st.ready = match kind {
            ContainerKind::Init => state
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0),
            ContainerKind::Sidecar | ContainerKind::Regular => {
                started && (c.readiness_probe.is_none() || self.input.ready.contains(id))
            }
        };
        st
    }

    /// No instance in the runtime: one that was running before ended unseen.
    fn vanished(
        &self,
        st: &mut ContainerStatus,
        old: Option<&ContainerStatus>,
        default_reason: &str,
        deleting: bool,
    ) {
        let was_running = old
            .and_then(|o| o.state.as_ref())
            .is_some_and(|s| s.running.is_some() && s.terminated.is_none());
        let default_waiting = st
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some(default_reason));
        let has_last = st
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some());
        if !was_running || !default_waiting || has_last {
            return;
        }
        st.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 137,
                reason: Some(REASON_STATUS_UNKNOWN.to_owned()),
                message: Some(
                    "the container was running and is no longer found in the runtime".to_owned(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
        if !deleting {
            st.restart_count = st.restart_count.saturating_add(1);
        }
    }

    /// One runtime instance as a container status.
    fn convert(
        &self,
        c: &Container,
        cs: &v1::ContainerStatus,
        old: Option<&ContainerStatus>,
    ) -> ContainerStatus {
        let container_id = format!("{}://{}", self.input.runtime_name, cs.id);
        let image = cs
            .image
            .as_ref()
            .map(|i| i.image.as_str())
            .filter(|i| !i.is_empty())
            .map(str::to_owned)
            .or_else(|| c.image.clone())
            .unwrap_or_default();
        let mut st = ContainerStatus {
            name: c.name.clone(),
            restart_count: i32::try_from(plan::restart_count(cs)).unwrap_or(i32::MAX),
            image,
            image_id: cs.image_ref.clone(),
            container_id: Some(container_id.clone()),
            ..Default::default()
        };
        st.state = Some(match cs.state() {
            v1::ContainerState::ContainerRunning => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time(cs.started_at),
                }),
                ..Default::default()
            },
            v1::ContainerState::ContainerExited => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: cs.exit_code,
                    reason: non_empty(&cs.reason),
                    message: non_empty(&cs.message),
                    started_at: time(cs.started_at),
                    finished_at: time(cs.finished_at),
                    container_id: Some(container_id),
                    signal: None,
                }),
                ..Default::default()
            },
            v1::ContainerState::ContainerUnknown
                if old
                    .and_then(|o| o.state.as_ref())
                    .is_some_and(|s| s.running.is_some()) =>
            {
                // It ran and its end went unseen: terminated, not waiting, so that a
                // run-once container is not taken for one that never ran.
                st.restart_count = old.map_or(0, |o| o.restart_count).saturating_add(1);
                ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 137,
                        reason: Some(REASON_STATUS_UNKNOWN.to_owned()),
                        message: Some(
                            "the runtime no longer knows the state of the container".to_owned(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }
            // Created but not started, or unknown: waiting to run.
            v1::ContainerState::ContainerCreated | v1::ContainerState::ContainerUnknown => {
                waiting(None, None)
            }
        });
        st
    }
}

fn state_of(s: &ContainerStatus) -> (bool, Option<&ContainerStateTerminated>, bool) {
    let state = s.state.as_ref();
    (
        state.is_some_and(|s| s.running.is_some()),
        state.and_then(|s| s.terminated.as_ref()),
        state.is_some_and(|s| s.waiting.is_some()),
    )
}

fn last_terminated(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.last_state.as_ref().and_then(|l| l.terminated.as_ref())
}

/// The pod phase from its container statuses (upstream `getPhase`). `regular_started`:
/// a regular container was started in the current sandbox (upstream
/// `HasAnyActiveRegularContainerStarted`); from then on a sidecar that is restarting
/// or not yet past its startup probe no longer holds the pod Pending.
fn phase(
    policy: RestartPolicy,
    init: &[Container],
    init_st: &[ContainerStatus],
    st: &[ContainerStatus],
    regular_started: bool,
    terminal: bool,
) -> &'static str {
    let (mut pending_init, mut failed_init, mut pending_sidecars) = (0, 0, 0);
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);

    for (c, s) in init.iter().zip(init_st) {
        let (is_running, terminated, is_waiting) = state_of(s);
        if plan::is_sidecar(c) {
            // A sidecar counts as running; terminated sidecars count for nothing.
            if is_running {
                if s.started != Some(true) {
                    pending_sidecars += 1;
                }
                running += 1;
            } else if terminated.is_some() {
            } else if is_waiting {
                if last_terminated(s).is_none() {
                    pending_sidecars += 1;
                    waiting += 1;
                }
            } else {
                pending_sidecars += 1;
                unknown += 1;
            }
        } else if is_running {
            pending_init += 1;
        } else if let Some(t) = terminated {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if is_waiting {
            match last_terminated(s) {
                Some(t) if t.exit_code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            }
        } else {
            pending_init += 1;
        }
    }

    for s in st {
        let (is_running, terminated, is_waiting) = state_of(s);
        if is_running {
            running += 1;
        } else if let Some(t) = terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if is_waiting {
            if last_terminated(s).is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }

    if failed_init > 0 && policy == RestartPolicy::Never {
        return PHASE_FAILED;
    }
    // Sidecars still starting only hold the pod pending until a regular container has
    // started in this sandbox.
    if pending_init > 0 || (pending_sidecars > 0 && !regular_started) || waiting > 0 {
        return PHASE_PENDING;
    }
    if running > 0 && unknown == 0 {
        return PHASE_RUNNING;
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        if terminal {
            return if stopped == succeeded {
                PHASE_SUCCEEDED
            } else {
                PHASE_FAILED
            };
        }
        return match policy {
            RestartPolicy::Always => PHASE_RUNNING,
            _ if stopped == succeeded => PHASE_SUCCEEDED,
            RestartPolicy::Never => PHASE_FAILED,
            RestartPolicy::OnFailure => PHASE_RUNNING,
        };
    }
    PHASE_PENDING
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        ..Default::default()
    }
}

/// Names as Go prints a string slice: `[a b]`.
fn name_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

fn conditions(
    input: &StatusInput<'_>,
    old: Option<&PodStatus>,
    phase: &str,
    init_st: &[ContainerStatus],
    st: &[ContainerStatus],
) -> Vec<PodCondition> {
    let pod = input.pod;
    let init = plan::init_containers(pod);
    let api_conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();

    let mut out: Vec<PodCondition> = api_conditions
        .iter()
        .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();

    let sandbox_ok = plan::sandbox_needed(pod, &input.observed.sandboxes).is_none();
    out.push(condition(
        CONDITION_READY_TO_START_CONTAINERS,
        sandbox_ok,
        None,
        None,
    ));

    out.push(initialized(init, init_st, st, phase));

    let containers_ready = containers_ready(init, init_st, st, phase);
    out.push(ready(pod, api_conditions, &containers_ready));
    out.push(containers_ready);

    out.push(condition(CONDITION_POD_SCHEDULED, true, None, None));

    let old_conditions = old
        .and_then(|o| o.conditions.as_deref())
        .unwrap_or_default();
    let now = system_time(input.now);
    for c in out
        .iter_mut()
        .filter(|c| KUBELET_CONDITIONS.contains(&c.type_.as_str()))
    {
        let kept = old_conditions
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            .and_then(|o| o.last_transition_time.clone());
        c.last_transition_time = kept.or_else(|| now.clone());
    }
    out
}

fn initialized(
    init: &[Container],
    init_st: &[ContainerStatus],
    st: &[ContainerStatus],
    phase: &str,
) -> PodCondition {
    if phase == PHASE_SUCCEEDED {
        return condition(
            CONDITION_INITIALIZED,
            true,
            Some(REASON_POD_COMPLETED),
            None,
        );
    }
    // A regular container that ran means initialization completed, even while a
    // sidecar restarts.
    let regular_ran = st.iter().any(|s| {
        s.state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    });
    if regular_ran {
        return condition(CONDITION_INITIALIZED, true, None, None);
    }
    let incomplete: Vec<&str> = init
        .iter()
        .zip(init_st)
        .filter(|(c, s)| {
            if plan::is_sidecar(c) {
                s.started != Some(true)
            } else {
                !s.ready
            }
        })
        .map(|(c, _)| c.name.as_str())
        .collect();
    if incomplete.is_empty() {
        return condition(CONDITION_INITIALIZED, true, None, None);
    }
    condition(
        CONDITION_INITIALIZED,
        false,
        Some(REASON_CONTAINERS_NOT_INITIALIZED),
        Some(format!(
            "containers with incomplete status: {}",
            name_list(&incomplete)
        )),
    )
}

fn containers_ready(
    init: &[Container],
    init_st: &[ContainerStatus],
    st: &[ContainerStatus],
    phase: &str,
) -> PodCondition {
    match phase {
        PHASE_SUCCEEDED => {
            return condition(
                CONDITION_CONTAINERS_READY,
                false,
                Some(REASON_POD_COMPLETED),
                None,
            );
        }
        PHASE_FAILED => {
            return condition(
                CONDITION_CONTAINERS_READY,
                false,
                Some(REASON_POD_FAILED),
                None,
            );
        }
        _ => {}
    }
    let sidecars = init
        .iter()
        .zip(init_st)
        .filter(|(c, _)| plan::is_sidecar(c))
        .map(|(_, s)| s);
    let unready: Vec<&str> = sidecars
        .chain(st)
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    if unready.is_empty() {
        return condition(CONDITION_CONTAINERS_READY, true, None, None);
    }
    condition(
        CONDITION_CONTAINERS_READY,
        false,
        Some(REASON_CONTAINERS_NOT_READY),
        Some(format!(
            "containers with unready status: {}",
            name_list(&unready)
        )),
    )
}

/// Ready: ContainersReady, and every readiness gate's condition True.
fn ready(
    pod: &Pod,
    api_conditions: &[PodCondition],
    containers_ready: &PodCondition,
) -> PodCondition {
    if containers_ready.status != "True" {
        return PodCondition {
            type_: CONDITION_READY.to_owned(),
            ..containers_ready.clone()
        };
    }
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_deref())
        .unwrap_or_default();
    let unready: Vec<String> = gates
        .iter()
        .filter_map(|g| {
            let gate = &g.condition_type;
            match api_conditions.iter().find(|c| &c.type_ == gate) {
                // Upstream's wording (status/generate.go).
                None => Some(format!(
                    "corresponding condition of pod readiness gate {gate:?} does not exist."
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate {gate:?} is not \"True\", but {}",
                    c.status
                )),
                Some(_) => None,
            }
        })
        .collect();
    if unready.is_empty() {
        return condition(CONDITION_READY, true, None, None);
    }
    condition(
        CONDITION_READY,
        false,
        Some(REASON_READINESS_GATES_NOT_READY),
        Some(unready.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{SEC, ctr, exited, pod, pod_with, running, sandbox};
    use serde_json::json;
    use std::time::Duration;
    use v1::ContainerState::{ContainerCreated, ContainerRunning};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    struct Env {
        ready: HashSet<String>,
        started: HashSet<String>,
        waiting: HashMap<String, (String, String)>,
        terminal: bool,
    }

    impl Env {
        fn new() -> Self {
            Self {
                ready: HashSet::new(),
                started: HashSet::new(),
                waiting: HashMap::new(),
                terminal: false,
            }
        }

        fn terminal(mut self) -> Self {
            self.terminal = true;
            self
        }

        fn ready(mut self, ids: &[&str]) -> Self {
            self.ready.extend(ids.iter().map(|s| (*s).to_owned()));
            self
        }

        fn started(mut self, ids: &[&str]) -> Self {
            self.started.extend(ids.iter().map(|s| (*s).to_owned()));
            self
        }

        fn waiting(mut self, name: &str, reason: &str) -> Self {
            self.waiting.insert(
                name.to_owned(),
                (reason.to_owned(), format!("{reason} for {name}")),
            );
            self
        }

        fn compute(
            &self,
            pod: &Pod,
            observed: &Observed,
            previous: Option<&PodStatus>,
        ) -> PodStatus {
            compute(&StatusInput {
                pod,
                observed,
                ready: &self.ready,
                started: &self.started,
                waiting: &self.waiting,
                runtime_name: "nodelet",
                host_ip: "192.168.1.10",
                now: now(),
                previous,
                terminal: self.terminal,
            })
        }
    }

    fn observed(containers: Vec<v1::ContainerStatus>) -> Observed {
        Observed {
            sandboxes: vec![sandbox("sb1", 0, true, "10.0.0.2")],
            containers,
        }
    }

    fn cond<'s>(s: &'s PodStatus, type_: &str) -> &'s PodCondition {
        s.conditions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    fn container<'s>(s: &'s PodStatus, name: &str) -> &'s ContainerStatus {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .find(|c| c.name == name)
            .expect("container status present")
    }

    fn startup_probe_sidecar_pod() -> Pod {
        pod(json!({
            "metadata": {"name": "p", "uid": "uid-1"},
            "spec": {
                "initContainers": [{"name": "side", "image": "img", "restartPolicy": "Always",
                                    "startupProbe": {"exec": {"command": ["true"]}}}],
                "containers": [{"name": "web", "image": "img"}]
            }
        }))
    }

    #[test]
    fn phase_table() {
        let cases: Vec<(&str, Pod, Vec<v1::ContainerStatus>, Env, &str)> = vec![
            (
                "nothing created yet",
                pod_with("Always", &[], &["web"]),
                vec![],
                Env::new(),
                "Pending",
            ),
            (
                "created, not started",
                pod_with("Always", &[], &["web"]),
                vec![ctr("web", 0, "img", ContainerCreated, 0, 200)],
                Env::new(),
                "Pending",
            ),
            (
                "all running",
                pod_with("Always", &[], &["web", "log"]),
                vec![running("web", 0, 200), running("log", 0, 200)],
                Env::new(),
                "Running",
            ),
            (
                "one running, one not created",
                pod_with("Always", &[], &["web", "log"]),
                vec![running("web", 0, 200)],
                Env::new(),
                "Pending",
            ),
            (
                "Always, exited and backing off",
                pod_with("Always", &[], &["web"]),
                vec![exited("web", 2, 1, 200)],
                Env::new().waiting("web", "CrashLoopBackOff"),
                "Running",
            ),
            (
                "Always, image pull failing, never ran",
                pod_with("Always", &[], &["web"]),
                vec![],
                Env::new().waiting("web", "ImagePullBackOff"),
                "Pending",
            ),
            (
                "OnFailure, all succeeded",
                pod_with("OnFailure", &[], &["a", "b"]),
                vec![exited("a", 0, 0, 200), exited("b", 0, 0, 200)],
                Env::new(),
                "Succeeded",
            ),
            (
                "OnFailure, one failed and restarting",
                pod_with("OnFailure", &[], &["a", "b"]),
                vec![exited("a", 0, 0, 200), exited("b", 0, 1, 200)],
                Env::new(),
                "Running",
            ),
            (
                "Never, one failed",
                pod_with("Never", &[], &["a", "b"]),
                vec![exited("a", 0, 0, 200), exited("b", 0, 1, 200)],
                Env::new(),
                "Failed",
            ),
            (
                "Never, all succeeded",
                pod_with("Never", &[], &["a"]),
                vec![exited("a", 0, 0, 200)],
                Env::new(),
                "Succeeded",
            ),
            (
                "init running",
                pod_with("Always", &["i1"], &["web"]),
                vec![running("i1", 0, 200)],
                Env::new(),
                "Pending",
            ),
            (
                "init done, regular running",
                pod_with("Always", &["i1"], &["web"]),
                vec![exited("i1", 0, 0, 200), running("web", 0, 210)],
                Env::new(),
                "Running",
            ),
            (
                "init failed, Never",
                pod_with("Never", &["i1"], &["web"]),
                vec![exited("i1", 0, 1, 200)],
                Env::new(),
                "Failed",
            ),
            (
                "init failed, OnFailure, backing off",
                pod_with("OnFailure", &["i1"], &["web"]),
                vec![exited("i1", 0, 1, 200)],
                Env::new().waiting("i1", "CrashLoopBackOff"),
                "Pending",
            ),
            (
                "sidecar running without startup probe, regular running",
                pod_with("Always", &["side"], &["web"]),
                vec![running("side", 0, 190), running("web", 0, 200)],
                Env::new(),
                "Running",
            ),
            (
                "sidecar not started yet (startup probe)",
                startup_probe_sidecar_pod(),
                vec![running("side", 0, 190)],
                Env::new(),
                "Pending",
            ),
            (
                "sidecar restarting behind its startup probe, web running",
                startup_probe_sidecar_pod(),
                vec![
                    exited("side", 0, 1, 190),
                    running("side", 1, 205),
                    running("web", 0, 200),
                ],
                Env::new(),
                "Running",
            ),
            (
                "sidecar crash-looping, web running",
                pod_with("Always", &["side"], &["web"]),
                vec![exited("side", 0, 1, 190), running("web", 0, 200)],
                Env::new().waiting("side", "CrashLoopBackOff"),
                "Running",
            ),
            (
                "sidecar running, job done under Never",
                pod_with("Never", &["side"], &["job"]),
                vec![running("side", 0, 190), exited("job", 0, 0, 200)],
                Env::new(),
                "Running",
            ),
            (
                "sidecar stopped, job succeeded under Never",
                pod_with("Never", &["side"], &["job"]),
                vec![exited("side", 0, 137, 190), exited("job", 0, 0, 200)],
                Env::new(),
                "Succeeded",
            ),
        ];
        for (name, pod, containers, env, want) in cases {
            let st = env.compute(&pod, &observed(containers), None);
            assert_eq!(st.phase.as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn a_killed_pod_ends_in_a_terminal_phase_with_its_exit_codes() {
        let cases: Vec<(&str, Pod, Vec<v1::ContainerStatus>, &str)> = vec![
            (
                "Always, stopped cleanly on SIGTERM",
                pod_with("Always", &[], &["web"]),
                vec![exited("web", 0, 0, 200)],
                "Succeeded",
            ),
            (
                "Always, SIGKILLed",
                pod_with("Always", &[], &["web", "log"]),
                vec![exited("web", 0, 0, 200), exited("log", 0, 137, 200)],
                "Failed",
            ),
            (
                "OnFailure, one failed",
                pod_with("OnFailure", &[], &["a"]),
                vec![exited("a", 1, 2, 200)],
                "Failed",
            ),
            (
                "still stopping",
                pod_with("Always", &[], &["web", "log"]),
                vec![exited("web", 0, 0, 200), running("log", 0, 200)],
                "Running",
            ),
        ];
        for (name, pod, containers, want) in cases {
            // A crash loop's waiting reason no longer shows: the container is done.
            let env = Env::new().terminal().waiting("web", "CrashLoopBackOff");
            let st = env.compute(&pod, &observed(containers), None);
            assert_eq!(st.phase.as_deref(), Some(want), "{name}");
            let web = container(&st, pod_regular_first(&pod));
            if want != "Running" {
                assert!(
                    web.state.as_ref().is_some_and(|s| s.terminated.is_some()),
                    "{name}: {web:?}"
                );
            }
        }
    }

    fn pod_regular_first(pod: &Pod) -> &str {
        &pod.spec.as_ref().expect("spec").containers[0].name
    }

    #[test]
    fn terminal_phase_sticks() {
        let pod = pod_with("Never", &[], &["a"]);
        let env = Env::new();
        let done = env.compute(&pod, &observed(vec![exited("a", 0, 0, 200)]), None);
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
        // The runtime forgot everything (containers removed, sandbox gone).
        let later = env.compute(&pod, &Observed::default(), Some(&done));
        assert_eq!(later.phase.as_deref(), Some("Succeeded"));
        let a = container(&later, "a");
        assert_eq!(
            a.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            Some(0)
        );
        assert_eq!(
            later.pod_ip.as_deref(),
            Some("10.0.0.2"),
            "a finished pod keeps its IP"
        );
    }

    struct CondCase {
        name: &'static str,
        pod: Pod,
        containers: Vec<v1::ContainerStatus>,
        env: Env,
        sandbox_ready: bool,
        /// (type, status, reason, message)
        want: Vec<(
            &'static str,
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
        )>,
    }

    #[test]
    fn conditions_table() {
        let readiness_pod = pod(json!({
            "metadata": {"name": "p", "uid": "uid-1"},
            "spec": {"containers": [
                {"name": "web", "image": "img", "readinessProbe": {"httpGet": {"port": 80}}},
                {"name": "log", "image": "img"}
            ]}
        }));
        let gated_pod = |gate_status: Option<&str>| {
            let conditions: Vec<_> = gate_status
                .map(|s| json!({"type": "example.com/lb", "status": s}))
                .into_iter()
                .collect();
            pod(json!({
                "metadata": {"name": "p", "uid": "uid-1"},
                "spec": {"readinessGates": [{"conditionType": "example.com/lb"}],
                         "containers": [{"name": "web", "image": "img"}]},
                "status": {"conditions": conditions}
            }))
        };
        let both_running = || vec![running("web", 0, 200), running("log", 0, 200)];
        let not_ready = Some("ContainersNotReady");
        let cases = vec![
            CondCase {
                name: "all ready",
                pod: readiness_pod.clone(),
                containers: both_running(),
                env: Env::new().ready(&["web-0"]),
                sandbox_ready: true,
                want: vec![
                    ("PodReadyToStartContainers", "True", None, None),
                    ("Initialized", "True", None, None),
                    ("Ready", "True", None, None),
                    ("ContainersReady", "True", None, None),
                    ("PodScheduled", "True", None, None),
                ],
            },
            CondCase {
                name: "readiness probe not passing",
                pod: readiness_pod.clone(),
                containers: both_running(),
                env: Env::new(),
                sandbox_ready: true,
                want: vec![
                    (
                        "Ready",
                        "False",
                        not_ready,
                        Some("containers with unready status: [web]"),
                    ),
                    (
                        "ContainersReady",
                        "False",
                        not_ready,
                        Some("containers with unready status: [web]"),
                    ),
                ],
            },
            CondCase {
                name: "sandbox not ready",
                pod: readiness_pod.clone(),
                containers: vec![],
                env: Env::new(),
                sandbox_ready: false,
                want: vec![
                    ("PodReadyToStartContainers", "False", None, None),
                    (
                        "ContainersReady",
                        "False",
                        not_ready,
                        Some("containers with unready status: [web log]"),
                    ),
                ],
            },
            CondCase {
                name: "init containers incomplete",
                pod: pod_with("Always", &["i1", "i2"], &["web"]),
                containers: vec![exited("i1", 0, 0, 200), running("i2", 0, 210)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![(
                    "Initialized",
                    "False",
                    Some("ContainersNotInitialized"),
                    Some("containers with incomplete status: [i2]"),
                )],
            },
            CondCase {
                name: "init containers done",
                pod: pod_with("Always", &["i1"], &["web"]),
                containers: vec![exited("i1", 0, 0, 200)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![("Initialized", "True", None, None)],
            },
            CondCase {
                name: "sidecar not started counts as incomplete",
                pod: startup_probe_sidecar_pod(),
                containers: vec![running("side", 0, 190)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![
                    (
                        "Initialized",
                        "False",
                        Some("ContainersNotInitialized"),
                        Some("containers with incomplete status: [side]"),
                    ),
                    (
                        "ContainersReady",
                        "False",
                        not_ready,
                        Some("containers with unready status: [side web]"),
                    ),
                ],
            },
            CondCase {
                name: "sidecar started (startup probe passed)",
                pod: startup_probe_sidecar_pod(),
                containers: vec![running("side", 0, 190)],
                env: Env::new().started(&["side-0"]),
                sandbox_ready: true,
                want: vec![
                    ("Initialized", "True", None, None),
                    (
                        "ContainersReady",
                        "False",
                        not_ready,
                        Some("containers with unready status: [web]"),
                    ),
                ],
            },
            CondCase {
                name: "succeeded pod",
                pod: pod_with("OnFailure", &["i1"], &["a"]),
                containers: vec![exited("i1", 0, 0, 190), exited("a", 0, 0, 200)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![
                    ("Initialized", "True", Some("PodCompleted"), None),
                    ("Ready", "False", Some("PodCompleted"), None),
                    ("ContainersReady", "False", Some("PodCompleted"), None),
                ],
            },
            CondCase {
                name: "failed pod",
                pod: pod_with("Never", &[], &["a"]),
                containers: vec![exited("a", 0, 1, 200)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![
                    ("Ready", "False", Some("PodFailed"), None),
                    ("ContainersReady", "False", Some("PodFailed"), None),
                ],
            },
            CondCase {
                name: "readiness gate without its condition",
                pod: gated_pod(None),
                containers: vec![running("web", 0, 200)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![
                    (
                        "Ready",
                        "False",
                        Some("ReadinessGatesNotReady"),
                        Some(
                            "corresponding condition of pod readiness gate \"example.com/lb\" does not exist.",
                        ),
                    ),
                    ("ContainersReady", "True", None, None),
                ],
            },
            CondCase {
                name: "readiness gate False",
                pod: gated_pod(Some("False")),
                containers: vec![running("web", 0, 200)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![
                    (
                        "Ready",
                        "False",
                        Some("ReadinessGatesNotReady"),
                        Some(
                            "the status of pod readiness gate \"example.com/lb\" is not \"True\", but False",
                        ),
                    ),
                    ("example.com/lb", "False", None, None),
                ],
            },
            CondCase {
                name: "readiness gate True",
                pod: gated_pod(Some("True")),
                containers: vec![running("web", 0, 200)],
                env: Env::new(),
                sandbox_ready: true,
                want: vec![("Ready", "True", None, None)],
            },
        ];
        for case in cases {
            let mut obs = observed(case.containers);
            if !case.sandbox_ready {
                obs.sandboxes = vec![sandbox("sb1", 0, false, "10.0.0.2")];
            }
            let st = case.env.compute(&case.pod, &obs, None);
            let name = case.name;
            for (type_, status, reason, message) in case.want {
                let c = cond(&st, type_);
                assert_eq!(c.status, status, "{name}: {type_} status");
                assert_eq!(c.reason.as_deref(), reason, "{name}: {type_} reason");
                assert_eq!(c.message.as_deref(), message, "{name}: {type_} message");
            }
        }
    }

    #[test]
    fn condition_order_and_transition_times() {
        let pod = pod_with("Always", &[], &["web"]);
        let before = Time(Timestamp::from_second(1_600_000_000).expect("valid"));
        let env = Env::new();
        let first = env.compute(&pod, &observed(vec![running("web", 0, 200)]), None);
        let types: Vec<&str> = first
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        let now = system_time(now());
        assert!(
            first
                .conditions
                .iter()
                .flatten()
                .all(|c| c.last_transition_time == now)
        );

        // Backdate the previous status; unchanged conditions keep their times, a flipped
        // one gets `now`.
        let mut previous = first.clone();
        for c in previous.conditions.iter_mut().flatten() {
            c.last_transition_time = Some(before.clone());
        }
        let unchanged = env.compute(
            &pod,
            &observed(vec![running("web", 0, 200)]),
            Some(&previous),
        );
        assert!(
            unchanged
                .conditions
                .iter()
                .flatten()
                .all(|c| c.last_transition_time.as_ref() == Some(&before))
        );
        let crashed = env.compute(
            &pod,
            &observed(vec![exited("web", 0, 1, 200)]),
            Some(&previous),
        );
        assert_eq!(cond(&crashed, "Ready").status, "False");
        assert_eq!(cond(&crashed, "Ready").last_transition_time, now);
        assert_eq!(
            cond(&crashed, "PodScheduled").last_transition_time.as_ref(),
            Some(&before)
        );
    }

    #[test]
    fn a_sidecar_that_exited_0_shows_terminated_while_it_waits() {
        let pod = pod_with("Always", &["side"], &["web"]);
        let obs = observed(vec![exited("side", 0, 0, 190), running("web", 0, 200)]);
        let st = Env::new()
            .waiting("side", "CrashLoopBackOff")
            .compute(&pod, &obs, None);
        let side = container(&st, "side");
        let t = side.state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(t.map(|t| t.exit_code), Some(0), "{side:?}");
        // A failed one shows why it is not running.
        let obs = observed(vec![exited("side", 0, 1, 190), running("web", 0, 200)]);
        let st = Env::new()
            .waiting("side", "CrashLoopBackOff")
            .compute(&pod, &obs, None);
        let side = container(&st, "side");
        let w = side.state.as_ref().and_then(|s| s.waiting.as_ref());
        assert_eq!(
            w.and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
    }

    #[test]
    fn regular_container_statuses_are_sorted_by_name() {
        let pod = pod_with("Always", &["z-init", "a-init"], &["web", "api", "log"]);
        let st = Env::new().compute(&pod, &observed(vec![]), None);
        let names = |l: &Option<Vec<ContainerStatus>>| -> Vec<String> {
            l.iter().flatten().map(|c| c.name.clone()).collect()
        };
        assert_eq!(names(&st.container_statuses), ["api", "log", "web"]);
        assert_eq!(
            names(&st.init_container_statuses),
            ["z-init", "a-init"],
            "spec order"
        );
    }

    #[test]
    fn container_states_restart_counts_and_last_state() {
        let pod = pod_with("Always", &[], &["web"]);
        // Two earlier runs, the newest crashed; the planner holds it back.
        let obs = observed(vec![
            exited("web", 1, 2, 150),
            exited("web", 2, 137, 200),
            exited("web", 0, 1, 100),
        ]);
        let st = Env::new()
            .waiting("web", "CrashLoopBackOff")
            .compute(&pod, &obs, None);
        let web = container(&st, "web");
        assert_eq!(web.restart_count, 2);
        let w = web
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(w.message.as_deref(), Some("CrashLoopBackOff for web"));
        let last = web
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("last terminated");
        assert_eq!(last.exit_code, 137, "lastState is the newest run");
        assert_eq!(last.container_id.as_deref(), Some("nodelet://web-2"));
        assert_eq!(last.finished_at, time(202 * SEC));
        assert_eq!(last.started_at, time(201 * SEC));
        assert_eq!(web.container_id.as_deref(), Some("nodelet://web-2"));
        assert!(!web.ready);
        assert_eq!(web.started, Some(false));

        // Restarted: running now, the crash is lastState.
        let obs = observed(vec![exited("web", 2, 137, 200), running("web", 3, 300)]);
        let st = Env::new()
            .waiting("web", "CrashLoopBackOff")
            .compute(&pod, &obs, None);
        let web = container(&st, "web");
        assert_eq!(web.restart_count, 3);
        let r = web
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .expect("running");
        assert_eq!(r.started_at, time(301 * SEC));
        assert_eq!(
            web.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            Some(137)
        );
        assert!(web.ready);
        assert_eq!(web.started, Some(true));
        assert_eq!(web.image, "img");
        assert_eq!(web.image_id, "sha256:img");
    }

    #[test]
    fn never_policy_shows_terminated_not_waiting() {
        let pod = pod_with("Never", &[], &["a"]);
        let obs = observed(vec![exited("a", 0, 3, 200)]);
        let st = Env::new()
            .waiting("a", "CrashLoopBackOff")
            .compute(&pod, &obs, None);
        let a = container(&st, "a");
        let t = a
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!(t.exit_code, 3);
        assert!(a.last_state.is_none());
    }

    #[test]
    fn default_waiting_reasons_and_init_ready() {
        let pod = pod_with("Always", &["i1"], &["web"]);
        let st = Env::new().compute(&pod, &observed(vec![exited("i1", 0, 0, 200)]), None);
        let i1 = container(&st, "i1");
        assert!(i1.ready, "a completed init container is ready");
        assert_eq!(i1.started, Some(false));
        let web = container(&st, "web");
        let w = web
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("PodInitializing"));

        let pod = pod_with("Always", &[], &["web"]);
        let st = Env::new().compute(&pod, &observed(vec![]), None);
        let web = container(&st, "web");
        let w = web
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
        assert_eq!(web.restart_count, 0);
    }

    #[test]
    fn init_containers_gone_from_an_initialized_pod_completed() {
        // Removed from the runtime (GC, crictl rm) and no earlier status to go by: the
        // running app proves they ran; the pod stays Initialized and Running.
        let pod = pod_with("Always", &["i1", "i2"], &["web"]);
        let st = Env::new().compute(&pod, &observed(vec![running("web", 0, 200)]), None);
        for name in ["i1", "i2"] {
            let c = container(&st, name);
            let t = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .expect("terminated");
            assert_eq!(
                (t.exit_code, t.reason.as_deref()),
                (0, Some("Completed")),
                "{name}"
            );
            assert!(c.ready, "{name}");
        }
        assert_eq!(cond(&st, "Initialized").status, "True");
        assert_eq!(st.phase.as_deref(), Some("Running"));

        // Before any app container started, a missing init container is still to run.
        let st = Env::new().compute(&pod, &observed(vec![exited("i1", 0, 0, 200)]), None);
        let i2 = container(&st, "i2");
        assert!(
            i2.state.as_ref().is_some_and(|s| s.waiting.is_some()),
            "{i2:?}"
        );
    }

    #[test]
    fn container_that_vanished_while_running() {
        let pod = pod_with("Always", &[], &["web"]);
        let env = Env::new();
        let before = env.compute(&pod, &observed(vec![running("web", 4, 200)]), None);
        let after = env.compute(&pod, &observed(vec![]), Some(&before));
        let web = container(&after, "web");
        assert_eq!(web.restart_count, 5);
        let t = web
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("last terminated");
        assert_eq!(
            (t.exit_code, t.reason.as_deref()),
            (137, Some("ContainerStatusUnknown"))
        );
        assert_eq!(after.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn ips_times_and_qos() {
        let pod = pod(json!({
            "metadata": {"name": "p", "uid": "uid-1"},
            "spec": {"containers": [{"name": "web", "image": "img",
                "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}]}
        }));
        let mut obs = observed(vec![running("web", 0, 200)]);
        if let Some(net) = obs.sandboxes[0].network.as_mut() {
            net.additional_ips.push(v1::PodIp {
                ip: "fd00::2".into(),
            });
        }
        let st = Env::new().compute(&pod, &obs, None);
        assert_eq!(st.pod_ip.as_deref(), Some("10.0.0.2"));
        let ips: Vec<&str> = st.pod_ips.iter().flatten().map(|p| p.ip.as_str()).collect();
        assert_eq!(ips, ["10.0.0.2", "fd00::2"]);
        assert_eq!(st.host_ip.as_deref(), Some("192.168.1.10"));
        assert_eq!(st.host_ips.as_ref().map(Vec::len), Some(1));
        assert_eq!(st.start_time, time(100 * SEC), "first sandbox creation");
        assert_eq!(st.qos_class.as_deref(), Some("Guaranteed"));

        // Kept from the previous status.
        let mut previous = st.clone();
        previous.start_time = time(50 * SEC);
        let st = Env::new().compute(&pod, &obs, Some(&previous));
        assert_eq!(st.start_time, time(50 * SEC));

        // Host network: the node's IP.
        let host = pod_with("Always", &[], &["web"]);
        let mut host = host;
        if let Some(spec) = host.spec.as_mut() {
            spec.host_network = Some(true);
        }
        let mut obs = observed(vec![running("web", 0, 200)]);
        obs.sandboxes[0].network = None;
        let st = Env::new().compute(&host, &obs, None);
        assert_eq!(st.pod_ip.as_deref(), Some("192.168.1.10"));
        assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn created_container_is_waiting_with_its_start_error() {
        let pod = pod_with("Always", &[], &["web"]);
        let obs = observed(vec![ctr("web", 0, "img", ContainerCreated, 0, 200)]);
        let st = Env::new()
            .waiting("web", "RunContainerError")
            .compute(&pod, &obs, None);
        let web = container(&st, "web");
        let w = web
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("RunContainerError"));
        assert_eq!(web.container_id.as_deref(), Some("nodelet://web-0"));
        // A stale waiting reason does not hide a running container.
        let obs = observed(vec![ctr("web", 1, "img", ContainerRunning, 0, 300)]);
        let st = Env::new()
            .waiting("web", "RunContainerError")
            .compute(&pod, &obs, None);
        assert!(
            container(&st, "web")
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some())
        );
    }
}
