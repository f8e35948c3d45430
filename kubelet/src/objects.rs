//! The API objects pods reference, read for the engine (`pods::objects::Objects`) over
//! the kubelet's `kube` client: per object, never a cluster-wide list of config maps or
//! secrets (the Node authorizer lets a node read only what its pods reference).
//!
//! - Config maps and secrets the engine tracks for its pods are each watched on their own
//!   (a field selector on `metadata.name`, as upstream's watch-based manager): their
//!   reads come from the watch, and a change is reported on [`Objects::changes`], so a
//!   running pod's volumes follow within moments. The watch ends when no pod references
//!   the object any more.
//! - Other reads (service accounts, objects not tracked yet) are GETs cached for
//!   [`CACHE_TTL`] with one request in flight per object, so a burst of pods does not
//!   fetch the same object again; while the API server is away, the last answer stands.
//! - Services are listed per namespace (for service environment variables), cached the
//!   same way; a failed list answers with the last good one.
//! - Tokens: `serviceaccounts/<name>/token` (TokenRequest) bound to the pod; the engine
//!   caches and renews them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use pods::objects::{Error, Kind, ObjectRef, Objects, Result, Token};
use tokio::sync::broadcast;

use crate::kube_client::is_not_found;

/// How long a GET or a list answers for the same object (or namespace).
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// More cached answers than this and the stale ones are dropped.
const CACHE_SWEEP_AT: usize = 512;

/// One object as read.
#[derive(Debug, Clone, PartialEq)]
enum Obj {
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    ServiceAccount(Box<ServiceAccount>),
}

impl Obj {
    fn resource_version(&self) -> Option<&str> {
        match self {
            Obj::ConfigMap(o) => o.metadata.resource_version.as_deref(),
            Obj::Secret(o) => o.metadata.resource_version.as_deref(),
            Obj::ServiceAccount(o) => o.metadata.resource_version.as_deref(),
        }
    }
}

/// Whether a watched object changed: it came or went, or has a new resourceVersion.
fn changed(before: Option<&Option<Obj>>, after: &Option<Obj>) -> bool {
    match (before, after) {
        (None, _) => true,
        (Some(None), None) => false,
        (Some(Some(a)), Some(b)) => a.resource_version() != b.resource_version() || a != b,
        _ => true,
    }
}

/// A cached GET (None inside: not found).
#[derive(Default)]
struct Slot {
    fetched: Option<(Instant, Option<Obj>)>,
}

/// A watched object: its value once the watch listed it, and who references it.
struct Watched {
    value: Option<Option<Obj>>,
    pods: usize,
    task: tokio::task::AbortHandle,
}

/// A namespace's services as last listed.
#[derive(Default)]
struct ServiceSlot {
    listed: Option<(Instant, Vec<Service>)>,
}

#[derive(Default)]
struct State {
    slots: HashMap<ObjectRef, Arc<tokio::sync::Mutex<Slot>>>,
    services: HashMap<String, Arc<tokio::sync::Mutex<ServiceSlot>>>,
    watched: HashMap<ObjectRef, Watched>,
    /// What each pod references (of what is watched).
    pods: HashMap<String, BTreeSet<ObjectRef>>,
}

struct Shared {
    client: kube::Client,
    state: Mutex<State>,
    changes: broadcast::Sender<ObjectRef>,
}

/// The engine's objects from the API server.
#[derive(Clone)]
pub struct ApiObjects {
    shared: Arc<Shared>,
}

impl ApiObjects {
    pub fn new(client: kube::Client) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                state: Mutex::default(),
                changes: broadcast::channel(256).0,
            }),
        }
    }

    async fn get(&self, r: ObjectRef) -> Result<Option<Obj>> {
        // An empty name names nothing (a GET of it would be a list).
        if r.name.is_empty() {
            return Ok(None);
        }
        if let Some(Watched { value: Some(v), .. }) = self.shared.lock().watched.get(&r) {
            return Ok(v.clone());
        }
        let slot = {
            let mut st = self.shared.lock();
            if st.slots.len() >= CACHE_SWEEP_AT {
                sweep(&mut st.slots);
            }
            st.slots.entry(r.clone()).or_default().clone()
        };
        // One GET in flight per object: the others wait and take its answer.
        let mut slot = slot.lock().await;
        if let Some((at, v)) = &slot.fetched
            && at.elapsed() < CACHE_TTL
        {
            return Ok(v.clone());
        }
        match fetch(&self.shared.client, &r).await {
            Ok(v) => {
                slot.fetched = Some((Instant::now(), v.clone()));
                Ok(v)
            }
            // The API server away: what it last said stands (a pod restarting meanwhile
            // still gets its config), as upstream's caches keep it.
            Err(e) => match &slot.fetched {
                Some((_, last)) => {
                    tracing::warn!(object = %r, err = %e, "reading a referenced object; using what was read last");
                    Ok(last.clone())
                }
                None => Err(e),
            },
        }
    }
}

/// Drops the cached answers that are stale and not being fetched.
fn sweep(slots: &mut HashMap<ObjectRef, Arc<tokio::sync::Mutex<Slot>>>) {
    slots.retain(|_, slot| match slot.try_lock() {
        Ok(s) => s
            .fetched
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < CACHE_TTL),
        Err(_) => true,
    });
}

fn get_error(r: &ObjectRef, e: &kube::Error) -> Error {
    Error::Get {
        kind: r.kind.singular(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        message: e.to_string(),
    }
}

async fn fetch(client: &kube::Client, r: &ObjectRef) -> Result<Option<Obj>> {
    tracing::debug!(object = %r, "GET");
    let ns = r.namespace.as_str();
    let got = match r.kind {
        Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map(|o| o.map(|o| Obj::ConfigMap(Box::new(o)))),
        Kind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map(|o| o.map(|o| Obj::Secret(Box::new(o)))),
        Kind::ServiceAccount => Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map(|o| o.map(|o| Obj::ServiceAccount(Box::new(o)))),
    };
    got.map_err(|e| get_error(r, &e))
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch's news: the object (None: it does not exist) as listed or changed.
    fn set_watched(&self, r: &ObjectRef, value: Option<Obj>) {
        let mut st = self.lock();
        let Some(w) = st.watched.get_mut(r) else {
            return;
        };
        if changed(w.value.as_ref(), &value) {
            let first = w.value.is_none();
            w.value = Some(value);
            drop(st);
            if !first {
                tracing::info!(object = %r, "a referenced object changed");
            }
            let _ = self.changes.send(r.clone());
        }
    }

    /// The watch of a config map or secret, until aborted.
    async fn watch(self: Arc<Self>, r: ObjectRef) {
        let weak = Arc::downgrade(&self);
        let client = self.client.clone();
        drop(self);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
        match r.kind {
            Kind::ConfigMap => {
                let api = Api::<ConfigMap>::namespaced(client, &r.namespace);
                follow(weak, r, api, cfg, |o| Obj::ConfigMap(Box::new(o))).await;
            }
            Kind::Secret => {
                let api = Api::<Secret>::namespaced(client, &r.namespace);
                follow(weak, r, api, cfg, |o| Obj::Secret(Box::new(o))).await;
            }
            Kind::ServiceAccount => {}
        }
    }
}

/// Feeds one object's watch events into the watched value.
async fn follow<K>(
    shared: Weak<Shared>,
    r: ObjectRef,
    api: Api<K>,
    cfg: watcher::Config,
    wrap: fn(K) -> Obj,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut listing: Option<Option<K>> = None;
    while let Some(ev) = stream.next().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match ev {
            Err(e) => {
                tracing::warn!(object = %r, err = %e, "watching a referenced object; retrying");
            }
            Ok(watcher::Event::Init) => listing = Some(None),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(l) = listing.as_mut() {
                    *l = Some(o);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let v = listing.take().flatten().map(wrap);
                shared.set_watched(&r, v);
            }
            Ok(watcher::Event::Apply(o)) => shared.set_watched(&r, Some(wrap(o))),
            Ok(watcher::Event::Delete(_)) => shared.set_watched(&r, None),
        }
    }
}

fn expiry_of(status_expiry: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> SystemTime {
    let secs = status_expiry.0.as_second();
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

impl Objects for ApiObjects {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>>> {
        Box::pin(async move {
            let r = ObjectRef {
                kind: Kind::ConfigMap,
                namespace: namespace.into(),
                name: name.into(),
            };
            Ok(self.get(r).await?.and_then(|o| match o {
                Obj::ConfigMap(c) => Some(*c),
                _ => None,
            }))
        })
    }

    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>>> {
        Box::pin(async move {
            let r = ObjectRef {
                kind: Kind::Secret,
                namespace: namespace.into(),
                name: name.into(),
            };
            Ok(self.get(r).await?.and_then(|o| match o {
                Obj::Secret(s) => Some(*s),
                _ => None,
            }))
        })
    }

    fn service_account<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ServiceAccount>>> {
        Box::pin(async move {
            let r = ObjectRef {
                kind: Kind::ServiceAccount,
                namespace: namespace.into(),
                name: name.into(),
            };
            Ok(self.get(r).await?.and_then(|o| match o {
                Obj::ServiceAccount(s) => Some(*s),
                _ => None,
            }))
        })
    }

    fn service_account_token<'a>(
        &'a self,
        req: &'a pods::objects::TokenRequest,
    ) -> BoxFuture<'a, Result<Option<Token>>> {
        Box::pin(async move {
            let api = Api::<ServiceAccount>::namespaced(self.shared.client.clone(), &req.namespace);
            let body = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: req.audience.iter().cloned().collect(),
                    expiration_seconds: Some(req.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(req.pod_name.clone()),
                        uid: Some(req.pod_uid.clone()),
                    }),
                },
                ..Default::default()
            };
            tracing::debug!(namespace = %req.namespace, service_account = %req.service_account, pod = %req.pod_name, "TokenRequest");
            match api
                .create_token_request(&req.service_account, &PostParams::default(), &body)
                .await
            {
                Ok(tr) => {
                    let status = tr.status.ok_or_else(|| Error::Token {
                        namespace: req.namespace.clone(),
                        name: req.service_account.clone(),
                        message: "the answer has no status".into(),
                    })?;
                    Ok(Some(Token {
                        token: status.token,
                        expiry: expiry_of(&status.expiration_timestamp),
                    }))
                }
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(Error::Token {
                    namespace: req.namespace.clone(),
                    name: req.service_account.clone(),
                    message: e.to_string(),
                }),
            }
        })
    }

    fn services<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<Service>>> {
        Box::pin(async move {
            let slot = self
                .shared
                .lock()
                .services
                .entry(namespace.to_string())
                .or_default()
                .clone();
            let mut slot = slot.lock().await;
            if let Some((at, list)) = &slot.listed
                && at.elapsed() < CACHE_TTL
            {
                return Ok(list.clone());
            }
            let api = Api::<Service>::namespaced(self.shared.client.clone(), namespace);
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    slot.listed = Some((Instant::now(), list.items.clone()));
                    Ok(list.items)
                }
                Err(e) => match &slot.listed {
                    Some((_, last)) => {
                        tracing::warn!(%namespace, err = %e, "listing services; using the last list");
                        Ok(last.clone())
                    }
                    None => Err(Error::Services {
                        namespace: namespace.to_string(),
                        message: e.to_string(),
                    }),
                },
            }
        })
    }

    fn track(&self, pod_uid: &str, refs: &BTreeSet<ObjectRef>) {
        let refs: BTreeSet<ObjectRef> = refs
            .iter()
            .filter(|r| matches!(r.kind, Kind::ConfigMap | Kind::Secret))
            .cloned()
            .collect();
        let mut st = self.shared.lock();
        let before = st.pods.get(pod_uid).cloned().unwrap_or_default();
        if before == refs {
            return;
        }
        for r in refs.difference(&before) {
            match st.watched.get_mut(r) {
                Some(w) => w.pods += 1,
                None => {
                    tracing::debug!(object = %r, "watching a referenced object");
                    let task = tokio::spawn(Arc::clone(&self.shared).watch(r.clone()));
                    st.watched.insert(
                        r.clone(),
                        Watched {
                            value: None,
                            pods: 1,
                            task: task.abort_handle(),
                        },
                    );
                }
            }
        }
        for r in before.difference(&refs) {
            let gone = match st.watched.get_mut(r) {
                Some(w) => {
                    w.pods = w.pods.saturating_sub(1);
                    w.pods == 0
                }
                None => false,
            };
            if gone && let Some(w) = st.watched.remove(r) {
                tracing::debug!(object = %r, "no pod references the object; watch ended");
                w.task.abort();
            }
        }
        if refs.is_empty() {
            st.pods.remove(pod_uid);
        } else {
            st.pods.insert(pod_uid.to_string(), refs);
        }
    }

    fn changes(&self) -> Option<broadcast::Receiver<ObjectRef>> {
        Some(self.shared.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(rv: &str, value: &str) -> Obj {
        let mut c = ConfigMap::default();
        c.metadata.resource_version = Some(rv.into());
        c.data = Some([("k".to_string(), value.to_string())].into_iter().collect());
        Obj::ConfigMap(Box::new(c))
    }

    #[test]
    fn what_counts_as_a_change() {
        let cases = [
            (None, Some(cm("1", "a")), true, "first listing"),
            (None, None, true, "first listing: absent"),
            (Some(None), None, false, "still absent"),
            (
                Some(Some(cm("1", "a"))),
                Some(cm("1", "a")),
                false,
                "same version",
            ),
            (
                Some(Some(cm("1", "a"))),
                Some(cm("2", "b")),
                true,
                "new version",
            ),
            (Some(Some(cm("1", "a"))), None, true, "deleted"),
            (Some(None), Some(cm("3", "c")), true, "created"),
        ];
        for (before, after, want, name) in cases {
            assert_eq!(changed(before.as_ref(), &after), want, "{name}");
        }
    }

    #[test]
    fn token_expiry() {
        let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap_or_default(),
        );
        assert_eq!(
            expiry_of(&t),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }
}
