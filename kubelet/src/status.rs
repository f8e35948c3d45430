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

/// The strategic merge patch from `old` to `new` status: every field of `new`, and
/// `null` for the top-level fields `old` had and `new` has not (lists the API server
/// merges by key, conditions by type and container statuses by name, keep entries that
/// others own). `metadata.uid` makes the write conditional on the pod being the same.
pub fn status_patch(uid: &str, old: Option<&PodStatus>, new: &PodStatus) -> serde_json::Value {
    let mut status = serde_json::to_value(new).unwrap_or_default();
    if let (Some(old), Some(obj)) = (
        old.and_then(|o| serde_json::to_value(o).ok()),
        status.as_object_mut(),
    ) {
        for key in old.as_object().into_iter().flat_map(|o| o.keys()) {
            obj.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "metadata": { "uid": uid }, "status": status })
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
    async fn sync(&mut self, views: &BTreeMap<String, Pod>, pods: &Snapshot) -> bool {
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
            .filter_map(|(uid, p)| Some((uid.clone(), p, views.get(uid)?.status.as_ref()?)))
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
    async fn delete_finished(&mut self, views: &BTreeMap<String, Pod>, pods: &Snapshot) -> bool {
        let mut all = true;
        for uid in std::mem::take(&mut self.finished) {
            let Some(pod) = pods.pods.get(&uid) else {
                continue; // gone from the API server already
            };
            if pod.metadata.deletion_timestamp.is_none() {
                continue; // not being deleted: a pod the engine stopped for another reason
            }
            let final_written = views
                .get(&uid)
                .and_then(|v| v.status.as_ref())
                .is_none_or(|s| self.sent.get(&uid) == Some(s));
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
        let written = m.sync(&v, &p).await;
        let deleted = m.delete_finished(&v, &p).await;
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
