//! The status manager for pods from the API server: the engine's computed status is
//! patched into `pods/<name>/status` when it changes (the latest per pod, so a burst of
//! changes is one write and an outage queues one status per pod, never a backlog), and a
//! deleted pod whose termination finished is removed with grace period 0 and a UID
//! precondition after its final status, as the upstream kubelet does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{broadcast, watch};

use crate::api_pods::Snapshot;
use crate::kube_client::{is_conflict, is_not_found, status_code};

/// After a failed write, the next try.
const RETRY: Duration = Duration::from_secs(1);

/// The strategic merge patch from `old` to `new` status: all of `new`, with `null` for
/// every field `old` had and `new` has not (at any depth, inside merged list items
/// too), and `$patch: delete` for items of a merged list that went away. The lists the
/// API server merges by key (conditions by `type`, podIPs and hostIPs by `ip`) keep
/// entries others own; the rest are replaced whole. `metadata.uid` makes the write
/// conditional on the pod being the same one.
pub fn status_patch(uid: &str, old: Option<&PodStatus>, new: &PodStatus) -> serde_json::Value {
    let old = old.and_then(|o| serde_json::to_value(o).ok());
    let new = serde_json::to_value(new).unwrap_or_default();
    let status = two_way(old.as_ref(), &new, "");
    serde_json::json!({ "metadata": { "uid": uid }, "status": status })
}

/// The merge key of a list field of PodStatus, by its path.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        ".conditions" => Some("type"),
        ".podIPs" | ".hostIPs" => Some("ip"),
        _ => None,
    }
}

fn two_way(
    old: Option<&serde_json::Value>,
    new: &serde_json::Value,
    path: &str,
) -> serde_json::Value {
    use serde_json::Value;
    match new {
        Value::Object(n) => {
            let o = old.and_then(Value::as_object);
            let mut out = serde_json::Map::new();
            for (k, v) in n {
                let child = format!("{path}.{k}");
                out.insert(k.clone(), two_way(o.and_then(|o| o.get(k)), v, &child));
            }
            for k in o.into_iter().flat_map(|o| o.keys()) {
                out.entry(k.clone()).or_insert(Value::Null);
            }
            Value::Object(out)
        }
        Value::Array(items) => match merge_key(path) {
            Some(key) => {
                let olds = old.and_then(Value::as_array).cloned().unwrap_or_default();
                let find = |k: &Value| olds.iter().find(|o| o.get(key) == Some(k));
                let mut out: Vec<Value> = items
                    .iter()
                    .map(|item| two_way(item.get(key).and_then(find), item, path))
                    .collect();
                for gone in olds.iter().filter(|o| {
                    !items
                        .iter()
                        .any(|i| i.get(key).is_some() && i.get(key) == o.get(key))
                }) {
                    if let Some(k) = gone.get(key) {
                        out.push(serde_json::json!({ key: k, "$patch": "delete" }));
                    }
                }
                Value::Array(out)
            }
            None => new.clone(),
        },
        _ => new.clone(),
    }
}

/// Rate of API writes (`kubeAPIQPS`, `kubeAPIBurst`): a token bucket.
#[derive(Debug)]
pub struct Limiter {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Limiter {
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            qps: qps.max(0.001),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: tokio::time::Instant::now(),
        }
    }

    /// Waits for a token.
    pub async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.qps).min(self.burst);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.qps);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.at = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Where the manager keeps what it wrote.
struct Manager {
    client: kube::Client,
    /// The status the API server has, as we last wrote it.
    sent: HashMap<String, PodStatus>,
    /// Pods whose termination finished, to delete once their final status is in.
    finished: BTreeSet<String>,
    limiter: Limiter,
}

impl Manager {
    fn api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Writes every status that differs from what was sent; true when all went in.
    /// A static pod's status goes to its mirror pod.
    async fn sync(
        &mut self,
        views: &BTreeMap<String, Pod>,
        pods: &Snapshot,
        rejected: &BTreeMap<String, PodStatus>,
    ) -> bool {
        let mut all = true;
        let statics = views.values().filter(|v| {
            v.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(pods::ANNOTATION_CONFIG_SOURCE))
                .is_some_and(|s| s != "api")
        });
        let targets = pods
            .pods
            .iter()
            .filter_map(|(uid, p)| {
                let status = rejected
                    .get(uid)
                    .or_else(|| views.get(uid)?.status.as_ref())?;
                Some((uid.clone(), p, status))
            })
            .chain(statics.filter_map(|v| {
                let mirror = pods.mirrors.get(&crate::api_pods::key(v))?;
                Some((mirror.metadata.uid.clone()?, mirror, v.status.as_ref()?))
            }))
            .collect::<Vec<_>>();
        let live: BTreeSet<String> = targets.iter().map(|(u, _, _)| u.clone()).collect();
        for (uid, desired, status) in targets {
            let uid = &uid;
            if self.sent.get(uid) == Some(status) {
                continue;
            }
            let ns = desired.metadata.namespace.as_deref().unwrap_or("default");
            let name = desired.metadata.name.as_deref().unwrap_or_default();
            let patch = status_patch(uid, self.sent.get(uid), status);
            self.limiter.take().await;
            match self
                .api(ns)
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    self.sent.insert(uid.clone(), status.clone());
                }
                // Gone, or a new pod of that name: nothing to write any more.
                Err(e) if is_not_found(&e) || is_conflict(&e) => {
                    self.sent.insert(uid.clone(), status.clone());
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), err = %e, "writing pod status; will retry");
                    all = false;
                }
            }
        }
        self.sent.retain(|uid, _| live.contains(uid));
        all
    }

    /// Deletes the finished pods whose final status is written.
    async fn delete_finished(
        &mut self,
        views: &BTreeMap<String, Pod>,
        pods: &Snapshot,
        rejected: &BTreeMap<String, PodStatus>,
    ) -> bool {
        let mut all = true;
        for uid in std::mem::take(&mut self.finished) {
            let Some(pod) = pods.pods.get(&uid) else {
                continue; // gone from the API server already
            };
            if pod.metadata.deletion_timestamp.is_none() {
                continue; // not being deleted: a pod the engine stopped for another reason
            }
            let final_status = rejected
                .get(&uid)
                .or_else(|| views.get(&uid).and_then(|v| v.status.as_ref()));
            let final_written = final_status.is_none_or(|s| self.sent.get(&uid) == Some(s));
            if !final_written {
                self.finished.insert(uid);
                all = false;
                continue;
            }
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            self.limiter.take().await;
            match self.api(ns).delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(pod = %format!("{ns}/{name}"), "pod deleted from the API server")
                }
                Err(e) if is_not_found(&e) || status_code(&e) == Some(409) => {}
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), err = %e, "deleting a terminated pod; will retry");
                    self.finished.insert(uid);
                    all = false;
                }
            }
        }
        all
    }
}

/// Runs until `stop`: writes statuses of the API pods the engine runs and removes
/// deleted ones once terminated.
pub async fn run(
    client: kube::Client,
    mut views: watch::Receiver<pods::engine::PodViews>,
    mut terminated: broadcast::Receiver<String>,
    mut pods: watch::Receiver<Snapshot>,
    mut rejected: watch::Receiver<BTreeMap<String, PodStatus>>,
    limiter: Limiter,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut m = Manager {
        client,
        sent: HashMap::new(),
        finished: BTreeSet::new(),
        limiter,
    };
    loop {
        let v = views.borrow_and_update().clone();
        let p = pods.borrow_and_update().clone();
        let r = rejected.borrow_and_update().clone();
        // A rejected pod never ran: once deleted it may go at once (its Failed status
        // written first).
        m.finished.extend(
            r.keys()
                .filter(|u| {
                    p.pods
                        .get(*u)
                        .is_some_and(|x| x.metadata.deletion_timestamp.is_some())
                })
                .cloned(),
        );
        let written = m.sync(&v, &p, &r).await;
        let deleted = m.delete_finished(&v, &p, &r).await;
        let retry = !(written && deleted);
        let timer = async {
            if retry {
                tokio::time::sleep(RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            r = pods.changed() => if r.is_err() { return },
            r = rejected.changed() => if r.is_err() { return },
            r = terminated.recv() => match r {
                Ok(uid) => { m.finished.insert(uid); }
                // Missed some: every deleted pod is checked again.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    m.finished.extend(p.pods.iter().filter(|(_, x)| x.metadata.deletion_timestamp.is_some()).map(|(u, _)| u.clone()));
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = timer => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_clears_what_went_away_and_names_the_pod() {
        let old: PodStatus = serde_json::from_value(serde_json::json!({
            "phase": "Pending", "message": "waiting", "reason": "Init",
            "conditions": [{"type": "Ready", "status": "False"}]
        }))
        .expect("old");
        let new: PodStatus = serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]
        }))
        .expect("new");
        let p = status_patch("u1", Some(&old), &new);
        assert_eq!(p["metadata"]["uid"], "u1");
        assert_eq!(p["status"]["phase"], "Running");
        assert!(p["status"]["message"].is_null() && p["status"].get("message").is_some());
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
        let first = status_patch("u1", None, &new);
        assert!(first["status"].get("message").is_none());

        // Inside a merged list item: a reason and message that went away are nulled;
        // a condition that went away is deleted; podIPs by ip.
        let old: PodStatus = serde_json::from_value(serde_json::json!({
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "x"},
                {"type": "Gone", "status": "True"}
            ],
            "podIPs": [{"ip": "10.0.0.1"}]
        }))
        .expect("old");
        let new: PodStatus = serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIPs": [{"ip": "10.0.0.2"}]
        }))
        .expect("new");
        let p = status_patch("u1", Some(&old), &new);
        let ready = &p["status"]["conditions"][0];
        assert_eq!(ready["status"], "True");
        assert!(ready.get("reason").is_some_and(|r| r.is_null()), "{p}");
        assert!(ready.get("message").is_some_and(|r| r.is_null()), "{p}");
        assert_eq!(
            p["status"]["conditions"][1],
            serde_json::json!({"type": "Gone", "$patch": "delete"})
        );
        assert_eq!(
            p["status"]["podIPs"],
            serde_json::json!([{"ip": "10.0.0.2"}, {"ip": "10.0.0.1", "$patch": "delete"}])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_allows_a_burst_then_the_rate() {
        let mut l = Limiter::new(10.0, 3);
        let t0 = tokio::time::Instant::now();
        for _ in 0..3 {
            l.take().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the burst is free");
        l.take().await;
        assert!(
            t0.elapsed() >= Duration::from_millis(99),
            "{:?}",
            t0.elapsed()
        );
    }
}
