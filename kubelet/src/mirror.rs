//! Mirror pods: each static pod is shown to the cluster as a pod object of the same
//! name bound to this node, annotated `kubernetes.io/config.mirror: <config hash>` and
//! owned by the Node (what the NodeRestriction admission plugin lets a node create).
//! One that is deleted, or that mirrors an older version of its manifest, is made
//! again; one whose static pod is gone is deleted. The mirror is never run: the
//! static pod is, and its status is written to the mirror ([`crate::status`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::sync::watch;

use crate::api_pods::{ANNOTATION_MIRROR, Snapshot, key};
use crate::kube_client::{is_conflict, is_not_found};
use crate::static_pods::ANNOTATION_HASH;

const RETRY: Duration = Duration::from_secs(1);

fn hash(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HASH))
        .map(String::as_str)
}

/// The mirror of a static pod: its spec on this node, its labels and annotations, the
/// mirror annotation, owned by the node.
pub fn mirror_of(static_pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let mut annotations = static_pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(
        ANNOTATION_MIRROR.into(),
        hash(static_pod).unwrap_or_default().into(),
    );
    let mut spec = static_pod.spec.clone().unwrap_or_default();
    spec.node_name = Some(node_name.into());
    Pod {
        metadata: ObjectMeta {
            name: static_pod.metadata.name.clone(),
            namespace: static_pod.metadata.namespace.clone(),
            labels: static_pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.into(),
                uid: node_uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// What to do so the mirrors match the static pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create the mirror of this static pod.
    Create(Box<Pod>),
    /// Delete this mirror (by `namespace/name` and UID).
    Delete { key: String, uid: String },
}

/// Compares static pods (by UID) with mirrors (by `namespace/name`): a mirror of no
/// static pod, or of an older manifest, is deleted; a static pod with no mirror gets
/// one (after a stale one is gone: the next round).
pub fn plan(statics: &BTreeMap<String, Pod>, mirrors: &BTreeMap<String, Pod>) -> Vec<Action> {
    let wanted: BTreeMap<String, &Pod> = statics.values().map(|p| (key(p), p)).collect();
    let mut out = Vec::new();
    for (k, m) in mirrors {
        let mirrored = m
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_MIRROR))
            .map(String::as_str);
        let current = wanted.get(k).is_some_and(|s| hash(s) == mirrored);
        // Deleted by someone (a bound pod waits for its node): removed for good, and
        // made again below once gone.
        if !current || m.metadata.deletion_timestamp.is_some() {
            out.push(Action::Delete {
                key: k.clone(),
                uid: m.metadata.uid.clone().unwrap_or_default(),
            });
        }
    }
    for (k, s) in &wanted {
        if !mirrors.contains_key(k) {
            out.push(Action::Create(Box::new((*s).clone())));
        }
    }
    out
}

/// Keeps the mirrors in step until `stop`. Failures are retried; an outage only
/// delays them.
pub async fn run(
    client: kube::Client,
    node_name: String,
    mut statics: watch::Receiver<crate::static_pods::Snapshot>,
    mut api: watch::Receiver<Snapshot>,
    stop: tokio_util::sync::CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node_uid: Option<String> = None;
    loop {
        if node_uid.is_none() {
            node_uid = nodes
                .get_opt(&node_name)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.metadata.uid);
        }
        let s = statics.borrow_and_update().pods.clone();
        let a = api.borrow_and_update().clone();
        let mut failed = node_uid.is_none() || !a.synced;
        if !failed {
            let uid = node_uid.clone().unwrap_or_default();
            for action in plan(&s, &a.mirrors) {
                if let Err(e) = apply(&client, &node_name, &uid, &action).await {
                    tracing::warn!(err = %e, ?action, "mirror pod; will retry");
                    failed = true;
                }
            }
        }
        let timer = async {
            if failed {
                tokio::time::sleep(RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            r = statics.changed() => if r.is_err() { return },
            r = api.changed() => if r.is_err() { return },
            _ = timer => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn apply(
    client: &kube::Client,
    node_name: &str,
    node_uid: &str,
    action: &Action,
) -> Result<(), kube::Error> {
    match action {
        Action::Create(s) => {
            let m = mirror_of(s, node_name, node_uid);
            let ns = m
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match api.create(&PostParams::default(), &m).await {
                Ok(_) => {
                    tracing::info!(pod = %key(&m), "mirror pod created");
                    Ok(())
                }
                // One of that name exists (a pod of the API, or a mirror being
                // deleted): tried again when it changes.
                Err(e) if is_conflict(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Action::Delete { key, uid } => {
            let (ns, name) = key.split_once('/').unwrap_or(("default", key));
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(pod = %key, "mirror pod deleted");
                    Ok(())
                }
                Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_pod(name: &str, hash: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "kube-system", "uid": hash,
                         "annotations": {"kubernetes.io/config.hash": hash,
                                         "kubernetes.io/config.source": "file"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .expect("pod")
    }

    #[test]
    fn mirrors_follow_their_static_pods() {
        let s = static_pod("etcd-n1", "h1");
        let m = mirror_of(&s, "n1", "node-uid");
        let ann = m.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann[ANNOTATION_MIRROR], "h1");
        assert_eq!(
            m.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("n1")
        );
        let owner = &m.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", "node-uid")
        );

        let statics = BTreeMap::from([("h1".to_string(), s.clone())]);
        // None yet: create.
        assert_eq!(
            plan(&statics, &BTreeMap::new()),
            [Action::Create(Box::new(s.clone()))]
        );
        // Current: nothing.
        let mut mm = m.clone();
        mm.metadata.uid = Some("m1".into());
        let mirrors = BTreeMap::from([("kube-system/etcd-n1".to_string(), mm.clone())]);
        assert!(plan(&statics, &mirrors).is_empty());
        // The manifest changed: the old mirror goes (and is made again once gone).
        let newer = BTreeMap::from([("h2".to_string(), static_pod("etcd-n1", "h2"))]);
        assert_eq!(
            plan(&newer, &mirrors),
            [Action::Delete {
                key: "kube-system/etcd-n1".into(),
                uid: "m1".into()
            }]
        );
        // The static pod is gone: its mirror goes.
        assert_eq!(
            plan(&BTreeMap::new(), &mirrors),
            [Action::Delete {
                key: "kube-system/etcd-n1".into(),
                uid: "m1".into()
            }]
        );
    }
}
