//! The engine: one worker per pod UID carrying plans out through a CRI runtime.
//!
//! - Desired pods arrive through [`Engine::set_pods`] (any source); each UID's worker is
//!   fed by a `watch` channel, so the newest desired state wins and pods never wait on
//!   each other.
//! - A worker syncs when its desired pod changes, when the runtime reports an event for
//!   one of its containers (`GetContainerEvents`), when a probe result changes, or when a
//!   backoff expires — never on a polling timer. If the event stream breaks, every worker
//!   relists once and the stream is reopened.
//! - A sync observes the runtime, asks the pure planner what to do, does it, and
//!   computes the pod's status from what the runtime then reports.
//! - Pods from the API server get the objects they reference (config maps, secrets,
//!   tokens, services, pull secrets) through [`Objects`], given by
//!   [`Engine::set_objects`]. The volumes of those objects are refreshed while the pod
//!   runs: when the implementation reports a change of a referenced object, and every
//!   [`REFRESH`] (tokens are renewed at 80 % of their life).
//! - In a cluster, what the engine does and sees happen is reported as Kubernetes events
//!   through [`Recorder`], given by [`Engine::set_events`]: image pulls, containers
//!   created, started and killed, crash-loop and pull back-offs, failed probes, mounts,
//!   sandboxes and hooks, with upstream's reasons (see `events`). Events mark
//!   transitions and actions, never a sync as such.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use proto::v1;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::backoff::BackoffPolicy;
use crate::cgroups::PodCgroups;
use crate::cri::Cri;
use crate::events::{self as ev, Emitter, EventType, ProbeEvents, Recorder};
use crate::objects::{self, ObjectRef, Objects, PodObjects, TokenCache};
use crate::probe::{CriRunner, Kind, ProbeUpdate, Prober};
use crate::translate::{self, ContainerKind, NodeInfo};
use crate::{LABEL_CONTAINER_NAME, Observed, handlers, plan, status, termination, volumes};

/// What the engine needs to know about the node and where it keeps files.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: NodeInfo,
    /// Per-pod directories (`<root>/pods/<uid>/volumes`).
    pub root_dir: PathBuf,
    /// Container logs (`<log_root>/<ns>_<name>_<uid>/<container>/<n>.log`).
    pub log_root: PathBuf,
    /// Prefix of container ids in the status (`containerd://…`).
    pub runtime_name: String,
    /// The pod cgroups the engine creates and removes (`None`: `--cgroups-per-qos=false`,
    /// the runtime alone makes cgroups).
    pub cgroups: Option<PodCgroups>,
}

/// A pod as the engine last saw it, with its computed status.
pub type PodViews = BTreeMap<String, Pod>;

#[derive(Default)]
struct ProbeState {
    ready: HashSet<String>,
    started: HashSet<String>,
    liveness_failed: HashSet<String>,
    startup_failed: HashSet<String>,
}

struct Worker {
    desired: watch::Sender<Option<Pod>>,
    wake: Arc<Notify>,
    /// `<name>_<namespace>`: one static pod instance per full name runs at a time.
    full_name: String,
    /// When the worker was made, for the order among instances of one full name.
    seq: u64,
}

/// A pod not from the API server (a static pod), by its source annotation as upstream.
fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::ANNOTATION_CONFIG_SOURCE))
        .is_some_and(|s| s != "api")
}

fn full_name(name: &str, namespace: &str) -> String {
    format!("{name}_{namespace}")
}

fn pod_full_name(pod: &Pod) -> String {
    full_name(
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    )
}

struct Inner {
    cri: Cri,
    cfg: EngineConfig,
    workers: Mutex<HashMap<String, Worker>>,
    next_seq: std::sync::atomic::AtomicU64,
    views: watch::Sender<PodViews>,
    /// UIDs of pods whose termination finished (containers stopped, sandboxes and
    /// volumes gone): a deleted API pod may go from the API server then.
    terminated: broadcast::Sender<String>,
    probes: Mutex<HashMap<String, ProbeState>>,
    prober: Mutex<Prober<ProbeEvents>>,
    /// The API objects pods may reference; None standalone.
    objects: std::sync::RwLock<Option<Arc<dyn Objects>>>,
    /// Projected service account tokens of the pods.
    tokens: TokenCache,
    /// Where Kubernetes events go (nowhere standalone).
    events: Arc<Emitter>,
}

/// The pod lifecycle engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts the engine's background tasks (runtime events, probe results).
    pub fn start(cri: Cri, cfg: EngineConfig) -> Self {
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let emitter = Arc::new(Emitter::default());
        let runner = ProbeEvents {
            runner: CriRunner { cri: cri.clone() },
            events: Arc::clone(&emitter),
        };
        let inner = Arc::new(Inner {
            prober: Mutex::new(Prober::with_runner(runner, probe_tx)),
            cri,
            cfg,
            workers: Mutex::default(),
            next_seq: Default::default(),
            views: watch::channel(PodViews::new()).0,
            terminated: broadcast::channel(1024).0,
            probes: Mutex::default(),
            objects: std::sync::RwLock::new(None),
            tokens: TokenCache::default(),
            events: emitter,
        });
        tokio::spawn(events(Arc::clone(&inner)));
        tokio::spawn(probe_results(Arc::clone(&inner), probe_rx));
        Self { inner }
    }

    /// The whole desired set from a source: new pods get a worker, changed ones are
    /// handed to theirs, and pods no longer desired are terminated.
    pub fn set_pods(&self, desired: &BTreeMap<String, Pod>) {
        let mut workers = lock(&self.inner.workers);
        for (uid, pod) in desired {
            match workers.get(uid) {
                Some(w) => {
                    w.desired.send_if_modified(|cur| {
                        if cur.as_ref() == Some(pod) {
                            false
                        } else {
                            *cur = Some(pod.clone());
                            true
                        }
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let wake = Arc::new(Notify::new());
                    tokio::spawn(worker(
                        Arc::clone(&self.inner),
                        uid.clone(),
                        rx,
                        wake.clone(),
                    ));
                    let worker = self.inner.new_worker(tx, wake, pod_full_name(pod));
                    workers.insert(uid.clone(), worker);
                }
            }
        }
        for (uid, w) in workers.iter() {
            if !desired.contains_key(uid) {
                w.desired.send_if_modified(|cur| cur.take().is_some());
            }
        }
        // Before any new pod's cgroup is made: the Burstable tier sized for its pods.
        if let Some(cg) = &self.inner.cfg.cgroups
            && let Err(e) = cg.set_burstable_shares(desired.values())
        {
            tracing::warn!(err = %e, "sizing the Burstable QoS cgroup");
        }
    }

    /// Adopts pods the runtime still runs from an earlier life of the agent: those not
    /// in `desired` are terminated by a worker of their own.
    pub async fn adopt_orphans(&self, desired: &BTreeMap<String, Pod>) -> crate::cri::Result<()> {
        let running = self.inner.cri.observe_all().await?;
        // Pod cgroups of pods neither desired nor in the runtime any more (the others
        // go with their pod's termination).
        if let Some(cg) = self.inner.cfg.cgroups.clone() {
            let stale: Vec<String> = cg
                .pod_uids()
                .into_iter()
                .filter(|u| !desired.contains_key(u) && !running.contains_key(u))
                .collect();
            for uid in stale {
                let cg = cg.clone();
                let removed = tokio::task::spawn_blocking(move || cg.remove_pod(&uid)).await;
                if let Ok(Err(e)) = removed {
                    tracing::warn!(err = %e, "removing the cgroup of a pod that is gone");
                }
            }
        }
        let mut workers = lock(&self.inner.workers);
        for uid in running.keys() {
            if desired.contains_key(uid) || workers.contains_key(uid) {
                continue;
            }
            tracing::info!(pod.uid = %uid, "terminating a pod that is no longer desired");
            let (tx, rx) = watch::channel(None);
            let wake = Arc::new(Notify::new());
            tokio::spawn(worker(
                Arc::clone(&self.inner),
                uid.clone(),
                rx,
                wake.clone(),
            ));
            // Its name from the runtime's labels: a new instance of the same static pod
            // waits for this one to be gone.
            let labels = running[uid].sandboxes.first().map(|s| &s.labels);
            let label = |k: &str| labels.and_then(|l| l.get(k)).cloned().unwrap_or_default();
            let name = full_name(
                &label(crate::LABEL_POD_NAME),
                &label(crate::LABEL_POD_NAMESPACE),
            );
            let worker = self.inner.new_worker(tx, wake, name);
            workers.insert(uid.clone(), worker);
        }
        Ok(())
    }

    /// Gives the engine the API objects pods from the API server reference (in a
    /// cluster: config maps, secrets, service account tokens, services, pull secrets).
    /// Without it (standalone) a pod referencing one does not start. Give it before the
    /// API server's pods; changes it reports refresh the volumes of the pods
    /// referencing the changed object.
    pub fn set_objects(&self, objects: Arc<dyn Objects>) {
        if let Some(rx) = objects.changes() {
            tokio::spawn(object_changes(Arc::clone(&self.inner), rx));
        }
        *self
            .inner
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(objects);
    }

    /// Gives the engine where to report Kubernetes events about its pods (in a cluster:
    /// the API server). Without it (standalone) nothing is recorded.
    pub fn set_events(&self, recorder: Arc<dyn Recorder>) {
        self.inner.events.set(recorder);
    }

    /// The pods and their statuses, updated after every sync.
    pub fn views(&self) -> watch::Receiver<PodViews> {
        self.inner.views.subscribe()
    }

    /// The UIDs of pods as their termination finishes: a pod with a deletion timestamp
    /// (its final status already in [`Engine::views`]), or one no longer desired.
    pub fn terminated(&self) -> broadcast::Receiver<String> {
        self.inner.terminated.subscribe()
    }
}

impl Inner {
    fn new_worker(
        &self,
        desired: watch::Sender<Option<Pod>>,
        wake: Arc<Notify>,
        full_name: String,
    ) -> Worker {
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Worker {
            desired,
            wake,
            full_name,
            seq,
        }
    }

    fn objects(&self) -> Option<Arc<dyn Objects>> {
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The API objects the pod's volumes project, fetched now (nothing for a pod
    /// without such volumes, or without an API server).
    async fn volume_objects(&self, pod: &Pod) -> PodObjects {
        match self.objects() {
            Some(o) if objects::has_api_volumes(pod) => {
                objects::fetch_volume_objects(&*o, &self.tokens, pod, SystemTime::now()).await
            }
            _ => PodObjects::default(),
        }
    }

    /// Whether a pod may be synced: a static pod waits while an earlier instance of its
    /// full name is still known (running, or being terminated), as upstream's pod
    /// workers do, so a replaced manifest's pod starts once the old one is gone (host
    /// ports, host network, hostPath state are then free).
    fn may_start(&self, uid: &str, pod: &Pod) -> bool {
        if !is_static(pod) {
            return true;
        }
        let workers = lock(&self.workers);
        let Some(me) = workers.get(uid) else {
            return true;
        };
        !workers
            .iter()
            .any(|(other, w)| other != uid && w.full_name == me.full_name && w.seq < me.seq)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runtime events → the worker of the pod they concern.
async fn events(inner: Arc<Inner>) {
    let mut retry = Duration::from_millis(200);
    loop {
        let mut rt = inner.cri.runtime.clone();
        match rt.get_container_events(v1::GetEventsRequest {}).await {
            Ok(stream) => {
                // Whatever happened while the stream was down is picked up by a relist.
                wake_all(&inner);
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            // Only a stream that delivers counts as working: one that
                            // opens and closes at once keeps backing off, so it does not
                            // cause a relist of every pod several times a second.
                            retry = Duration::from_millis(200);
                            let uid = ev
                                .pod_sandbox_status
                                .as_ref()
                                .and_then(|s| s.labels.get(crate::LABEL_POD_UID))
                                .cloned()
                                .unwrap_or_default();
                            if let Some(w) = lock(&inner.workers).get(&uid) {
                                w.wake.notify_one();
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("container event stream ended; relisting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(err = %e, "container event stream broke; relisting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(err = %e, retry_in = ?retry, "cannot open the container event stream");
                // No events: relisting is all there is until the stream is back.
                wake_all(&inner);
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(10));
    }
}

fn wake_all(inner: &Inner) {
    for w in lock(&inner.workers).values() {
        w.wake.notify_one();
    }
}

/// Changes of referenced objects → a sync (which refreshes the volumes) of each pod
/// referencing the changed object; a lagging receiver wakes every pod.
async fn object_changes(inner: Arc<Inner>, mut rx: broadcast::Receiver<ObjectRef>) {
    loop {
        match rx.recv().await {
            Ok(changed) => {
                for w in lock(&inner.workers).values() {
                    let refers = w
                        .desired
                        .borrow()
                        .as_ref()
                        .is_some_and(|p| objects::references(p).contains(&changed));
                    if refers {
                        tracing::debug!(object = %changed, "a referenced object changed");
                        w.wake.notify_one();
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => wake_all(&inner),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Probe results → the probe state of the pod, and a sync of its worker.
async fn probe_results(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<ProbeUpdate>) {
    while let Some(u) = rx.recv().await {
        // A result still in flight when its pod went away is dropped, not kept forever.
        if !lock(&inner.workers).contains_key(&u.pod_uid) {
            continue;
        }
        {
            let mut probes = lock(&inner.probes);
            let st = probes.entry(u.pod_uid.clone()).or_default();
            let set = match u.kind {
                Kind::Readiness => &mut st.ready,
                Kind::Startup => &mut st.started,
                Kind::Liveness => &mut st.liveness_failed,
            };
            // Readiness and startup sets hold successes, liveness holds failures.
            let member = match u.kind {
                Kind::Liveness => !u.result,
                _ => u.result,
            };
            if member {
                set.insert(u.container_id.clone());
            } else {
                set.remove(&u.container_id);
            }
            if matches!(u.kind, Kind::Startup) && !u.result {
                st.startup_failed.insert(u.container_id.clone());
            }
            tracing::info!(pod.uid = %u.pod_uid, container = %u.container_name, kind = ?u.kind, success = u.result, "probe result changed");
        }
        if let Some(w) = lock(&inner.workers).get(&u.pod_uid) {
            w.wake.notify_one();
        }
    }
}

/// Per-pod memory of a worker between syncs.
#[derive(Default)]
struct PodMemory {
    backoff: HashMap<String, crate::Backoff>,
    /// Why a container is not running: ErrImagePull, ImagePullBackOff, CrashLoopBackOff…
    waiting: HashMap<String, (String, String)>,
    image_backoff: HashMap<String, crate::Backoff>,
    status: Option<PodStatus>,
    post_start_done: HashSet<String>,
    /// While a volume cannot be set up: when to try again (doubling).
    mount_retry: Option<Duration>,
    /// The volumes as last set up: a container restarting while an object it projects
    /// is gone (or the API server is away) starts with the files it had, as upstream.
    prepared: Option<volumes::PreparedVolumes>,
    /// The end of the crash-loop back-off last reported (`BackOff`) per container: one
    /// event per back-off, not one per sync during it.
    back_off_reported: HashMap<String, SystemTime>,
    /// The sandbox whose replacement was last reported (`SandboxChanged`).
    sandbox_change_reported: Option<String>,
}

/// How often the volumes of API objects are rewritten from the API server's (current)
/// objects while the pod runs, besides on reported changes: a changed config map or
/// secret shows within this (plus the implementation's cache), a token is renewed.
pub const REFRESH: Duration = Duration::from_secs(45);

/// The first and the longest wait before setting up a failed volume again.
const MOUNT_RETRY_MIN: Duration = Duration::from_secs(1);
const MOUNT_RETRY_MAX: Duration = Duration::from_secs(32);

/// The waiting reason of containers whose pod's volumes are not set up (upstream's).
const REASON_CONTAINER_CREATING: &str = "ContainerCreating";

/// Sets up the pod's volumes with the API objects they project. A volume whose content
/// cannot be had (FailedMount: an object or key missing, the API failing) leaves the
/// volumes as they were set up before, if they were; else every container waits with
/// the reason, and None: try again after `mem.mount_retry`.
async fn prepare_volumes(
    inner: &Inner,
    uid: &str,
    pod: &Pod,
    mem: &mut PodMemory,
) -> Result<Option<volumes::PreparedVolumes>, SyncError> {
    let objs = inner.volume_objects(pod).await;
    let prepared = volumes::prepare_with(pod, &pod_dir(inner, uid), &inner.cfg.node, &objs);
    if let Err(e) = &prepared {
        let (kind, reason) = (EventType::Warning, ev::FAILED_MOUNT);
        inner.events.pod(pod, kind, reason, e.to_string());
    }
    match prepared {
        Ok(v) => {
            mem.mount_retry = None;
            mem.waiting
                .retain(|_, (reason, _)| reason != REASON_CONTAINER_CREATING);
            mem.prepared = Some(v.clone());
            Ok(Some(v))
        }
        Err(e @ volumes::Error::SetUp { .. }) if mem.prepared.is_some() => {
            tracing::warn!(pod = %pod_name(pod), pod.uid = %uid, err = %e, "volumes not refreshed; their files stay as they are");
            Ok(mem.prepared.clone())
        }
        Err(e @ volumes::Error::SetUp { .. }) => {
            let message = e.to_string();
            tracing::warn!(pod = %pod_name(pod), pod.uid = %uid, %message, "volumes not set up");
            for (_, c) in translate::containers(pod) {
                mem.waiting.insert(
                    c.name.clone(),
                    (REASON_CONTAINER_CREATING.to_string(), message.clone()),
                );
            }
            let next = mem
                .mount_retry
                .map_or(MOUNT_RETRY_MIN, |d| (d * 2).min(MOUNT_RETRY_MAX));
            mem.mount_retry = Some(next);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Rewrites the volumes of a running pod from the current objects (a changed config map
/// or secret, a renewed token). A failure leaves the files as they are.
async fn refresh_volumes(inner: &Inner, uid: &str, pod: &Pod) {
    let objs = inner.volume_objects(pod).await;
    if let Err(e) = volumes::prepare_with(pod, &pod_dir(inner, uid), &inner.cfg.node, &objs) {
        tracing::warn!(pod = %pod_name(pod), pod.uid = %uid, err = %e, "refreshing volumes; their files stay as they are");
        let (kind, reason) = (EventType::Warning, ev::FAILED_MOUNT);
        inner.events.pod(pod, kind, reason, e.to_string());
    }
}

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

async fn worker(
    inner: Arc<Inner>,
    uid: String,
    mut desired: watch::Receiver<Option<Pod>>,
    wake: Arc<Notify>,
) {
    let mut mem = PodMemory::default();
    // The pod last desired: its preStop hooks and grace period still apply when it is
    // no longer desired.
    let mut last: Option<Pod> = None;
    // Failed syncs are retried after 1 s, doubling to 1 min while they keep failing.
    let mut retry = RETRY_MIN;
    loop {
        let pod = desired.borrow_and_update().clone();
        if pod.is_some() {
            last.clone_from(&pod);
        }
        // Set when the desired pod changed while a sync ran: sync again at once.
        let mut updated = false;
        let requeue = match &pod {
            Some(pod) if !inner.may_start(&uid, pod) => {
                tracing::info!(pod = %pod_name(pod), pod.uid = %uid, "waiting for the previous instance of this static pod to terminate");
                publish(&inner, &uid, pod, &mut mem, &Observed::default(), false);
                None
            }
            Some(pod) => {
                // A sync in flight (an image pull, a long postStart hook) is given up
                // when the pod is removed or deleted meanwhile, as upstream's pod
                // workers cancel it: termination does not wait for it.
                let stop = async {
                    loop {
                        if desired.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        updated = true;
                        let next = desired.borrow();
                        if next
                            .as_ref()
                            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                        {
                            return;
                        }
                    }
                };
                let outcome = tokio::select! {
                    r = sync(&inner, &uid, pod, &mut mem) => Some(r),
                    () = stop => None,
                };
                match outcome {
                    None => {
                        tracing::info!(pod.uid = %uid, "pod sync given up: the pod is being removed");
                        continue;
                    }
                    Some(Ok(r)) => {
                        retry = RETRY_MIN;
                        r
                    }
                    Some(Err(e)) => {
                        tracing::warn!(pod.uid = %uid, err = %e, ?retry, "pod sync failed; retrying");
                        let r = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        Some(r)
                    }
                }
            }
            None => match terminate(&inner, &uid, last.as_ref(), &mut mem).await {
                Ok(()) => {
                    {
                        let mut workers = lock(&inner.workers);
                        // Desired again while it was being terminated: run it again.
                        if desired.has_changed().unwrap_or(false) {
                            continue;
                        }
                        // Instances of the same static pod waiting for this one go on.
                        if let Some(gone) = workers.remove(&uid) {
                            for w in workers.values().filter(|w| w.full_name == gone.full_name) {
                                w.wake.notify_one();
                            }
                        }
                    }
                    lock(&inner.prober).forget_pod(&uid);
                    inner.events.forget(&uid);
                    lock(&inner.probes).remove(&uid);
                    inner.views.send_modify(|v| {
                        v.remove(&uid);
                    });
                    let _ = inner.terminated.send(uid.clone());
                    tracing::info!(pod.uid = %uid, "pod terminated and removed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(pod.uid = %uid, err = %e, ?retry, "pod termination failed; retrying");
                    let r = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    Some(r)
                }
            },
        };
        if updated {
            continue;
        }
        let timer = async {
            match requeue {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = wake.notified() => {}
            _ = timer => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Cri(#[from] crate::cri::Error),
    #[error("{rpc} for pod {pod}: {status}")]
    Rpc {
        rpc: &'static str,
        pod: String,
        #[source]
        status: tonic::Status,
    },
    #[error(transparent)]
    Translate(#[from] translate::Error),
    #[error(transparent)]
    Cgroups(#[from] crate::cgroups::Error),
    #[error(transparent)]
    Volumes(#[from] volumes::Error),
}

fn rpc(rpc: &'static str, pod: &str) -> impl FnOnce(tonic::Status) -> SyncError {
    let pod = pod.to_string();
    move |status| SyncError::Rpc { rpc, pod, status }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// One sync of one pod; returns when to sync again if nothing else happens. A sync
/// that created the sandbox goes on at once with the containers, as one sync.
async fn sync(
    inner: &Inner,
    uid: &str,
    pod: &Pod,
    mem: &mut PodMemory,
) -> Result<Option<Duration>, SyncError> {
    for _ in 0..2 {
        if let Step::Done(requeue) = sync_once(inner, uid, pod, mem).await? {
            return Ok(requeue);
        }
    }
    Ok(Some(Duration::ZERO))
}

enum Step {
    /// Observe and plan again right away (the sandbox was just created).
    Again,
    /// Sync again after this long, or on the next event.
    Done(Option<Duration>),
}

async fn sync_once(
    inner: &Inner,
    uid: &str,
    pod: &Pod,
    mem: &mut PodMemory,
) -> Result<Step, SyncError> {
    let name = pod_name(pod);
    if pod.metadata.deletion_timestamp.is_some() {
        terminate(inner, uid, Some(pod), mem).await?;
        let _ = inner.terminated.send(uid.to_string());
        return Ok(Step::Done(None));
    }
    let observed = inner.cri.observe(uid).await?;
    // A static pod runs without the API server: one naming an API object does not run
    // (upstream refuses its manifest); its status says why.
    if is_static(pod)
        && let Some(reference) = objects::static_pod_reference(pod)
    {
        let message = reference.to_string();
        for (_, c) in translate::containers(pod) {
            mem.waiting.insert(
                c.name.clone(),
                ("CreateContainerConfigError".to_string(), message.clone()),
            );
        }
        if mem.status.is_none() {
            tracing::warn!(pod = %name, %message, "static pod not run");
        }
        publish(inner, uid, pod, mem, &observed, false);
        return Ok(Step::Done(None));
    }
    let api_objects = inner.objects().filter(|_| !is_static(pod));
    if let Some(o) = &api_objects {
        o.track(uid, &objects::references(pod));
    }
    BackoffPolicy::default().record_exits(&mut mem.backoff, &observed);
    let (liveness_failed, startup_failed) = {
        let probes = lock(&inner.probes);
        let st = probes.get(uid);
        (
            st.map(|s| s.liveness_failed.clone()).unwrap_or_default(),
            st.map(|s| s.startup_failed.clone()).unwrap_or_default(),
        )
    };
    let (_, started) = effective_probe_sets(inner, uid, pod, &observed);
    let hash_of = |c: &Container| translate::container_hash(c);
    let now = SystemTime::now();
    let plan = plan::compute(&plan::Input {
        pod,
        observed: &observed,
        hash_of: &hash_of,
        backoff: &mem.backoff,
        liveness_failed: &liveness_failed,
        startup_failed: &startup_failed,
        started: &started,
        now,
    });
    tracing::debug!(pod = %name, ?plan, "plan");
    let mut changed = false;
    // When to sync again for a container that could not start (nothing else would
    // wake the worker for it): its image backoff, or a short retry.
    let mut retry_start: Option<Duration> = None;

    for w in &plan.waiting {
        mem.waiting
            .insert(w.name.clone(), (w.reason.clone(), w.message.clone()));
        // One BackOff per back-off period (a new crash), not per sync during it.
        if w.reason == plan::REASON_CRASH_LOOP_BACK_OFF
            && mem.back_off_reported.insert(w.name.clone(), w.until) != Some(w.until)
            && let Some(object) = ev::PodRef::of(pod)
        {
            let message = ev::crash_back_off(&w.name, &object);
            let kind = EventType::Warning;
            inner
                .events
                .container(pod, &w.name, kind, ev::BACK_OFF, message);
        }
    }
    // What is known before acting is published first: an image pull, a hook or a
    // failing sandbox can take long, and the pod is not left without a status meanwhile.
    publish(inner, uid, pod, mem, &observed, false);
    // A sandbox to be replaced: said once per sandbox replaced (upstream says it on
    // every attempt; a mount or sandbox failure retrying is told by its own event).
    if plan.create_sandbox.is_some()
        && let Some(old) = observed.sandboxes.first()
        && mem.sandbox_change_reported.as_ref() != Some(&old.id)
    {
        mem.sandbox_change_reported = Some(old.id.clone());
        let message = ev::SANDBOX_CHANGED_MESSAGE.to_string();
        let kind = EventType::Normal;
        inner.events.pod(pod, kind, ev::SANDBOX_CHANGED, message);
    }
    if plan.kill_pod {
        let reasons: HashMap<&str, plan::KillReason> = plan
            .kill
            .iter()
            .map(|k| (k.container_id.as_str(), k.reason))
            .collect();
        kill_pod(inner, pod, &observed, &reasons).await?;
        changed = true;
    }
    if let Some(attempt) = plan.create_sandbox {
        // Volumes exist before any container of the new sandbox needs them.
        if prepare_volumes(inner, uid, pod, mem).await?.is_none() {
            publish(inner, uid, pod, mem, &observed, false);
            return Ok(Step::Done(mem.mount_retry));
        }
        let config = translate::sandbox_config(pod, &inner.cfg.node, attempt, &inner.cfg.log_root)
            .inspect_err(|e| {
                let message = ev::sandbox_failed(&e.to_string());
                let kind = EventType::Warning;
                inner
                    .events
                    .pod(pod, kind, ev::FAILED_CREATE_POD_SANDBOX, message);
            })?;
        // The pod's cgroup, with the pod's limits, is the sandbox's parent.
        if let Some(cg) = &inner.cfg.cgroups {
            cg.ensure_pod(pod, &inner.cfg.node)?;
        }
        let handler = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
            .unwrap_or_default();
        tracing::info!(pod = %name, attempt, "creating pod sandbox");
        inner
            .cri
            .runtime
            .clone()
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler,
            })
            .await
            .inspect_err(|e| {
                let message = ev::sandbox_failed(&ev::rpc_error(e));
                let kind = EventType::Warning;
                inner
                    .events
                    .pod(pod, kind, ev::FAILED_CREATE_POD_SANDBOX, message);
            })
            .map_err(rpc("RunPodSandbox", &name))?;
        // The new sandbox's status (IP) drives what follows.
        return Ok(Step::Again);
    }
    // kill_pod has killed every container of the plan already.
    for k in plan.kill.iter().filter(|_| !plan.kill_pod) {
        tracing::info!(pod = %name, container = %k.name, reason = ?k.reason, "killing container");
        let pod_ip = handler_ip(inner, pod, &observed);
        let message = ev::sentence(&k.message);
        let cause = KillCause {
            reason: Some(k.reason),
            message: Some(&message),
        };
        kill_container(inner, pod, &pod_ip, &k.container_id, &k.name, cause, None).await?;
        changed = true;
    }
    let sandbox_ready = observed
        .sandboxes
        .iter()
        .any(|s| s.state == v1::PodSandboxState::SandboxReady as i32);
    let mut volumes_written = false;
    if !plan.start.is_empty() {
        let sandbox = observed
            .sandboxes
            .iter()
            .find(|s| s.state == v1::PodSandboxState::SandboxReady as i32)
            .cloned();
        let vols = match &sandbox {
            Some(_) => prepare_volumes(inner, uid, pod, mem).await?,
            None => None,
        };
        volumes_written = vols.is_some();
        if sandbox.is_some() && vols.is_none() {
            retry_start = mem.mount_retry;
        }
        if let (Some(sandbox), Some(vols)) = (sandbox, vols) {
            let pod_ip = sandbox
                .network
                .as_ref()
                .map(|n| n.ip.clone())
                .unwrap_or_default();
            for s in &plan.start {
                match start_container(inner, pod, &sandbox, &vols, s, &pod_ip, mem).await {
                    Ok(()) => {
                        mem.waiting.remove(&s.name);
                        changed = true;
                    }
                    Err(reason) => {
                        tracing::warn!(pod = %name, container = %s.name, reason = %reason.0, message = %reason.1, "container not started");
                        start_failed(inner, pod, &s.name, &reason);
                        let after = start_retry(pod, &s.name, &reason.0, mem);
                        retry_start = Some(retry_start.map_or(after, |r| r.min(after)));
                        mem.waiting.insert(s.name.clone(), reason);
                        // Init containers run one at a time: stop at the first failure.
                        if !matches!(s.kind, ContainerKind::Regular) {
                            break;
                        }
                    }
                }
            }
        }
    }
    let observed = if changed {
        inner.cri.observe(uid).await?
    } else {
        observed
    };
    // Probes follow the running containers.
    let running: Vec<(String, String, SystemTime)> = observed
        .containers
        .iter()
        .filter(|c| c.state == v1::ContainerState::ContainerRunning as i32)
        .map(|c| {
            (
                c.labels
                    .get(LABEL_CONTAINER_NAME)
                    .cloned()
                    .unwrap_or_default(),
                c.id.clone(),
                SystemTime::UNIX_EPOCH + Duration::from_nanos(c.started_at.max(0) as u64),
            )
        })
        .collect();
    let pod_ip = handler_ip(inner, pod, &observed);
    let probed: Vec<(String, String)> = running
        .iter()
        .map(|(name, id, _)| (name.clone(), id.clone()))
        .collect();
    inner.events.probing(pod, &probed);
    lock(&inner.prober).sync_pod(pod, &running, &pod_ip);
    // The volumes of API objects follow their objects while the pod runs.
    let refresh = api_objects.is_some() && objects::has_api_volumes(pod) && sandbox_ready;
    if refresh && !volumes_written {
        refresh_volumes(inner, uid, pod).await;
    }
    publish(inner, uid, pod, mem, &observed, false);
    collect_dead(inner, &name, &observed).await;
    let requeue = [plan.requeue_after, retry_start, refresh.then_some(REFRESH)]
        .into_iter()
        .flatten()
        .min();
    Ok(Step::Done(requeue))
}

/// The `Failed` event of a container that could not be started, as upstream words it:
/// an image that is not there says its waiting reason (`Error: ErrImagePull`, the pull's
/// own events said why), other failures their message; a failed postStart hook has its
/// own event already.
fn start_failed(inner: &Inner, pod: &Pod, container: &str, (reason, message): &(String, String)) {
    let why = match reason.as_str() {
        "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" => reason,
        "PostStartHookError" => return,
        _ => message,
    };
    let kind = EventType::Warning;
    inner
        .events
        .container(pod, container, kind, ev::FAILED, ev::error(why));
}

/// How long until a container that failed to start is looked at again: when its image's
/// pull backoff ends, or after a short pause for other errors (config, create). Right
/// after a failed pull (ErrImagePull) a second later, to report ImagePullBackOff.
fn start_retry(pod: &Pod, name: &str, reason: &str, mem: &PodMemory) -> Duration {
    const OTHER_ERRORS: Duration = Duration::from_secs(10);
    const REPORT_BACKOFF: Duration = Duration::from_secs(1);
    let image = translate::containers(pod)
        .into_iter()
        .find(|(_, c)| c.name == name)
        .and_then(|(_, c)| c.image.clone())
        .unwrap_or_default();
    match mem.image_backoff.get(&image) {
        Some(b) => {
            let left = (b.last_finish + b.delay)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            if reason == "ErrImagePull" {
                left.min(REPORT_BACKOFF)
            } else {
                left
            }
        }
        None => OTHER_ERRORS,
    }
}

/// Removes what the status no longer needs, as the upstream kubelet's garbage
/// collector does: of each container name only the newest exited instance stays (its
/// exit is the status's last state, its log what `logs --previous` shows), and sandboxes
/// that are neither the newest nor ready go once they hold no containers.
async fn collect_dead(inner: &Inner, pod: &str, observed: &Observed) {
    let mut rt = inner.cri.runtime.clone();
    let mut seen = HashSet::new();
    // `observed.containers` is newest first.
    for c in &observed.containers {
        let name = c
            .labels
            .get(LABEL_CONTAINER_NAME)
            .map(String::as_str)
            .unwrap_or_default();
        let dead = c.state == v1::ContainerState::ContainerExited as i32;
        if !dead || seen.insert(name.to_string()) {
            continue;
        }
        tracing::debug!(%pod, container = %name, container.id = %c.id, "removing an old dead container");
        if let Err(e) = rt
            .remove_container(v1::RemoveContainerRequest {
                container_id: c.id.clone(),
            })
            .await
        {
            tracing::warn!(%pod, container.id = %c.id, err = %e, "removing an old dead container");
        } else if let Some(file) = termination::host_file(c)
            && Path::new(file).starts_with(&inner.cfg.root_dir)
        {
            let _ = std::fs::remove_file(file);
        }
    }
    for sb in observed.sandboxes.iter().skip(1) {
        if sb.state == v1::PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let left = rt
            .list_containers(v1::ListContainersRequest {
                filter: Some(v1::ContainerFilter {
                    pod_sandbox_id: sb.id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().containers.len());
        if !matches!(left, Ok(0)) {
            continue;
        }
        tracing::debug!(%pod, sandbox.id = %sb.id, "removing an old sandbox");
        if let Err(e) = rt
            .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await
        {
            tracing::warn!(%pod, sandbox.id = %sb.id, err = %e, "removing an old sandbox");
        }
    }
}

/// Ready and started container ids: a running container without a readiness (startup)
/// probe counts as ready (started); with one, as its probe last said.
fn effective_probe_sets(
    inner: &Inner,
    uid: &str,
    pod: &Pod,
    observed: &Observed,
) -> (HashSet<String>, HashSet<String>) {
    let probes = lock(&inner.probes);
    let st = probes.get(uid);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ready = HashSet::new();
    let mut started = HashSet::new();
    for c in &observed.containers {
        if c.state != v1::ContainerState::ContainerRunning as i32 {
            continue;
        }
        let name = c
            .labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .unwrap_or_default();
        let Some(spec_c) = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|x| x.name == name)
        else {
            continue;
        };
        let has_started =
            spec_c.startup_probe.is_none() || st.is_some_and(|s| s.started.contains(&c.id));
        if has_started {
            started.insert(c.id.clone());
        }
        if has_started
            && (spec_c.readiness_probe.is_none() || st.is_some_and(|s| s.ready.contains(&c.id)))
        {
            ready.insert(c.id.clone());
        }
    }
    (ready, started)
}

/// `<root>/pods/<uid>`: the pod's volumes and its containers' termination messages.
fn pod_root(inner: &Inner, uid: &str) -> PathBuf {
    inner.cfg.root_dir.join("pods").join(uid)
}

fn pod_dir(inner: &Inner, uid: &str) -> PathBuf {
    pod_root(inner, uid).join("volumes")
}

fn pod_uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The pod IP of the newest sandbox ("" before it has one, or on the host network).
/// The address probes and hooks dial: the pod's IP, which for a host-network pod is the
/// node's (its status.podIP, as upstream), not the loopback address.
fn handler_ip(inner: &Inner, pod: &Pod, observed: &Observed) -> String {
    let ip = sandbox_ip(observed);
    if ip.is_empty() && plan::host_network(pod) {
        return inner.cfg.node.host_ip.clone();
    }
    ip
}

fn sandbox_ip(observed: &Observed) -> String {
    observed
        .sandboxes
        .first()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}

/// Computes the status and publishes the pod with it (nothing is sent when it did not
/// change); logs phase transitions. `terminal`: the pod has been killed for good and
/// will not run again (upstream podIsTerminal).
fn publish(
    inner: &Inner,
    uid: &str,
    pod: &Pod,
    mem: &mut PodMemory,
    observed: &Observed,
    terminal: bool,
) {
    let (ready, started) = effective_probe_sets(inner, uid, pod, observed);
    let st = status::compute(&status::StatusInput {
        pod,
        observed,
        ready: &ready,
        started: &started,
        waiting: &mem.waiting,
        host_ip: &inner.cfg.node.host_ip,
        runtime_name: &inner.cfg.runtime_name,
        now: SystemTime::now(),
        previous: mem.status.as_ref(),
        terminal,
    });
    if mem.status.as_ref() == Some(&st) {
        return;
    }
    let before = mem.status.as_ref().and_then(|s| s.phase.clone());
    if before != st.phase {
        tracing::info!(pod = %pod_name(pod), from = ?before, to = ?st.phase, "pod phase");
    }
    mem.status = Some(st.clone());
    let mut view = pod.clone();
    view.status = Some(st);
    inner.views.send_modify(|v| {
        v.insert(uid.to_string(), view);
    });
}

/// Pulls the image as the pull policy says, creates and starts one container, runs its
/// postStart hook. Errors come back as the waiting reason and message.
async fn start_container(
    inner: &Inner,
    pod: &Pod,
    sandbox: &v1::PodSandboxStatus,
    vols: &volumes::PreparedVolumes,
    s: &plan::Start,
    pod_ip: &str,
    mem: &mut PodMemory,
) -> Result<(), (String, String)> {
    let spec = pod.spec.clone().unwrap_or_default();
    let container = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == s.name)
        .cloned()
        .ok_or_else(|| {
            (
                "CreateContainerConfigError".to_string(),
                format!("no container {} in the pod", s.name),
            )
        })?;
    let image = ensure_image(inner, pod, &container, mem).await?;
    let image_ref = image.id.clone();
    let config_error =
        |e: &dyn std::fmt::Display| ("CreateContainerConfigError".to_string(), e.to_string());
    let image_uid = image.uid.as_ref().map(|u| u.value);
    translate::verify_run_as_non_root(pod, &container, image_uid, &image.username)
        .map_err(|e| config_error(&e))?;
    // What the environment names: config maps, secrets, services.
    let env_objects = match inner.objects() {
        Some(o) => {
            let (found, services_failed) = objects::fetch_env_objects(&*o, pod, &container).await;
            if let Some(e) = services_failed {
                // A static pod may run while the API server is away; an API pod needs
                // its service variables (upstream waits for the services to be read).
                if !is_static(pod) {
                    return Err(config_error(&e));
                }
                tracing::warn!(pod = %pod_name(pod), err = %e, "no service environment variables");
            }
            found
        }
        None => PodObjects::default(),
    };
    // subPathExpr expands against the container's environment.
    let env = translate::container_env_with(
        pod,
        &container,
        s.kind,
        &inner.cfg.node,
        pod_ip,
        &env_objects,
    )
    .map_err(|e| config_error(&e))?;
    let mut mounts =
        volumes::mounts_for_env(&container, vols, &env).map_err(|e| config_error(&e))?;
    if let Some(m) = hosts_mount(inner, pod, sandbox, &mounts).map_err(|e| config_error(&e))? {
        mounts.push(m);
    }
    // Each instance gets its own empty termination message file.
    let message_path = translate::termination_message_path(&container);
    if !message_path.is_empty() && !mounts.iter().any(|m| m.container_path == message_path) {
        let file = termination::create_file(&pod_root(inner, &pod_uid(pod)), &container.name)
            .map_err(|e| config_error(&format!("creating the termination message file: {e}")))?;
        mounts.push(v1::Mount {
            container_path: message_path.to_string(),
            host_path: file.display().to_string(),
            ..Default::default()
        });
    }
    let mut config = translate::container_config_with(
        pod,
        &container,
        s.kind,
        s.attempt,
        &image_ref,
        mounts,
        &inner.cfg.node,
        pod_ip,
        &env_objects,
    )
    .map_err(|e| config_error(&e))?;
    translate::apply_image_user(&mut config, image_uid, &image.username);
    let sandbox_config = translate::sandbox_config(
        pod,
        &inner.cfg.node,
        sandbox
            .metadata
            .as_ref()
            .map(|m| m.attempt)
            .unwrap_or_default(),
        &inner.cfg.log_root,
    )
    .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
    let mut rt = inner.cri.runtime.clone();
    let id = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .map_err(|e| ("CreateContainerError".to_string(), e.message().to_string()))?
        .into_inner()
        .container_id;
    let normal = EventType::Normal;
    let created = ev::created(&s.name);
    inner
        .events
        .container(pod, &s.name, normal, ev::CREATED, created);
    rt.start_container(v1::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(|e| ("RunContainerError".to_string(), e.message().to_string()))?;
    tracing::info!(pod = %pod_name(pod), container = %s.name, attempt = s.attempt, container.id = %id, "container started");
    let started = ev::started(&s.name);
    inner
        .events
        .container(pod, &s.name, normal, ev::STARTED, started);
    if let Some(hook) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.clone())
    {
        let host_network = spec.host_network.unwrap_or(false);
        let target = handlers::Target {
            cri: &inner.cri,
            container_id: &id,
            pod_ip: if pod_ip.is_empty() && host_network {
                &inner.cfg.node.host_ip
            } else {
                pod_ip
            },
            host_network,
        };
        if let handlers::Outcome::Failure(msg) =
            handlers::lifecycle(&target, &hook, &container, POST_START_BUDGET).await
        {
            tracing::warn!(pod = %pod_name(pod), container = %s.name, %msg, "postStart hook failed; killing the container");
            let message = ev::POST_START_FAILED_MESSAGE.to_string();
            let (kind, reason) = (EventType::Warning, ev::FAILED_POST_START_HOOK);
            inner.events.container(pod, &s.name, kind, reason, message);
            // As any kill: its preStop hook, then the grace period.
            let cause = KillCause {
                reason: None,
                message: Some(ev::FAILED_POST_START_HOOK),
            };
            if let Err(e) = kill_container(inner, pod, pod_ip, &id, &s.name, cause, None).await {
                tracing::warn!(pod = %pod_name(pod), container = %s.name, err = %e, "killing the container after its postStart hook failed");
            }
            return Err(("PostStartHookError".into(), msg));
        }
        mem.post_start_done.insert(id);
    }
    Ok(())
}

/// The kubelet-managed `/etc/hosts` (`pods/<uid>/etc-hosts`), mounted into every
/// container that does not mount its own, as upstream: the pod's name for its IPs and
/// the `hostAliases`. None while the sandbox has no IP (the runtime's file stays).
fn hosts_mount(
    inner: &Inner,
    pod: &Pod,
    sandbox: &v1::PodSandboxStatus,
    mounts: &[v1::Mount],
) -> Result<Option<v1::Mount>, String> {
    const ETC_HOSTS: &str = "/etc/hosts";
    if mounts.iter().any(|m| m.container_path == ETC_HOSTS) {
        return Ok(None);
    }
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let ips: Vec<String> = sandbox
        .network
        .iter()
        .flat_map(|n| {
            std::iter::once(n.ip.clone()).chain(n.additional_ips.iter().map(|a| a.ip.clone()))
        })
        .filter(|ip| !ip.is_empty())
        .collect();
    if ips.is_empty() && !host_network {
        return Ok(None);
    }
    let node_hosts = if host_network {
        std::fs::read(ETC_HOSTS).map_err(|e| format!("reading the node's {ETC_HOSTS}: {e}"))?
    } else {
        Vec::new()
    };
    let text =
        translate::etc_hosts(pod, &inner.cfg.node, &ips, &node_hosts).map_err(|e| e.to_string())?;
    let dir = pod_root(inner, &pod_uid(pod));
    let file = dir.join("etc-hosts");
    // Written in place when it changed (a new sandbox, a new IP): a bind mount follows
    // the inode, so a rename would leave running containers on the old file.
    if std::fs::read(&file).ok().as_deref() != Some(text.as_slice()) {
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, &text))
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    Ok(Some(v1::Mount {
        container_path: ETC_HOSTS.to_string(),
        host_path: file.display().to_string(),
        ..Default::default()
    }))
}

/// The credentials to pull `image` for an API pod with: from its and its service
/// account's pull secrets, most specific registry location first (empty: anonymous).
async fn pull_auths(inner: &Inner, pod: &Pod, image: &str) -> Vec<v1::AuthConfig> {
    let Some(o) = inner.objects().filter(|_| !is_static(pod)) else {
        return Vec::new();
    };
    let secrets = objects::pull_secrets(&*o, pod).await;
    let (ring, errors) = crate::credentials::Keyring::from_secrets(&secrets);
    for e in errors {
        tracing::warn!(pod = %pod_name(pod), err = %e, "image pull secret not used");
    }
    ring.lookup(image)
}

/// Pulls with each of `auths` in turn until one works (anonymously without any), as
/// upstream; the last failure otherwise.
async fn pull_with(
    images: &mut proto::v1::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    spec: &v1::ImageSpec,
    auths: Vec<v1::AuthConfig>,
) -> Result<v1::PullImageResponse, tonic::Status> {
    let attempts: Vec<Option<v1::AuthConfig>> = if auths.is_empty() {
        vec![None]
    } else {
        auths.into_iter().map(Some).collect()
    };
    let mut last = tonic::Status::unknown("no pull attempted");
    for auth in attempts {
        let with_auth = auth.is_some();
        match images
            .pull_image(v1::PullImageRequest {
                image: Some(spec.clone()),
                auth,
                sandbox_config: None,
            })
            .await
        {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) => {
                if with_auth {
                    tracing::debug!(image = %spec.image, err = %e.message(), "pull with one credential failed");
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// The image a container runs (its id and user, from ImageStatus), pulled per its pull
/// policy (with the pod's pull secrets); an image that failed to pull is retried only
/// after its backoff (ImagePullBackOff).
async fn ensure_image(
    inner: &Inner,
    pod: &Pod,
    c: &Container,
    mem: &mut PodMemory,
) -> Result<v1::Image, (String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
        if image.ends_with(":latest") || !image.rsplit('/').next().unwrap_or_default().contains(':')
        {
            "Always".into()
        } else {
            "IfNotPresent".into()
        }
    });
    let spec = v1::ImageSpec {
        image: image.clone(),
        ..Default::default()
    };
    let mut images = inner.cri.images.clone();
    let present = images
        .image_status(v1::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().image);
    let event = |kind: EventType, reason: &str, message: String| {
        inner.events.container(pod, &c.name, kind, reason, message);
    };
    match (policy.as_str(), present) {
        ("Never", None) => {
            event(
                EventType::Warning,
                ev::ERR_IMAGE_NEVER_PULL,
                ev::never_pull(&image),
            );
            return Err((
                "ErrImageNeverPull".into(),
                format!("container image {image:?} is not present with pull policy of Never"),
            ));
        }
        ("Never" | "IfNotPresent", Some(img)) => {
            event(EventType::Normal, ev::PULLED, ev::already_present(&image));
            return Ok(img);
        }
        _ => {}
    }
    if let Some(b) = mem.image_backoff.get(&image)
        && SystemTime::now() < b.last_finish + b.delay
    {
        // Normal, as upstream: the failure itself was a Warning already.
        event(EventType::Normal, ev::BACK_OFF, ev::pull_back_off(&image));
        return Err((
            "ImagePullBackOff".into(),
            format!("back-off pulling image {image:?}"),
        ));
    }
    let auths = pull_auths(inner, pod, &image).await;
    tracing::info!(image = %image, credentials = auths.len(), "pulling image");
    event(EventType::Normal, ev::PULLING, ev::pulling(&image));
    let pull_started = std::time::Instant::now();
    match pull_with(&mut images, &spec, auths).await {
        Ok(r) => {
            let took = pull_started.elapsed();
            mem.image_backoff.remove(&image);
            let image_ref = r.image_ref;
            // The pulled image's user, for runAsNonRoot and the default runAsUser.
            let pulled = images
                .image_status(v1::ImageStatusRequest {
                    image: Some(v1::ImageSpec {
                        image: image_ref.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().image);
            let size = pulled.as_ref().map(|i| i.size).unwrap_or_default();
            event(
                EventType::Normal,
                ev::PULLED,
                ev::pulled(&image, took, size),
            );
            Ok(pulled.unwrap_or(v1::Image {
                id: image_ref,
                ..Default::default()
            }))
        }
        Err(e) => {
            let message = ev::pull_failed(&image, &ev::rpc_error(&e));
            event(EventType::Warning, ev::FAILED, message);
            let prev = mem.image_backoff.get(&image).copied();
            // Unlike a crash, a failed pull waits the initial delay before its first
            // retry (ErrImagePull, then ImagePullBackOff), as upstream.
            let policy = BackoffPolicy::default();
            let next = match prev {
                Some(_) => policy.next(prev, SystemTime::now(), Duration::ZERO),
                None => crate::Backoff {
                    last_finish: SystemTime::now(),
                    delay: policy.initial,
                },
            };
            mem.image_backoff.insert(image.clone(), next);
            Err(("ErrImagePull".into(), e.message().to_string()))
        }
    }
}

/// How long a postStart hook may run. Upstream runs it without a deadline (the
/// container stays Waiting meanwhile); a day stands in for that without overflowing
/// timers.
const POST_START_BUDGET: Duration = Duration::from_secs(24 * 3600);

/// What a container gets after its preStop hook however little of the grace period is
/// left, so that it still sees SIGTERM before SIGKILL (upstream
/// minimumGracePeriodInSeconds).
const MIN_STOP_SECONDS: u64 = 2;

/// The grace period of a kill (upstream setTerminationGracePeriod): the deletion's own
/// grace period, else for a probe kill the probe's terminationGracePeriodSeconds, else
/// the pod's (30 s when unset).
fn grace_seconds(
    pod: &Pod,
    container: Option<&Container>,
    reason: Option<plan::KillReason>,
) -> u64 {
    if let Some(g) = pod.metadata.deletion_grace_period_seconds {
        return g.max(0) as u64;
    }
    let probe = match reason {
        Some(plan::KillReason::LivenessFailed) => container.and_then(|c| c.liveness_probe.as_ref()),
        Some(plan::KillReason::StartupFailed) => container.and_then(|c| c.startup_probe.as_ref()),
        _ => None,
    };
    probe
        .and_then(|p| p.termination_grace_period_seconds)
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64
}

/// Why a container is killed: the planner's reason (a probe's own grace period) and
/// what the `Killing` event says (None: `Stopping container <name>`, as for every kill of
/// a whole pod).
#[derive(Debug, Clone, Copy, Default)]
struct KillCause<'a> {
    reason: Option<plan::KillReason>,
    message: Option<&'a str>,
}

/// Kills one container as upstream killContainer does: the `Killing` event, its preStop
/// hook within the grace period (skipped when the period is 0), then StopContainer with
/// what is left, at least [`MIN_STOP_SECONDS`]. `grace` overrides the computed period
/// (what is left of a pod-wide one).
async fn kill_container(
    inner: &Inner,
    pod: &Pod,
    pod_ip: &str,
    id: &str,
    name: &str,
    cause: KillCause<'_>,
    grace: Option<Duration>,
) -> Result<(), SyncError> {
    let reason = cause.reason;
    let message = cause
        .message
        .map_or_else(|| ev::stopping(name), str::to_string);
    let normal = EventType::Normal;
    inner
        .events
        .container(pod, name, normal, ev::KILLING, message);
    let spec = pod.spec.clone().unwrap_or_default();
    let container = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name);
    let grace = grace.unwrap_or_else(|| Duration::from_secs(grace_seconds(pod, container, reason)));
    let started = std::time::Instant::now();
    if let Some(c) = container
        && let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
        && !grace.is_zero()
    {
        let target = handlers::Target {
            cri: &inner.cri,
            container_id: id,
            pod_ip,
            host_network: spec.host_network.unwrap_or(false),
        };
        if let handlers::Outcome::Failure(msg) = handlers::lifecycle(&target, hook, c, grace).await
        {
            tracing::warn!(pod = %pod_name(pod), container = %name, %msg, "preStop hook failed");
            let message = ev::PRE_STOP_FAILED_MESSAGE.to_string();
            let (kind, reason) = (EventType::Warning, ev::FAILED_PRE_STOP_HOOK);
            inner.events.container(pod, name, kind, reason, message);
        }
    }
    let left = grace
        .saturating_sub(started.elapsed())
        .as_secs()
        .max(MIN_STOP_SECONDS);
    inner
        .cri
        .runtime
        .clone()
        .stop_container(v1::StopContainerRequest {
            container_id: id.into(),
            timeout: left as i64,
        })
        .await
        .map_err(rpc("StopContainer", &pod_name(pod)))?;
    Ok(())
}

/// Stops every live container and the pod's sandboxes. Regular (and init) containers
/// are killed in parallel, each with its preStop hook and grace period; the sidecars
/// after them, one at a time in reverse order, with what is left of the pod's grace
/// period (upstream: sidecars outlive the containers they serve). `reasons` by
/// container id, for probe-specific grace periods.
async fn kill_pod(
    inner: &Inner,
    pod: &Pod,
    observed: &Observed,
    reasons: &HashMap<&str, plan::KillReason>,
) -> Result<(), SyncError> {
    let started = std::time::Instant::now();
    let pod_ip = handler_ip(inner, pod, observed);
    let spec = pod.spec.clone().unwrap_or_default();
    let sidecars: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| plan::is_sidecar(c))
        .map(|c| c.name.as_str())
        .collect();
    let live: Vec<(&str, &str)> = observed
        .containers
        .iter()
        .filter(|c| {
            c.state == v1::ContainerState::ContainerRunning as i32
                || c.state == v1::ContainerState::ContainerCreated as i32
                || c.state == v1::ContainerState::ContainerUnknown as i32
        })
        .map(|c| {
            let name = c.labels.get(LABEL_CONTAINER_NAME).map(String::as_str);
            (c.id.as_str(), name.unwrap_or_default())
        })
        .collect();
    let (side, main): (Vec<_>, Vec<_>) = live.iter().partition(|(_, n)| sidecars.contains(n));
    let kills = main.iter().map(|(id, name)| {
        let cause = KillCause {
            reason: reasons.get(id).copied(),
            message: None,
        };
        kill_container(inner, pod, &pod_ip, id, name, cause, None)
    });
    for r in futures::future::join_all(kills).await {
        r?;
    }
    let pod_grace = Duration::from_secs(grace_seconds(pod, None, None));
    for name in sidecars.iter().rev() {
        for (id, _) in side.iter().filter(|(_, n)| n == name) {
            let left = pod_grace.saturating_sub(started.elapsed());
            let cause = KillCause::default();
            kill_container(inner, pod, &pod_ip, id, name, cause, Some(left)).await?;
        }
    }
    let mut rt = inner.cri.runtime.clone();
    for sb in &observed.sandboxes {
        if sb.state == v1::PodSandboxState::SandboxReady as i32 {
            rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await
            .map_err(rpc("StopPodSandbox", &pod_name(pod)))?;
        }
    }
    Ok(())
}

/// What a kill needs of a pod the agent no longer knows, from its CRI objects (upstream
/// restoreSpecsFromContainerLabels): each container's preStop handler, the grace period,
/// and whether it ran on the host network.
fn restored_pod(observed: &Observed) -> Pod {
    use k8s_openapi::api::core::v1::{Lifecycle, LifecycleHandler, PodSpec};
    let mut containers: Vec<Container> = Vec::new();
    let mut grace = None;
    for c in &observed.containers {
        let name = c
            .labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .unwrap_or_default();
        if containers.iter().any(|x| x.name == name) {
            continue;
        }
        grace = grace.or_else(|| {
            c.annotations
                .get(crate::ANNOTATION_TERMINATION_GRACE)
                .and_then(|g| g.parse::<i64>().ok())
        });
        let pre_stop = c
            .annotations
            .get(crate::ANNOTATION_PRE_STOP_HANDLER)
            .and_then(|j| serde_json::from_str::<LifecycleHandler>(j).ok());
        containers.push(Container {
            name,
            lifecycle: pre_stop.map(|h| Lifecycle {
                pre_stop: Some(h),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let host_network = observed.sandboxes.first().is_some_and(|s| {
        s.linux
            .as_ref()
            .and_then(|l| l.namespaces.as_ref())
            .and_then(|n| n.options.as_ref())
            .is_some_and(|o| o.network == v1::NamespaceMode::Node as i32)
    });
    Pod {
        spec: Some(PodSpec {
            containers,
            termination_grace_period_seconds: grace,
            host_network: Some(host_network),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Terminates a pod that is no longer desired (or is being deleted): kill everything,
/// publish its final status (a terminal phase, with the real exit codes), then remove
/// its sandboxes and containers and clean its volumes.
async fn terminate(
    inner: &Inner,
    uid: &str,
    pod: Option<&Pod>,
    mem: &mut PodMemory,
) -> Result<(), SyncError> {
    // No probe runs against containers being stopped (a failing liveness probe must not
    // restart anything now).
    lock(&inner.prober).forget_pod(uid);
    inner.events.forget(uid);
    // Its objects are no longer watched, its tokens no longer renewed.
    if let Some(o) = inner.objects() {
        o.track(uid, &Default::default());
    }
    inner.tokens.forget_pod(uid);
    let observed = inner.cri.observe(uid).await?;
    let known = pod.is_some();
    // A pod left by an earlier run: its grace period and preStop hooks come back from
    // what the containers were created with.
    let restored;
    let pod = match pod {
        Some(p) => p,
        None => {
            restored = restored_pod(&observed);
            &restored
        }
    };
    let observed = if observed.containers.is_empty() && observed.sandboxes.is_empty() {
        observed
    } else {
        kill_pod(inner, pod, &observed, &HashMap::new()).await?;
        inner.cri.observe(uid).await?
    };
    if known {
        publish(inner, uid, pod, mem, &observed, true);
    }
    let mut rt = inner.cri.runtime.clone();
    for sb in &observed.sandboxes {
        rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: sb.id.clone(),
        })
        .await
        .map_err(rpc("RemovePodSandbox", uid))?;
    }
    if let Some(cg) = inner.cfg.cgroups.clone() {
        let uid = uid.to_string();
        tokio::task::spawn_blocking(move || cg.remove_pod(&uid))
            .await
            .unwrap_or(Ok(()))?;
    }
    let root = pod_root(inner, uid);
    // The subPath bind mounts pin inodes of the volumes: they go first.
    volumes::cleanup(&root.join("volume-subpaths"))?;
    volumes::cleanup(&pod_dir(inner, uid))?;
    match std::fs::remove_dir_all(root.join("containers")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %root.display(), err = %e, "removing termination message files")
        }
    }
    match std::fs::remove_file(root.join("etc-hosts")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %root.display(), err = %e, "removing the pod's etc-hosts"),
    }
    if let Err(e) = std::fs::remove_dir(&root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %root.display(), err = %e, "removing the pod's directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::KillReason::{LivenessFailed, PodTerminating, StartupFailed};

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn an_orphan_is_killed_with_what_its_containers_were_created_with() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"terminationGracePeriodSeconds": 7, "containers": [
                {"name": "app", "image": "i", "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}},
                {"name": "log", "image": "i"}
            ]}
        }));
        let node = translate::NodeInfo {
            node_name: "n".into(),
            host_ip: "192.0.2.1".into(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            cgroup_root: "/kubepods".into(),
            cluster_dns: vec![],
            cluster_domain: String::new(),
            host_dns: None,
            seccomp_profile_root: String::new(),
            seccomp_default: false,
            ..Default::default()
        };
        let containers = translate::containers(&p)
            .into_iter()
            .map(|(kind, c)| {
                let cfg = translate::container_config(&p, c, kind, 0, "img", vec![], &node, "")
                    .expect("config");
                v1::ContainerStatus {
                    id: c.name.clone(),
                    labels: cfg.labels,
                    annotations: cfg.annotations,
                    ..Default::default()
                }
            })
            .collect();
        let restored = restored_pod(&Observed {
            sandboxes: vec![],
            containers,
        });
        let spec = restored.spec.as_ref().expect("spec");
        assert_eq!(grace_seconds(&restored, None, None), 7);
        let app = spec
            .containers
            .iter()
            .find(|c| c.name == "app")
            .expect("app");
        let hook = app.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
        assert_eq!(
            hook.and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone()),
            Some(vec!["drain".to_string()])
        );
        let log = spec
            .containers
            .iter()
            .find(|c| c.name == "log")
            .expect("log");
        assert!(log.lifecycle.is_none());
        assert_eq!(spec.host_network, Some(false));
    }

    #[test]
    fn grace_period_of_a_kill() {
        let spec = serde_json::json!({
            "terminationGracePeriodSeconds": 40,
            "containers": [{"name": "c", "image": "i",
                "livenessProbe": {"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": 5},
                "startupProbe": {"exec": {"command": ["true"]}}}]
        });
        let p = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}));
        let c = p.spec.as_ref().map(|s| &s.containers[0]);
        let deleting = pod(serde_json::json!({
            "metadata": {"name": "p", "deletionGracePeriodSeconds": 3}, "spec": spec
        }));
        let unset = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        let cases = [
            ("the pod's period", &p, None, 40),
            (
                "a liveness kill uses the probe's period",
                &p,
                Some(LivenessFailed),
                5,
            ),
            (
                "a startup probe without one uses the pod's",
                &p,
                Some(StartupFailed),
                40,
            ),
            ("other kills use the pod's", &p, Some(PodTerminating), 40),
            (
                "the deletion's period wins",
                &deleting,
                Some(LivenessFailed),
                3,
            ),
            ("30 s when unset", &unset, None, 30),
        ];
        for (name, pod, reason, want) in cases {
            assert_eq!(grace_seconds(pod, c, reason), want, "{name}");
        }
    }
}
