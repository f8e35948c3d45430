//! The API-server pod source: the pods bound to this node (field selector
//! `spec.nodeName=<node>`), kept by the kube-runtime watcher. A watch that expires
//! (410 Gone), reconnects or relists only replaces the set when the new list is whole,
//! and an unchanged pod is handed to the engine unchanged, so nothing restarts. While
//! the API server is away the last set stands: pods keep running.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::watch;

/// The annotation that makes a pod the mirror of a static pod (its value: the static
/// pod's config hash). A mirror is never run: it shows the static pod to the cluster.
pub const ANNOTATION_MIRROR: &str = "kubernetes.io/config.mirror";

/// The pods bound to the node, by UID, as the engine should see them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub pods: BTreeMap<String, Pod>,
    /// Mirror pods by `namespace/name`, as the API server has them.
    pub mirrors: BTreeMap<String, Pod>,
    /// False until the first complete list: orphans must not be judged before.
    pub synced: bool,
}

pub fn is_mirror(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_MIRROR))
}

/// `namespace/name`.
pub fn key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A pod as the engine gets it: marked as from the API (so it is no static pod), with
/// what changes on every status write left out (the engine computes the status; a
/// new resourceVersion alone must not wake the pod's worker).
pub fn for_engine(mut pod: Pod) -> Pod {
    pod.status = None;
    pod.metadata.resource_version = None;
    pod.metadata.managed_fields = None;
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(pods::ANNOTATION_CONFIG_SOURCE.into(), "api".into());
    pod
}

fn uid(p: &Pod) -> Option<String> {
    p.metadata.uid.clone()
}

/// Starts watching; the receiver sees every complete, changed set.
pub fn watch(client: kube::Client, node_name: &str) -> watch::Receiver<Snapshot> {
    let (tx, rx) = watch::channel(Snapshot::default());
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        // Every pod as the API server has it, by UID.
        let mut current: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, Pod>> = None;
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(err = %e, "watching this node's pods; retrying");
                    continue;
                }
            };
            match ev {
                watcher::Event::Init => listing = Some(BTreeMap::new()),
                watcher::Event::InitApply(p) => {
                    if let (Some(l), Some(u)) = (listing.as_mut(), uid(&p)) {
                        l.insert(u, p);
                    }
                    continue;
                }
                watcher::Event::InitDone => {
                    current = listing.take().unwrap_or_default();
                    tracing::info!(pods = current.len(), "pods bound to this node listed");
                }
                watcher::Event::Apply(p) => {
                    if let Some(u) = uid(&p) {
                        current.insert(u, p);
                    }
                }
                watcher::Event::Delete(p) => {
                    if let Some(u) = uid(&p) {
                        current.remove(&u);
                    }
                }
            }
            let next = Snapshot {
                pods: current
                    .iter()
                    .filter(|(_, p)| !is_mirror(p))
                    .map(|(u, p)| (u.clone(), for_engine(p.clone())))
                    .collect(),
                mirrors: current
                    .values()
                    .filter(|p| is_mirror(p))
                    .map(|p| (key(p), p.clone()))
                    .collect(),
                synced: true,
            };
            tx.send_if_modified(|s| {
                if *s == next {
                    false
                } else {
                    *s = next;
                    true
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_copy_ignores_status_writes() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1", "resourceVersion": "7",
                          "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"}
        }))
        .expect("pod");
        let mut q = p.clone();
        q.metadata.resource_version = Some("8".into());
        q.status = None;
        let (a, b) = (for_engine(p), for_engine(q));
        assert_eq!(a, b, "a status write alone changes nothing the engine sees");
        let ann = a.metadata.annotations.expect("annotations");
        assert_eq!(ann[pods::ANNOTATION_CONFIG_SOURCE], "api");
        assert_eq!(ann["a"], "b");
    }
}
