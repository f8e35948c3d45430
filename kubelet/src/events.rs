//! Kubernetes events about the node's pods, written to the API server: the
//! [`pods::events::Recorder`] the engine reports through, as upstream's kubelet records
//! them with client-go's legacy event recorder — core/v1 Events in the pod's namespace,
//! `source` and `reportingComponent` `kubelet`, the node as `host` and
//! `reportingInstance`, named `<pod>.<hex nanoseconds>`.
//!
//! Between the engine and the API server, as client-go's event correlator:
//! - a bounded queue ([`QUEUE`]): recording never blocks a pod worker, and an API
//!   outage drops what does not fit instead of growing memory;
//! - aggregation: the same event (object, type, reason, message, source) seen again
//!   within [`DEDUP_WINDOW`] bumps `count` and `lastTimestamp` of the Event already
//!   written (a PATCH), instead of a new one; events of one object and reason whose
//!   messages keep changing become one `(combined from similar events): …` Event once
//!   [`SIMILAR_MAX`] different messages came within [`SIMILAR_WINDOW`];
//! - a token bucket per source and object ([`SPAM_BURST`] events, then one per
//!   [`SPAM_REFILL`]) drops the excess of an object that is always failing;
//! - the writes themselves at [`EVENT_QPS`]/[`EVENT_BURST`] (upstream's eventRecordQPS
//!   and eventBurst), each tried [`MAX_TRIES`] times while the API server is away.
//!
//! Static pods: their events name the static pod itself (its name, namespace and config
//! hash UID), as upstream's kubelet records them; `kubectl get events
//! --field-selector involvedObject.name=<mirror pod>` finds them, `kubectl describe` of
//! the mirror pod (another UID) does not, as upstream.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use pods::events::{EventType, PodRef, Recorder};
use tokio::sync::mpsc;

use crate::kube_client::status_code;
use crate::status::Limiter;

/// Events waiting to be written; more are dropped.
pub const QUEUE: usize = 1000;
/// The same event again within this is counted on the Event written before.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// Events of one object and reason with this many different messages within
/// [`SIMILAR_WINDOW`] are combined into one.
pub const SIMILAR_MAX: usize = 10;
pub const SIMILAR_WINDOW: Duration = Duration::from_secs(600);
/// Events a source may write about one object at once, and how fast that comes back.
pub const SPAM_BURST: f64 = 25.0;
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Writes per second to the API server, and their burst.
pub const EVENT_QPS: f64 = 50.0;
pub const EVENT_BURST: u32 = 100;
/// Tries of one write while the API server is away, and the pause between them.
pub const MAX_TRIES: u32 = 12;
const RETRY: Duration = Duration::from_secs(10);
/// Entries of each correlation cache (least recently used go first).
const CACHE_ENTRIES: usize = 4096;

const COMPONENT: &str = "kubelet";
const COMBINED: &str = "(combined from similar events): ";

/// The recorder the engine is given: builds the Event and queues it.
pub struct ApiRecorder {
    node: String,
    queue: mpsc::Sender<Event>,
    dropped: AtomicU64,
}

impl ApiRecorder {
    /// The recorder, and its writer to the API server as a task.
    pub fn start(client: kube::Client, node: &str) -> Arc<Self> {
        let (recorder, rx) = Self::new(node, QUEUE);
        let sink = ApiSink { client };
        let limiter = Limiter::new(EVENT_QPS, EVENT_BURST);
        tokio::spawn(run(rx, sink, Correlator::default(), limiter));
        Arc::new(recorder)
    }

    fn new(node: &str, capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (queue, rx) = mpsc::channel(capacity);
        let recorder = ApiRecorder {
            node: node.to_string(),
            queue,
            dropped: AtomicU64::new(0),
        };
        (recorder, rx)
    }
}

impl Recorder for ApiRecorder {
    fn event(&self, object: &PodRef, kind: EventType, reason: &str, message: String) {
        let event = new_event(&self.node, object, kind, reason, message, SystemTime::now());
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Said once in a while, not once per event dropped.
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, %reason, pod = %object.display(), "event queue full (the API server is away or slow); events dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%reason, "event writer gone; event dropped");
            }
        }
    }
}

fn time(at: SystemTime) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::try_from(at).ok().map(Time)
}

fn nanos(at: SystemTime) -> u128 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// The Event upstream's legacy recorder makes for a pod or container reference.
fn new_event(
    node: &str,
    object: &PodRef,
    kind: EventType,
    reason: &str,
    message: String,
    at: SystemTime,
) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", object.name, nanos(at))),
            namespace: Some(object.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            namespace: Some(object.namespace.clone()),
            name: Some(object.name.clone()),
            uid: Some(object.uid.clone()),
            field_path: object.field_path.clone(),
            ..Default::default()
        },
        reason: Some(reason.to_string()),
        message: Some(message),
        type_: Some(kind.as_str().to_string()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node.to_string()),
        }),
        first_timestamp: time(at),
        last_timestamp: time(at),
        count: Some(1),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.to_string()),
        ..Default::default()
    }
}

/// One write to the API server.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    /// A new Event.
    Create(Event),
    /// The Event of that name seen again: its count, lastTimestamp and message.
    Patch(Event),
}

impl Write {
    fn event(&self) -> &Event {
        match self {
            Write::Create(e) | Write::Patch(e) => e,
        }
    }
}

/// What a PATCH of an Event seen again changes (client-go's two-way patch of the same).
fn patch_body(e: &Event) -> serde_json::Value {
    serde_json::json!({
        "count": e.count,
        "lastTimestamp": e.last_timestamp,
        "message": e.message,
    })
}

fn s(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or_default()
}

/// Source and object: what the token bucket is per.
fn spam_fields(e: &Event) -> Vec<&str> {
    let o = &e.involved_object;
    let src = e.source.as_ref();
    vec![
        src.map_or("", |x| s(&x.component)),
        src.map_or("", |x| s(&x.host)),
        s(&o.kind),
        s(&o.namespace),
        s(&o.name),
        s(&o.uid),
        s(&o.api_version),
    ]
}

fn spam_key(e: &Event) -> String {
    spam_fields(e).join("\n")
}

/// Source, object, type and reason: events alike but for their message.
fn similar_key(e: &Event) -> String {
    let mut k = spam_fields(e);
    k.extend([
        s(&e.type_),
        s(&e.reason),
        s(&e.reporting_component),
        s(&e.reporting_instance),
    ]);
    k.join("\n")
}

/// Everything that makes two events the same one.
fn event_key(e: &Event) -> String {
    let mut k = spam_fields(e);
    k.extend([
        s(&e.involved_object.field_path),
        s(&e.type_),
        s(&e.reason),
        s(&e.message),
    ]);
    k.join("\n")
}

/// A map of at most `cap` entries; the least recently used goes first.
struct Lru<V> {
    cap: usize,
    tick: u64,
    entries: HashMap<String, (u64, V)>,
}

impl<V> Lru<V> {
    fn new(cap: usize) -> Self {
        Lru {
            cap: cap.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    fn take(&mut self, key: &str) -> Option<V> {
        self.entries.remove(key).map(|(_, v)| v)
    }

    fn put(&mut self, key: String, value: V) {
        self.tick += 1;
        self.entries.insert(key, (self.tick, value));
        if self.entries.len() > self.cap {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Events alike but for their message, lately.
struct Similar {
    messages: BTreeSet<String>,
    last: SystemTime,
}

/// An event written, to count it again.
struct Seen {
    name: String,
    count: i32,
    first: Option<Time>,
    last: SystemTime,
}

/// The token bucket of one source and object.
struct Bucket {
    tokens: f64,
    at: SystemTime,
}

/// client-go's event correlator: aggregation of similar events, counting of the same
/// event, and the spam filter (pure: the time is given).
struct Correlator {
    similar: Lru<Similar>,
    seen: Lru<Seen>,
    spam: Lru<Bucket>,
}

impl Default for Correlator {
    fn default() -> Self {
        Correlator {
            similar: Lru::new(CACHE_ENTRIES),
            seen: Lru::new(CACHE_ENTRIES),
            spam: Lru::new(CACHE_ENTRIES),
        }
    }
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

impl Correlator {
    /// What to write for `event` at `now`; None when the spam filter drops it.
    fn correlate(&mut self, event: Event, now: SystemTime) -> Option<Write> {
        let (event, key) = self.aggregate(event, now);
        let write = self.observe(event, key, now);
        self.accept(&spam_key(write.event()), now).then_some(write)
    }

    /// The event itself and its key; or, once similar events had too many messages,
    /// the combined event and the key of the combination (so that it is counted).
    fn aggregate(&mut self, event: Event, now: SystemTime) -> (Event, String) {
        let group = similar_key(&event);
        let mut record = self
            .similar
            .take(&group)
            .filter(|r| since(now, r.last) <= SIMILAR_WINDOW)
            .unwrap_or(Similar {
                messages: BTreeSet::new(),
                last: now,
            });
        record.messages.insert(s(&event.message).to_string());
        record.last = now;
        let combine = record.messages.len() >= SIMILAR_MAX;
        if combine {
            // The set never grows past the threshold.
            record.messages.pop_first();
        }
        self.similar.put(group.clone(), record);
        if !combine {
            let key = event_key(&event);
            return (event, key);
        }
        let object = s(&event.involved_object.name);
        let combined = Event {
            metadata: ObjectMeta {
                name: Some(format!("{object}.{:x}", nanos(now))),
                namespace: event.metadata.namespace.clone(),
                ..Default::default()
            },
            message: Some(format!("{COMBINED}{}", s(&event.message))),
            first_timestamp: time(now),
            last_timestamp: time(now),
            count: Some(1),
            ..event
        };
        (combined, group)
    }

    /// Counts the event: seen within the window, the Event written then is patched.
    fn observe(&mut self, mut event: Event, key: String, now: SystemTime) -> Write {
        let before = self
            .seen
            .take(&key)
            .filter(|s| since(now, s.last) <= DEDUP_WINDOW);
        let write = match before {
            Some(seen) => {
                event.metadata.name = Some(seen.name);
                event.first_timestamp = seen.first;
                event.count = Some(seen.count.saturating_add(1));
                Write::Patch(event)
            }
            None => {
                event.count = Some(1);
                Write::Create(event)
            }
        };
        let e = write.event();
        let seen = Seen {
            name: s(&e.metadata.name).to_string(),
            count: e.count.unwrap_or(1),
            first: e.first_timestamp.clone(),
            last: now,
        };
        self.seen.put(key, seen);
        write
    }

    /// Takes a token of the object's bucket, if there is one.
    fn accept(&mut self, key: &str, now: SystemTime) -> bool {
        let rate = 1.0 / SPAM_REFILL.as_secs_f64();
        let mut b = self.spam.take(key).unwrap_or(Bucket {
            tokens: SPAM_BURST,
            at: now,
        });
        b.tokens = (b.tokens + since(now, b.at).as_secs_f64() * rate).min(SPAM_BURST);
        b.at = now;
        let ok = b.tokens >= 1.0;
        if ok {
            b.tokens -= 1.0;
        }
        self.spam.put(key.to_string(), b);
        ok
    }
}

/// Why a write did not go in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SinkError {
    /// The Event (or its namespace) does not exist.
    NotFound,
    /// The API server is away or overloaded: try again.
    Retry(String),
    /// Refused: trying again would not help.
    Refused(String),
}

/// Where Events are written: the API server, or a fake in tests.
trait Sink: Send + Sync + 'static {
    fn create(&self, event: &Event) -> impl Future<Output = Result<(), SinkError>> + Send;
    fn patch(&self, event: &Event) -> impl Future<Output = Result<(), SinkError>> + Send;
}

struct ApiSink {
    client: kube::Client,
}

impl ApiSink {
    fn api(&self, event: &Event) -> Api<Event> {
        let ns = event.metadata.namespace.as_deref().unwrap_or("default");
        Api::namespaced(self.client.clone(), ns)
    }
}

fn classify(e: kube::Error) -> SinkError {
    match status_code(&e) {
        Some(404) => SinkError::NotFound,
        Some(c) if c == 429 || c >= 500 => SinkError::Retry(e.to_string()),
        Some(_) => SinkError::Refused(e.to_string()),
        None => SinkError::Retry(e.to_string()),
    }
}

impl Sink for ApiSink {
    async fn create(&self, event: &Event) -> Result<(), SinkError> {
        self.api(event)
            .create(&PostParams::default(), event)
            .await
            .map(drop)
            .map_err(classify)
    }

    async fn patch(&self, event: &Event) -> Result<(), SinkError> {
        let name = s(&event.metadata.name);
        let body = patch_body(event);
        self.api(event)
            .patch(name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
            .map(drop)
            .map_err(classify)
    }
}

/// The writer: queued events, correlated, written one at a time.
async fn run<S: Sink>(
    mut queue: mpsc::Receiver<Event>,
    sink: S,
    mut correlator: Correlator,
    mut limiter: Limiter,
) {
    while let Some(event) = queue.recv().await {
        let reason = s(&event.reason).to_string();
        match correlator.correlate(event, SystemTime::now()) {
            Some(w) => write(&sink, &w, &mut limiter).await,
            None => {
                tracing::debug!(%reason, "event dropped: too many about this object lately")
            }
        }
    }
}

/// One write, tried again while the API server is away; an Event patched that is gone
/// (expired) is made again.
async fn write<S: Sink>(sink: &S, w: &Write, limiter: &mut Limiter) {
    let e = w.event();
    let name = s(&e.metadata.name);
    for attempt in 1..=MAX_TRIES {
        limiter.take().await;
        let r = match w {
            Write::Create(e) => sink.create(e).await,
            Write::Patch(e) => match sink.patch(e).await {
                Err(SinkError::NotFound) => sink.create(e).await,
                r => r,
            },
        };
        match r {
            Ok(()) => {
                tracing::debug!(event = %name, reason = %s(&e.reason), count = e.count.unwrap_or(1), "event written");
                return;
            }
            Err(SinkError::Retry(err)) if attempt < MAX_TRIES => {
                tracing::debug!(event = %name, %err, attempt, "writing an event; will retry");
                // The first pause is spread, so that writers do not come back together.
                let pause = if attempt == 1 {
                    RETRY.mul_f64(fastrand::f64())
                } else {
                    RETRY
                };
                tokio::time::sleep(pause).await;
            }
            Err(err) => {
                tracing::warn!(event = %name, reason = %s(&e.reason), err = ?err, "event not written");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            field_path: Some("spec.containers{app}".into()),
        }
    }

    fn event(name: &str, reason: &str, message: &str, t: SystemTime) -> Event {
        let kind = EventType::Warning;
        new_event("node1", &pod(name), kind, reason, message.into(), t)
    }

    /// An API server of Events: creates and patches applied to a map, failures
    /// injected in order.
    #[derive(Default)]
    struct FakeSink {
        events: Mutex<HashMap<String, Event>>,
        calls: Mutex<Vec<&'static str>>,
        failures: Mutex<Vec<SinkError>>,
    }

    impl FakeSink {
        fn injected(&self) -> Option<SinkError> {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            (!f.is_empty()).then(|| f.remove(0))
        }

        fn events(&self) -> Vec<Event> {
            let mut v: Vec<Event> = self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            v.sort_by_key(|e| e.metadata.name.clone());
            v
        }

        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    impl Sink for FakeSink {
        async fn create(&self, event: &Event) -> Result<(), SinkError> {
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push("create");
            if let Some(e) = self.injected() {
                return Err(e);
            }
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            let name = s(&event.metadata.name).to_string();
            if events.contains_key(&name) {
                return Err(SinkError::Refused("already exists".into()));
            }
            events.insert(name, event.clone());
            Ok(())
        }

        async fn patch(&self, event: &Event) -> Result<(), SinkError> {
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push("patch");
            if let Some(e) = self.injected() {
                return Err(e);
            }
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            let stored = events
                .get_mut(s(&event.metadata.name))
                .ok_or(SinkError::NotFound)?;
            let body = patch_body(event);
            stored.count = body["count"].as_i64().and_then(|c| i32::try_from(c).ok());
            stored.last_timestamp = serde_json::from_value(body["lastTimestamp"].clone()).ok();
            stored.message = body["message"].as_str().map(String::from);
            Ok(())
        }
    }

    async fn write_all(sink: &FakeSink, c: &mut Correlator, events: Vec<(Event, SystemTime)>) {
        let mut limiter = Limiter::new(1000.0, 1000);
        for (e, now) in events {
            if let Some(w) = c.correlate(e, now) {
                write(sink, &w, &mut limiter).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_event_three_times_is_one_event_counted_three_times() {
        let sink = FakeSink::default();
        let mut c = Correlator::default();
        let events = (0..3)
            .map(|i| (event("web", "BackOff", "back-off", at(i * 20)), at(i * 20)))
            .collect();
        write_all(&sink, &mut c, events).await;
        assert_eq!(sink.calls(), ["create", "patch", "patch"]);
        let got = sink.events();
        assert_eq!(got.len(), 1, "{got:?}");
        let e = &got[0];
        assert_eq!(e.count, Some(3));
        assert_eq!(e.first_timestamp, time(at(0)));
        assert_eq!(e.last_timestamp, time(at(40)));
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.containers{app}")
        );
        assert_eq!(
            e.source.as_ref().and_then(|s| s.host.as_deref()),
            Some("node1")
        );
        assert!(
            s(&e.metadata.name).starts_with("web."),
            "{:?}",
            e.metadata.name
        );

        // Another message, or the same one after the window: an Event of its own.
        write_all(
            &sink,
            &mut c,
            vec![
                (event("web", "BackOff", "other", at(50)), at(50)),
                (event("web", "BackOff", "back-off", at(700)), at(700)),
            ],
        )
        .await;
        let counts: Vec<_> = sink.events().iter().map(|e| e.count).collect();
        assert_eq!(counts, [Some(3), Some(1), Some(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_that_keep_changing_are_combined_into_one_event() {
        let sink = FakeSink::default();
        let mut c = Correlator::default();
        let events = (0..12)
            .map(|i| {
                let m = format!("Liveness probe failed: try {i}");
                (event("web", "Unhealthy", &m, at(i)), at(i))
            })
            .collect();
        write_all(&sink, &mut c, events).await;
        let got = sink.events();
        // Nine events on their own, then one combined event counted three times.
        assert_eq!(got.len(), 10, "{got:?}");
        let combined: Vec<&Event> = got
            .iter()
            .filter(|e| s(&e.message).starts_with(COMBINED))
            .collect();
        assert_eq!(combined.len(), 1);
        assert_eq!(combined[0].count, Some(3));
        assert_eq!(
            combined[0].message.as_deref(),
            Some("(combined from similar events): Liveness probe failed: try 11")
        );
    }

    #[test]
    fn an_object_gets_a_burst_then_one_event_per_refill() {
        let mut c = Correlator::default();
        let mut written = 0;
        for i in 0..30 {
            let e = event("web", &format!("Reason{i}"), "m", at(0));
            if c.correlate(e, at(0)).is_some() {
                written += 1;
            }
        }
        assert_eq!(written, 25, "the burst");
        assert!(
            c.correlate(event("web", "More", "m", at(10)), at(10))
                .is_none()
        );
        // Another object has its own bucket.
        assert!(
            c.correlate(event("db", "Started", "m", at(10)), at(10))
                .is_some()
        );
        // One token back after the refill period, and only one.
        let later = at(10) + SPAM_REFILL;
        assert!(
            c.correlate(event("web", "Later", "m", later), later)
                .is_some()
        );
        assert!(
            c.correlate(event("web", "Later2", "m", later), later)
                .is_none()
        );
    }

    #[test]
    fn the_queue_is_bounded_and_drops_the_excess() {
        let (recorder, rx) = ApiRecorder::new("node1", QUEUE);
        for i in 0..(QUEUE + 500) {
            recorder.event(&pod("web"), EventType::Normal, "Started", format!("m{i}"));
        }
        assert_eq!(rx.len(), QUEUE);
        assert_eq!(recorder.dropped.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn caches_are_bounded() {
        let mut c = Correlator::default();
        for i in 0..(CACHE_ENTRIES + 100) {
            let e = event(&format!("p{i}"), "Started", "m", at(0));
            let _ = c.correlate(e, at(0));
        }
        assert_eq!(c.seen.len(), CACHE_ENTRIES);
        assert_eq!(c.similar.len(), CACHE_ENTRIES);
        assert_eq!(c.spam.len(), CACHE_ENTRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_counts_retries_and_remakes_an_expired_event() {
        let sink = Arc::new(FakeSink::default());
        // The API server away twice, then back.
        *sink.failures.lock().unwrap_or_else(|p| p.into_inner()) = vec![
            SinkError::Retry("connection refused".into()),
            SinkError::Retry("connection refused".into()),
        ];
        let (recorder, rx) = ApiRecorder::new("node1", QUEUE);
        struct Shared(Arc<FakeSink>);
        impl Sink for Shared {
            async fn create(&self, e: &Event) -> Result<(), SinkError> {
                self.0.create(e).await
            }
            async fn patch(&self, e: &Event) -> Result<(), SinkError> {
                self.0.patch(e).await
            }
        }
        let limiter = Limiter::new(EVENT_QPS, EVENT_BURST);
        let writer = tokio::spawn(run(
            rx,
            Shared(sink.clone()),
            Correlator::default(),
            limiter,
        ));
        for _ in 0..3 {
            recorder.event(&pod("web"), EventType::Warning, "BackOff", "again".into());
        }
        // The Event expired on the server meanwhile: the next one makes it again.
        tokio::time::sleep(Duration::from_secs(60)).await;
        sink.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        recorder.event(&pod("web"), EventType::Warning, "BackOff", "again".into());
        drop(recorder);
        writer.await.expect("writer");
        assert_eq!(
            sink.calls(),
            [
                "create", "create", "create", "patch", "patch", "patch", "create"
            ]
        );
        let got = sink.events();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].count, Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_not_tried_again() {
        let sink = FakeSink::default();
        *sink.failures.lock().unwrap_or_else(|p| p.into_inner()) =
            vec![SinkError::Refused("forbidden".into())];
        let mut c = Correlator::default();
        write_all(
            &sink,
            &mut c,
            vec![(event("web", "Started", "m", at(0)), at(0))],
        )
        .await;
        assert_eq!(sink.calls(), ["create"]);
        assert!(sink.events().is_empty());
    }
}
