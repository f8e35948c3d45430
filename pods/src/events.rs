//! The seam through which the engine reports Kubernetes events about its pods
//! (`kubectl describe pod`, `kubectl get events`): the engine knows no API server, the
//! kubelet hands it a [`Recorder`] when it joins a cluster (`kubelet/src/events.rs`,
//! which aggregates, rate-limits and writes them), and a standalone agent has none, so
//! nothing is recorded.
//!
//! Events are emitted on what the engine does and sees happen (an image pulled, a
//! container created, started, killed, a probe failing), never once per sync: a sync
//! that acts on nothing records nothing. The reasons and message shapes are upstream's
//! (pkg/kubelet/events, kuberuntime, images, prober), so tools and people that read
//! them read ours the same; the message builders live here, in one place.
//!
//! What lives here besides the trait:
//! - [`PodRef`]: the involved object, a pod or one of its containers (`fieldPath`).
//! - the reasons, and the builders of their messages.
//! - [`Emitter`] (crate-private): the engine's side of the seam, the recorder slot and
//!   the pods of probed containers, for the `Unhealthy` events the probe workers raise
//!   through [`ProbeEvents`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Probe};

use crate::handlers::Outcome;
use crate::probe::{CriRunner, Kind, Runner, Subject};

/// `Normal` or `Warning`, an event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The object an event is about: a pod, or one of its containers (`field_path`
/// `spec.containers{name}` or `spec.initContainers{name}`, as upstream's container
/// references).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub field_path: Option<String>,
}

impl PodRef {
    /// The pod itself; None for a pod without a name or UID (one restored from the
    /// runtime's labels after an agent restart: nothing to point an event at).
    ///
    /// A static pod is named by its own name, namespace and UID (its config hash), as
    /// upstream's kubelet records them, not by its mirror pod's API UID.
    pub fn of(pod: &Pod) -> Option<Self> {
        let m = &pod.metadata;
        let name = m.name.clone().filter(|n| !n.is_empty())?;
        let uid = m.uid.clone().filter(|u| !u.is_empty())?;
        Some(PodRef {
            namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
            name,
            uid,
            field_path: None,
        })
    }

    /// One of the pod's containers, by name: a regular container first, then an init
    /// container (upstream's fieldPath order). Without such a container, the pod.
    pub fn container(pod: &Pod, container: &str) -> Option<Self> {
        let mut r = Self::of(pod)?;
        r.field_path = field_path(pod, container);
        Some(r)
    }

    /// `name_namespace(uid)`, as upstream's kubelet names a pod in messages.
    pub fn display(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }
}

/// `spec.containers{name}` or `spec.initContainers{name}`; None when the pod has no
/// container of that name.
pub fn field_path(pod: &Pod, container: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.containers.iter().any(|c| c.name == container) {
        return Some(format!("spec.containers{{{container}}}"));
    }
    spec.init_containers
        .iter()
        .flatten()
        .any(|c| c.name == container)
        .then(|| format!("spec.initContainers{{{container}}}"))
}

/// Where the engine's events go. Implementations must not block: the engine calls it
/// from its pod workers and probe workers (queue, and write elsewhere).
pub trait Recorder: Send + Sync {
    fn event(&self, object: &PodRef, kind: EventType, reason: &str, message: String);
}

// The reasons, as upstream's pkg/kubelet/events names them.
pub const PULLING: &str = "Pulling";
pub const PULLED: &str = "Pulled";
/// Failed to pull, to create or to start a container.
pub const FAILED: &str = "Failed";
/// Back-off pulling an image, or restarting a failed container.
pub const BACK_OFF: &str = "BackOff";
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
pub const CREATED: &str = "Created";
pub const STARTED: &str = "Started";
pub const KILLING: &str = "Killing";
pub const UNHEALTHY: &str = "Unhealthy";
pub const FAILED_MOUNT: &str = "FailedMount";
pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
pub const SANDBOX_CHANGED: &str = "SandboxChanged";
pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
pub const FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";

// The messages, in upstream's shapes.

pub fn pulling(image: &str) -> String {
    format!("Pulling image {image:?}")
}

/// A pull that worked: how long it took (there is no pull queue here, so the time
/// "including waiting" is the same) and the image's size.
pub fn pulled(image: &str, took: Duration, size: u64) -> String {
    let took = go_duration(took);
    format!(
        "Successfully pulled image {image:?} in {took} ({took} including waiting). Image size: {size} bytes."
    )
}

pub fn already_present(image: &str) -> String {
    format!("Container image {image:?} already present on machine")
}

pub fn never_pull(image: &str) -> String {
    format!("Container image {image:?} is not present with pull policy of Never")
}

pub fn pull_failed(image: &str, err: &str) -> String {
    format!("Failed to pull image {image:?}: {err}")
}

pub fn pull_back_off(image: &str) -> String {
    format!("Back-off pulling image {image:?}")
}

/// A container that could not be made or started (`Failed`): `Error: <why>`.
pub fn error(why: &str) -> String {
    format!("Error: {why}")
}

pub fn created(container: &str) -> String {
    format!("Created container: {container}")
}

pub fn started(container: &str) -> String {
    format!("Started container {container}")
}

/// The `Killing` message of a kill with no reason of its own.
pub fn stopping(container: &str) -> String {
    format!("Stopping container {container}")
}

pub fn crash_back_off(container: &str, pod: &PodRef) -> String {
    format!(
        "Back-off restarting failed container {container} in pod {}",
        pod.display()
    )
}

pub fn probe_failed(kind: Kind, output: &str) -> String {
    let kind = match kind {
        Kind::Liveness => "Liveness",
        Kind::Readiness => "Readiness",
        Kind::Startup => "Startup",
    };
    format!("{kind} probe failed: {output}")
}

pub const SANDBOX_CHANGED_MESSAGE: &str = "Pod sandbox changed, it will be killed and re-created.";

pub fn sandbox_failed(err: &str) -> String {
    format!("Failed to create pod sandbox: {err}")
}

/// Hook failures name no output: a hook's output may hold secrets (upstream's reason).
pub const POST_START_FAILED_MESSAGE: &str = "PostStartHook failed";
pub const PRE_STOP_FAILED_MESSAGE: &str = "PreStopHook failed";

/// A CRI error as a Go client prints one (`rpc error: code = NotFound desc = …`), the
/// text upstream's messages carry.
pub fn rpc_error(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

/// A duration as Go prints one, to the millisecond: `830ms`, `1.627s`, `1m8.082s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        let digits = format!("{frac:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// Upper-cases the first letter (the planner's lowercase kill messages become
/// upstream's `Container x failed liveness probe, will be restarted`).
pub fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The engine's side of the seam: the recorder (None: nothing is recorded) and the pod
/// of every container being probed, by container id, for `Unhealthy`.
#[derive(Default)]
pub(crate) struct Emitter {
    recorder: RwLock<Option<Arc<dyn Recorder>>>,
    probed: Mutex<HashMap<String, PodRef>>,
}

impl Emitter {
    pub(crate) fn set(&self, recorder: Arc<dyn Recorder>) {
        *self.recorder.write().unwrap_or_else(|p| p.into_inner()) = Some(recorder);
    }

    fn recorder(&self) -> Option<Arc<dyn Recorder>> {
        self.recorder
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An event about the pod itself.
    pub(crate) fn pod(&self, pod: &Pod, kind: EventType, reason: &str, message: String) {
        if let (Some(r), Some(object)) = (self.recorder(), PodRef::of(pod)) {
            r.event(&object, kind, reason, message);
        }
    }

    /// An event about one of the pod's containers.
    pub(crate) fn container(
        &self,
        pod: &Pod,
        container: &str,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        if let (Some(r), Some(object)) = (self.recorder(), PodRef::container(pod, container)) {
            r.event(&object, kind, reason, message);
        }
    }

    /// The containers of `pod` now probed: `(name, container id)`.
    pub(crate) fn probing(&self, pod: &Pod, running: &[(String, String)]) {
        let Some(base) = PodRef::of(pod) else {
            return;
        };
        let mut probed = self.probed.lock().unwrap_or_else(|p| p.into_inner());
        probed.retain(|_, r| r.uid != base.uid);
        for (name, id) in running {
            let mut r = base.clone();
            r.field_path = field_path(pod, name);
            probed.insert(id.clone(), r);
        }
    }

    /// The pod is gone: none of its containers is probed any more.
    pub(crate) fn forget(&self, pod_uid: &str) {
        self.probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, r| r.uid != pod_uid);
    }

    fn probe_failed(&self, container_id: &str, kind: Kind, output: &str) {
        let Some(r) = self.recorder() else {
            return;
        };
        let object = self
            .probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container_id)
            .cloned();
        if let Some(object) = object {
            r.event(
                &object,
                EventType::Warning,
                UNHEALTHY,
                probe_failed(kind, output),
            );
        }
    }
}

/// The probe runner with events: every failed probe run is an `Unhealthy` event, as
/// upstream's prober records (the thresholds decide what is done about it; the events
/// show each failure, aggregated by the recorder).
pub(crate) struct ProbeEvents {
    pub(crate) runner: CriRunner,
    pub(crate) events: Arc<Emitter>,
}

impl Runner for ProbeEvents {
    async fn run(&self, s: &Subject, kind: Kind, probe: &Probe, timeout: Duration) -> Outcome {
        let outcome = self.runner.run(s, kind, probe, timeout).await;
        if let Outcome::Failure(output) = &outcome {
            self.events.probe_failed(&s.container_id, kind, output);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every event it is given.
    #[derive(Default)]
    struct Recording(Mutex<Vec<(PodRef, EventType, String, String)>>);

    impl Recorder for Recording {
        fn event(&self, object: &PodRef, kind: EventType, reason: &str, message: String) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push((
                object.clone(),
                kind,
                reason.into(),
                message,
            ));
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {
                "initContainers": [{"name": "setup", "image": "i"}],
                "containers": [{"name": "app", "image": "i"}]
            }
        }))
        .expect("pod")
    }

    #[test]
    fn container_events_name_their_field_path() {
        let p = pod();
        let cases = [
            ("app", Some("spec.containers{app}")),
            ("setup", Some("spec.initContainers{setup}")),
            ("nope", None),
        ];
        for (name, want) in cases {
            let r = PodRef::container(&p, name).expect("ref");
            assert_eq!(r.field_path.as_deref(), want, "{name}");
            assert_eq!((r.namespace.as_str(), r.uid.as_str()), ("shop", "u1"));
        }
        assert_eq!(
            PodRef::of(&p).map(|r| r.display()).as_deref(),
            Some("web_shop(u1)")
        );
        // A pod restored from runtime labels has nothing to point at.
        assert_eq!(PodRef::of(&Pod::default()), None);
    }

    #[test]
    fn messages_read_as_upstream() {
        let img = "docker.io/library/busybox:latest";
        let r = PodRef::of(&pod()).expect("ref");
        let cases = [
            (
                already_present(img),
                "Container image \"docker.io/library/busybox:latest\" already present on machine",
            ),
            (
                pulled(img, Duration::from_millis(1627), 4_269_694),
                "Successfully pulled image \"docker.io/library/busybox:latest\" in 1.627s (1.627s including waiting). Image size: 4269694 bytes.",
            ),
            (
                never_pull("nope:1"),
                "Container image \"nope:1\" is not present with pull policy of Never",
            ),
            (created("app"), "Created container: app"),
            (started("app"), "Started container app"),
            (stopping("app"), "Stopping container app"),
            (
                crash_back_off("app", &r),
                "Back-off restarting failed container app in pod web_shop(u1)",
            ),
            (
                probe_failed(Kind::Liveness, "boom"),
                "Liveness probe failed: boom",
            ),
            (error("ErrImagePull"), "Error: ErrImagePull"),
            (
                sentence("container app failed liveness probe, will be restarted"),
                "Container app failed liveness probe, will be restarted",
            ),
            (
                rpc_error(&tonic::Status::not_found("no such image")),
                "rpc error: code = NotFound desc = no such image",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn durations_print_as_go_does() {
        let cases = [
            (0, "0s"),
            (313, "313ms"),
            (1000, "1s"),
            (1627, "1.627s"),
            (1500, "1.5s"),
            (68_082, "1m8.082s"),
            (120_000, "2m0s"),
            (3_723_400, "1h2m3.4s"),
        ];
        for (ms, want) in cases {
            assert_eq!(go_duration(Duration::from_millis(ms)), want, "{ms}");
        }
    }

    #[test]
    fn nothing_is_recorded_without_a_recorder_and_probes_name_their_container() {
        let e = Emitter::default();
        let p = pod();
        // No recorder: nothing happens (and nothing panics).
        e.pod(&p, EventType::Normal, SANDBOX_CHANGED, "x".into());
        let rec = Arc::new(Recording::default());
        e.set(rec.clone());
        e.container(&p, "app", EventType::Normal, STARTED, started("app"));
        e.probing(&p, &[("app".into(), "c1".into())]);
        e.probe_failed("c1", Kind::Readiness, "no answer");
        // A container no longer probed, or of a pod forgotten: no event.
        e.probe_failed("c2", Kind::Readiness, "no answer");
        e.forget("u1");
        e.probe_failed("c1", Kind::Readiness, "no answer");
        let got = rec.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reasons: Vec<(&str, &str, Option<&str>)> = got
            .iter()
            .map(|(r, _, reason, m)| (reason.as_str(), m.as_str(), r.field_path.as_deref()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    STARTED,
                    "Started container app",
                    Some("spec.containers{app}")
                ),
                (
                    UNHEALTHY,
                    "Readiness probe failed: no answer",
                    Some("spec.containers{app}")
                ),
            ]
        );
        assert_eq!(got[1].1, EventType::Warning);
    }
}
