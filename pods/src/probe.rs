//! Probe workers: one task per (container id, probe kind), each its own timer.
//!
//! A worker waits for the container's startup probe to succeed (liveness and readiness
//! only), then for `initialDelaySeconds` after the container started, then probes every
//! `periodSeconds`. Results pass through the success and failure thresholds; only a
//! change of the thresholded result is sent to the engine, as a [`ProbeUpdate`].
//!
//! Starting values, as in kubelet: readiness is false, liveness is true, startup is
//! unknown (not started). A startup probe stops once it succeeds. After a liveness or
//! startup failure is reported the worker is on hold: the engine restarts the
//! container, which has a new id and so gets new workers from [`Prober::sync_pod`].
//! The engine takes a container without a readiness probe as ready and one without a
//! startup probe as started.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::cri::Cri;
use crate::handlers::{self, Outcome, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
            Kind::Startup => "startup",
        }
    }

    /// What the engine assumes before the first thresholded result (`None`: unknown).
    fn initial(self) -> Option<bool> {
        match self {
            Kind::Liveness => Some(true),
            Kind::Readiness => Some(false),
            Kind::Startup => None,
        }
    }

    fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// A change of one container's thresholded probe result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUpdate {
    pub pod_uid: String,
    pub container_id: String,
    pub container_name: String,
    pub kind: Kind,
    /// Success.
    pub result: bool,
}

/// The container a worker probes.
#[derive(Debug, Clone)]
pub struct Subject {
    pub container_id: String,
    pub pod_ip: String,
    pub host_network: bool,
    pub container: Container,
}

/// Runs a probe's handler once. [`CriRunner`] is the real one; tests fake it.
pub trait Runner: Send + Sync + 'static {
    fn run(
        &self,
        subject: &Subject,
        kind: Kind,
        probe: &Probe,
        timeout: Duration,
    ) -> impl Future<Output = Outcome> + Send;
}

/// Probes through [`handlers`]: exec via the CRI, the network ones from this host.
#[derive(Debug, Clone)]
pub struct CriRunner {
    pub cri: Cri,
}

impl Runner for CriRunner {
    async fn run(&self, s: &Subject, _kind: Kind, probe: &Probe, timeout: Duration) -> Outcome {
        let t = Target {
            cri: &self.cri,
            container_id: &s.container_id,
            pod_ip: &s.pod_ip,
            host_network: s.host_network,
        };
        if let Some(e) = &probe.exec {
            let command = expand_static(e.command.as_deref().unwrap_or_default(), &s.container);
            handlers::exec(&t, &command, timeout).await
        } else if let Some(get) = &probe.http_get {
            handlers::http_get(&t, get, &s.container, timeout).await
        } else if let Some(tcp) = &probe.tcp_socket {
            handlers::tcp(&t, tcp, &s.container, timeout).await
        } else if let Some(g) = &probe.grpc {
            handlers::grpc(&t, g, timeout).await
        } else {
            Outcome::Failure("probe has no handler".into())
        }
    }
}

/// `$(VAR)` in an exec probe's command, expanded against the container's `env` values as
/// written (upstream ExpandContainerCommandOnlyStatic): a variable set from a field or
/// resource is empty here, an undeclared one stays as written.
pub fn expand_static(command: &[String], c: &k8s_openapi::api::core::v1::Container) -> Vec<String> {
    let env = c.env.as_deref().unwrap_or_default();
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|e| e.name == name)
            .map(|e| e.value.clone().unwrap_or_default())
    };
    command
        .iter()
        .map(|arg| crate::translate::expand(arg, lookup))
        .collect()
}

/// A probe's timing fields with kubelet's defaults and minimums applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(kind: Kind, p: &Probe) -> Self {
        let positive = |v: Option<i32>, default: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        let seconds =
            |v: Option<i32>, default: u32| Duration::from_secs(u64::from(positive(v, default)));
        Timing {
            initial_delay: Duration::from_secs(
                p.initial_delay_seconds
                    .and_then(|v| u64::try_from(v).ok())
                    .unwrap_or(0),
            ),
            period: seconds(p.period_seconds, 10),
            timeout: seconds(p.timeout_seconds, 1),
            // Only readiness may ask for more than one success (API validation).
            success_threshold: match kind {
                Kind::Readiness => positive(p.success_threshold, 1),
                Kind::Liveness | Kind::Startup => 1,
            },
            failure_threshold: positive(p.failure_threshold, 3),
        }
    }
}

/// Consecutive results against the thresholds, and the result last reported.
#[derive(Debug, Clone)]
struct Thresholds {
    success: u32,
    failure: u32,
    last: Option<bool>,
    run: u32,
    reported: Option<bool>,
}

impl Thresholds {
    fn new(kind: Kind, t: &Timing) -> Self {
        Thresholds {
            success: t.success_threshold,
            failure: t.failure_threshold,
            last: None,
            run: 0,
            reported: kind.initial(),
        }
    }

    /// Takes one probe result; the new thresholded result if it changed.
    fn observe(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok { self.success } else { self.failure };
        if self.run < needed || self.reported == Some(ok) {
            return None;
        }
        self.reported = Some(ok);
        Some(ok)
    }
}

/// Starts and stops the probe workers of every pod.
pub struct Prober<R: Runner = CriRunner> {
    runner: Arc<R>,
    updates: mpsc::UnboundedSender<ProbeUpdate>,
    /// Pod UID → container id → that container's workers.
    pods: HashMap<String, HashMap<String, Vec<AbortHandle>>>,
    /// Every worker; dropping the prober stops them all.
    tasks: JoinSet<()>,
}

impl Prober<CriRunner> {
    pub fn new(cri: Cri, updates: mpsc::UnboundedSender<ProbeUpdate>) -> Self {
        Self::with_runner(CriRunner { cri }, updates)
    }
}

impl<R: Runner> Prober<R> {
    pub fn with_runner(runner: R, updates: mpsc::UnboundedSender<ProbeUpdate>) -> Self {
        Prober {
            runner: Arc::new(runner),
            updates,
            pods: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Makes the pod's workers exactly those of `running` — (container name, container
    /// id, started at) — starting the missing ones and stopping those of containers
    /// gone. Regular containers and sidecars (restartable init containers) are probed.
    pub fn sync_pod(&mut self, pod: &Pod, running: &[(String, String, SystemTime)], pod_ip: &str) {
        while self.tasks.try_join_next().is_some() {}
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(spec) = &pod.spec else {
            self.forget_pod(&uid);
            return;
        };
        let host_network = spec.host_network.unwrap_or(false);
        let known = self.pods.entry(uid.clone()).or_default();
        known.retain(|id, workers| {
            let keep = running.iter().any(|(_, r, _)| r == id);
            if !keep {
                workers.iter().for_each(AbortHandle::abort);
            }
            keep
        });
        for (name, id, started_at) in running {
            if known.contains_key(id) {
                continue;
            }
            let workers = match probed(spec, name) {
                Some(container) => {
                    let subject = Subject {
                        container_id: id.clone(),
                        pod_ip: pod_ip.to_string(),
                        host_network,
                        container: container.clone(),
                    };
                    spawn_workers(
                        &mut self.tasks,
                        &self.runner,
                        &self.updates,
                        &uid,
                        subject,
                        *started_at,
                    )
                }
                None => Vec::new(),
            };
            known.insert(id.clone(), workers);
        }
        if known.is_empty() {
            self.pods.remove(&uid);
        }
    }

    /// Stops every worker of the pod.
    pub fn forget_pod(&mut self, pod_uid: &str) {
        for workers in self
            .pods
            .remove(pod_uid)
            .into_iter()
            .flat_map(HashMap::into_values)
        {
            workers.iter().for_each(AbortHandle::abort);
        }
        while self.tasks.try_join_next().is_some() {}
    }
}

/// The container called `name` if it can have probes: a regular container or a
/// sidecar (an init container with `restartPolicy: Always`).
fn probed<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Container> {
    spec.containers.iter().find(|c| c.name == name).or_else(|| {
        spec.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    })
}

/// Starts the workers of one container's probes.
fn spawn_workers<R: Runner>(
    tasks: &mut JoinSet<()>,
    runner: &Arc<R>,
    updates: &mpsc::UnboundedSender<ProbeUpdate>,
    pod_uid: &str,
    subject: Subject,
    started_at: SystemTime,
) -> Vec<AbortHandle> {
    let c = &subject.container;
    if c.startup_probe.is_none() && c.liveness_probe.is_none() && c.readiness_probe.is_none() {
        return Vec::new();
    }
    // Time since the container started, carried over to the tokio clock.
    let age = SystemTime::now()
        .duration_since(started_at)
        .unwrap_or_default();
    let now = Instant::now();
    let (started_tx, started_rx) = watch::channel(c.startup_probe.is_none());
    let mut started_tx = Some(started_tx);
    let subject = Arc::new(subject);
    let mut handles = Vec::new();
    for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
        let Some(probe) = kind.of(&subject.container) else {
            continue;
        };
        let timing = Timing::of(kind, probe);
        let gate = match kind {
            Kind::Startup => Gate::Announces(started_tx.take()),
            Kind::Liveness | Kind::Readiness => Gate::Awaits(started_rx.clone()),
        };
        let worker = Worker {
            runner: Arc::clone(runner),
            subject: Arc::clone(&subject),
            pod_uid: pod_uid.to_string(),
            kind,
            probe: probe.clone(),
            timing,
            first: now + timing.initial_delay.saturating_sub(age),
            gate,
            updates: updates.clone(),
        };
        let span = tracing::info_span!(
            "probe",
            pod.uid = pod_uid,
            container.id = %subject.container_id,
            container.name = %subject.container.name,
            probe = kind.name(),
        );
        handles.push(tasks.spawn(worker.run().instrument(span)));
    }
    handles
}

/// How a worker relates to the container's startup probe.
enum Gate {
    /// The startup worker: tells the others once it succeeded.
    Announces(Option<watch::Sender<bool>>),
    /// Liveness and readiness: wait until the container started.
    Awaits(watch::Receiver<bool>),
}

struct Worker<R> {
    runner: Arc<R>,
    subject: Arc<Subject>,
    pod_uid: String,
    kind: Kind,
    probe: Probe,
    timing: Timing,
    /// Not before: the container's start plus the initial delay.
    first: Instant,
    gate: Gate,
    updates: mpsc::UnboundedSender<ProbeUpdate>,
}

impl<R: Runner> Worker<R> {
    async fn run(mut self) {
        if let Gate::Awaits(started) = &mut self.gate
            && started.wait_for(|s| *s).await.is_err()
        {
            return; // the startup worker is gone, and so is the container
        }
        tokio::time::sleep_until(self.first).await;
        let mut ticker = tokio::time::interval(self.timing.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut thresholds = Thresholds::new(self.kind, &self.timing);
        loop {
            ticker.tick().await;
            let outcome = self
                .runner
                .run(&self.subject, self.kind, &self.probe, self.timing.timeout)
                .await;
            if let Outcome::Failure(message) = &outcome {
                tracing::debug!(%message, "probe failed");
            }
            let Some(result) = thresholds.observe(outcome.is_success()) else {
                continue;
            };
            match &outcome {
                Outcome::Success => tracing::info!("probe succeeded"),
                Outcome::Failure(message) => tracing::info!(%message, "probe failed"),
            }
            let update = ProbeUpdate {
                pod_uid: self.pod_uid.clone(),
                container_id: self.subject.container_id.clone(),
                container_name: self.subject.container.name.clone(),
                kind: self.kind,
                result,
            };
            if self.updates.send(update).is_err() {
                return; // the engine is gone
            }
            match (self.kind, result) {
                (Kind::Startup, true) => {
                    if let Gate::Announces(Some(started)) = &self.gate {
                        started.send_replace(true);
                    }
                    return;
                }
                // On hold until the container is replaced (a new id, a new worker).
                (Kind::Startup | Kind::Liveness, false) => return,
                (Kind::Readiness, _) | (Kind::Liveness, true) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::ExecAction;
    use serde_json::json;

    #[test]
    fn exec_probe_commands_expand_static_env() {
        let c: k8s_openapi::api::core::v1::Container = serde_json::from_value(json!({
            "name": "c",
            "env": [
                {"name": "PORT", "value": "80"},
                {"name": "PORT", "value": "8080"},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            ]
        }))
        .expect("container");
        let cmd: Vec<String> = ["check", "--port=$(PORT)", "$(IP)", "$(NOPE)", "$$(PORT)"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            super::expand_static(&cmd, &c),
            ["check", "--port=8080", "", "$(NOPE)", "$(PORT)"]
        );
    }

    use super::*;

    /// A fake runner: scripted results per (container id, kind), the last one
    /// repeating (success when none), and a record of every call.
    #[derive(Default)]
    struct Fake {
        script: Mutex<HashMap<(String, Kind), VecDeque<bool>>>,
        calls: Mutex<Vec<Call>>,
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Call {
        container_id: String,
        kind: Kind,
        /// Seconds since the test started (paused clock).
        at: u64,
        timeout: Duration,
    }

    struct Shared {
        fake: Arc<Fake>,
        epoch: Instant,
    }

    impl Runner for Shared {
        async fn run(&self, s: &Subject, kind: Kind, _p: &Probe, timeout: Duration) -> Outcome {
            let ok = {
                let mut script = self.fake.script.lock().expect("lock");
                match script.get_mut(&(s.container_id.clone(), kind)) {
                    Some(q) if q.len() > 1 => q.pop_front().unwrap_or(true),
                    Some(q) => q.front().copied().unwrap_or(true),
                    None => true,
                }
            };
            self.fake.calls.lock().expect("lock").push(Call {
                container_id: s.container_id.clone(),
                kind,
                at: self.epoch.elapsed().as_secs(),
                timeout,
            });
            if ok {
                Outcome::Success
            } else {
                Outcome::Failure("scripted failure".into())
            }
        }
    }

    impl Fake {
        fn script(&self, id: &str, kind: Kind, results: &[bool]) {
            self.script
                .lock()
                .expect("lock")
                .insert((id.into(), kind), results.iter().copied().collect());
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().expect("lock").clone()
        }

        /// When `kind` ran on `id`, in seconds since the start.
        fn times(&self, id: &str, kind: Kind) -> Vec<u64> {
            self.calls()
                .into_iter()
                .filter(|c| c.container_id == id && c.kind == kind)
                .map(|c| c.at)
                .collect()
        }
    }

    fn prober() -> (
        Prober<Shared>,
        Arc<Fake>,
        mpsc::UnboundedReceiver<ProbeUpdate>,
    ) {
        let fake = Arc::new(Fake::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = Shared {
            fake: Arc::clone(&fake),
            epoch: Instant::now(),
        };
        (Prober::with_runner(runner, tx), fake, rx)
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": containers},
        }))
        .expect("test pod literal")
    }

    fn running(pairs: &[(&str, &str)]) -> Vec<(String, String, SystemTime)> {
        pairs
            .iter()
            .map(|(n, id)| (n.to_string(), id.to_string(), SystemTime::now()))
            .collect()
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<ProbeUpdate>) -> Vec<(String, Kind, bool)> {
        let mut out = Vec::new();
        while let Ok(u) = rx.try_recv() {
            out.push((u.container_id, u.kind, u.result));
        }
        out
    }

    async fn wait(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    async fn wait_ms(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn exec_probe(fields: serde_json::Value) -> serde_json::Value {
        let mut p = json!({"exec": {"command": ["true"]}});
        if let (Some(p), Some(f)) = (p.as_object_mut(), fields.as_object()) {
            p.extend(f.clone());
        }
        p
    }

    #[test]
    fn timing_defaults_and_minimums() {
        let probe = |v: serde_json::Value| -> Probe { serde_json::from_value(v).expect("probe") };
        let defaults = Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        };
        let table = [
            (Kind::Readiness, json!({}), defaults),
            (
                Kind::Readiness,
                json!({"initialDelaySeconds": 5, "periodSeconds": 2, "timeoutSeconds": 3,
                       "successThreshold": 2, "failureThreshold": 7}),
                Timing {
                    initial_delay: Duration::from_secs(5),
                    period: Duration::from_secs(2),
                    timeout: Duration::from_secs(3),
                    success_threshold: 2,
                    failure_threshold: 7,
                },
            ),
            // successThreshold is 1 for liveness and startup whatever is written.
            (Kind::Liveness, json!({"successThreshold": 4}), defaults),
            (Kind::Startup, json!({"successThreshold": 4}), defaults),
            // Zero and negative values fall back to the defaults.
            (
                Kind::Readiness,
                json!({"initialDelaySeconds": -1, "periodSeconds": 0, "timeoutSeconds": -3,
                       "successThreshold": 0, "failureThreshold": 0}),
                defaults,
            ),
        ];
        for (kind, fields, want) in table {
            assert_eq!(
                Timing::of(kind, &probe(fields.clone())),
                want,
                "{kind:?} {fields}"
            );
        }
    }

    #[test]
    fn thresholds() {
        let timing = |s, f| Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: s,
            failure_threshold: f,
        };
        // (kind, success threshold, failure threshold, results, reported after each)
        type Row = (Kind, u32, u32, &'static [bool], &'static [Option<bool>]);
        let table: [Row; 6] = [
            // Readiness starts false: a failure changes nothing, one success reports.
            (
                Kind::Readiness,
                1,
                3,
                &[false, true, true],
                &[None, Some(true), None],
            ),
            (
                Kind::Readiness,
                2,
                2,
                &[true, false, true, true, false, false, false],
                &[None, None, None, Some(true), None, Some(false), None],
            ),
            // Liveness starts true: only a run of failures reports.
            (
                Kind::Liveness,
                1,
                3,
                &[true, false, false, true, false, false, false],
                &[None, None, None, None, None, None, Some(false)],
            ),
            (Kind::Liveness, 1, 1, &[false], &[Some(false)]),
            // Startup starts unknown: the first thresholded result reports either way.
            (Kind::Startup, 1, 3, &[false, true], &[None, Some(true)]),
            (Kind::Startup, 1, 2, &[false, false], &[None, Some(false)]),
        ];
        for (kind, s, f, results, want) in table {
            let mut t = Thresholds::new(kind, &timing(s, f));
            let got: Vec<_> = results.iter().map(|r| t.observe(*r)).collect();
            assert_eq!(got, want, "{kind:?} s={s} f={f} {results:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_delay_period_and_thresholds() {
        let (mut prober, fake, mut rx) = prober();
        let p = pod(json!([{"name": "web", "image": "x",
            "readinessProbe": exec_probe(json!({"initialDelaySeconds": 5, "periodSeconds": 2,
                "timeoutSeconds": 4, "successThreshold": 2, "failureThreshold": 2}))}]));
        fake.script("c1", Kind::Readiness, &[true, true, false, false, true]);
        prober.sync_pod(&p, &running(&[("web", "c1")]), "10.0.0.2");

        wait(4).await;
        assert!(fake.calls().is_empty(), "nothing before the initial delay");
        wait(2).await; // t=6: probed at 5
        assert_eq!(fake.times("c1", Kind::Readiness), [5]);
        assert!(
            drain(&mut rx).is_empty(),
            "one success is below the threshold"
        );
        wait(2).await; // t=8: probed at 7, second success
        assert_eq!(drain(&mut rx), [("c1".into(), Kind::Readiness, true)]);
        wait(4).await; // t=12: failures at 9 and 11
        assert_eq!(drain(&mut rx), [("c1".into(), Kind::Readiness, false)]);
        wait(4).await; // t=16: successes at 13 and 15
        assert_eq!(fake.times("c1", Kind::Readiness), [5, 7, 9, 11, 13, 15]);
        assert_eq!(drain(&mut rx), [("c1".into(), Kind::Readiness, true)]);
        assert!(
            fake.calls()
                .iter()
                .all(|c| c.timeout == Duration::from_secs(4))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_failure_is_reported_once_then_held() {
        let (mut prober, fake, mut rx) = prober();
        let p = pod(json!([{"name": "web", "image": "x",
            "livenessProbe": exec_probe(json!({"periodSeconds": 1, "failureThreshold": 3}))}]));
        fake.script("c1", Kind::Liveness, &[true, false, false, false]);
        prober.sync_pod(&p, &running(&[("web", "c1")]), "");

        wait(10).await;
        assert_eq!(fake.times("c1", Kind::Liveness), [0, 1, 2, 3]);
        assert_eq!(drain(&mut rx), [("c1".into(), Kind::Liveness, false)]);

        // The engine restarts the container: the new one is probed afresh.
        prober.sync_pod(&p, &running(&[("web", "c2")]), "");
        wait_ms(1500).await;
        assert_eq!(fake.times("c2", Kind::Liveness), [10, 11]);
        assert_eq!(fake.times("c1", Kind::Liveness).len(), 4);
        assert!(drain(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn startup_gates_liveness_and_readiness() {
        let (mut prober, fake, mut rx) = prober();
        let p = pod(json!([{"name": "app", "image": "x",
            "startupProbe": exec_probe(json!({"periodSeconds": 3, "failureThreshold": 5})),
            "livenessProbe": exec_probe(json!({"periodSeconds": 10, "initialDelaySeconds": 2})),
            "readinessProbe": exec_probe(json!({"periodSeconds": 5, "initialDelaySeconds": 20}))}]));
        fake.script("c1", Kind::Startup, &[false, false, true]);
        prober.sync_pod(&p, &running(&[("app", "c1")]), "10.0.0.2");

        wait(5).await;
        assert_eq!(fake.times("c1", Kind::Startup), [0, 3]);
        assert!(fake.times("c1", Kind::Liveness).is_empty());
        assert!(fake.times("c1", Kind::Readiness).is_empty());
        wait(26).await; // t=31
        // Startup succeeded at 6 and stopped; liveness ran at once (its delay had
        // passed), readiness after its delay of 20 s from the container's start.
        assert_eq!(fake.times("c1", Kind::Startup), [0, 3, 6]);
        assert_eq!(fake.times("c1", Kind::Liveness), [6, 16, 26]);
        assert_eq!(fake.times("c1", Kind::Readiness), [20, 25, 30]);
        assert_eq!(
            drain(&mut rx),
            [
                ("c1".into(), Kind::Startup, true),
                ("c1".into(), Kind::Readiness, true)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn startup_failure_is_reported_and_nothing_else_runs() {
        let (mut prober, fake, mut rx) = prober();
        let p = pod(json!([{"name": "app", "image": "x",
            "startupProbe": exec_probe(json!({"periodSeconds": 1, "failureThreshold": 2})),
            "livenessProbe": exec_probe(json!({"periodSeconds": 1}))}]));
        fake.script("c1", Kind::Startup, &[false]);
        prober.sync_pod(&p, &running(&[("app", "c1")]), "");

        wait(5).await;
        assert_eq!(fake.times("c1", Kind::Startup), [0, 1]);
        assert!(fake.times("c1", Kind::Liveness).is_empty());
        assert_eq!(drain(&mut rx), [("c1".into(), Kind::Startup, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn initial_delay_counts_from_the_container_start() {
        let (mut prober, fake, _rx) = prober();
        let p = pod(json!([{"name": "web", "image": "x",
            "readinessProbe": exec_probe(json!({"initialDelaySeconds": 30}))}]));
        // Started 25 s before the agent saw it (e.g. an agent restart).
        let started = SystemTime::now() - Duration::from_secs(25);
        prober.sync_pod(&p, &[("web".into(), "c1".into(), started)], "");
        wait(6).await;
        assert_eq!(fake.times("c1", Kind::Readiness), [5]);
    }

    #[tokio::test(start_paused = true)]
    async fn sync_starts_and_stops_workers() {
        let (mut prober, fake, _rx) = prober();
        let mut p = pod(json!([
            {"name": "web", "image": "x", "readinessProbe": exec_probe(json!({"periodSeconds": 1}))},
            {"name": "plain", "image": "x"},
        ]));
        if let Some(spec) = p.spec.as_mut() {
            spec.init_containers = Some(
                serde_json::from_value(json!([
                    {"name": "sidecar", "image": "x", "restartPolicy": "Always",
                     "livenessProbe": exec_probe(json!({"periodSeconds": 1}))},
                    {"name": "init", "image": "x",
                     "livenessProbe": exec_probe(json!({"periodSeconds": 1}))},
                ]))
                .expect("init containers"),
            );
        }
        let all = running(&[
            ("web", "w1"),
            ("plain", "p1"),
            ("sidecar", "s1"),
            ("init", "i1"),
        ]);
        prober.sync_pod(&p, &all, "");
        // A second sync with the same containers changes nothing.
        prober.sync_pod(&p, &all, "");
        wait_ms(500).await;
        let ids: Vec<_> = fake
            .calls()
            .into_iter()
            .map(|c| (c.container_id, c.kind))
            .collect();
        assert_eq!(
            ids.iter().filter(|(id, _)| id == "w1").count(),
            1,
            "one readiness worker for web: {ids:?}"
        );
        assert!(
            ids.contains(&("s1".into(), Kind::Liveness)),
            "sidecars are probed"
        );
        assert!(!ids.iter().any(|(id, _)| id == "i1" || id == "p1"));

        // web is gone: its worker stops; the sidecar's keeps going.
        prober.sync_pod(&p, &running(&[("sidecar", "s1")]), "");
        let before = fake.times("w1", Kind::Readiness).len();
        wait(3).await;
        assert_eq!(fake.times("w1", Kind::Readiness).len(), before);
        assert_eq!(fake.times("s1", Kind::Liveness), [0, 1, 2, 3]);

        prober.forget_pod("u1");
        wait(3).await;
        assert_eq!(fake.times("s1", Kind::Liveness).len(), 4);
        assert!(prober.pods.is_empty());
    }

    #[tokio::test]
    async fn cri_runner_without_handler_fails() {
        let cri = Cri::connect("unix:///nonexistent/cri.sock").expect("lazy connect");
        let runner = CriRunner { cri };
        let subject = Subject {
            container_id: "c1".into(),
            pod_ip: String::new(),
            host_network: false,
            container: Container::default(),
        };
        let probe = Probe {
            exec: Some(ExecAction { command: None }),
            ..Default::default()
        };
        let none = runner
            .run(
                &subject,
                Kind::Liveness,
                &Probe::default(),
                Duration::from_secs(1),
            )
            .await;
        assert!(!none.is_success());
        let empty = runner
            .run(&subject, Kind::Liveness, &probe, Duration::from_secs(1))
            .await;
        assert_eq!(
            empty,
            Outcome::Failure("exec handler has no command".into())
        );
    }
}
