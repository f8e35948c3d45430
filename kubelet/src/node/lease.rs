//! The node's heartbeat: a Lease named after the node in `kube-node-lease`, renewed
//! every [`RENEW_EVERY`] with a [`DURATION`] the node lifecycle controller waits before
//! it marks the node unknown; owned by the Node, so it goes with it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::kube_client::is_conflict;

pub const NAMESPACE: &str = "kube-node-lease";
/// Upstream: a quarter of the duration.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
pub const DURATION: i32 = 40;
/// After a failed renewal, the next try (upstream's backoff starts at 200 ms).
const RETRY: Duration = Duration::from_millis(500);

/// The lease as it should be now: ours, renewed, owned by the node.
pub fn renewed(node_name: &str, node_uid: Option<&str>, current: Option<Lease>) -> Lease {
    let mut lease = current.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(node_name.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: None,
    });
    if let Some(uid) = node_uid {
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name.into(),
            uid: uid.into(),
            ..Default::default()
        };
        let owners = lease.metadata.owner_references.get_or_insert_with(Vec::new);
        if !owners
            .iter()
            .any(|o| o.kind == "Node" && o.name == node_name)
        {
            owners.push(owner);
        }
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(node_name.into());
    spec.lease_duration_seconds = Some(DURATION);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    lease
}

/// Renews the lease until `stop`; an API-server outage is retried, never fatal.
pub async fn renew_loop(
    client: kube::Client,
    node_name: String,
    stop: tokio_util::sync::CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
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
        let wait = match renew_once(&leases, &node_name, node_uid.as_deref()).await {
            Ok(()) => RENEW_EVERY,
            Err(e) => {
                tracing::warn!(node = %node_name, err = %e, "renewing the node lease");
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn renew_once(
    leases: &Api<Lease>,
    node_name: &str,
    node_uid: Option<&str>,
) -> Result<(), kube::Error> {
    match leases.get_opt(node_name).await? {
        Some(current) => {
            let next = renewed(node_name, node_uid, Some(current));
            match leases
                .replace(node_name, &PostParams::default(), &next)
                .await
            {
                // Someone else wrote it meanwhile: the next round reads it again.
                Err(e) if is_conflict(&e) => Ok(()),
                other => other.map(drop),
            }
        }
        None => {
            let next = renewed(node_name, node_uid, None);
            match leases.create(&PostParams::default(), &next).await {
                // Created meanwhile (another instance, a restart): renewed next round.
                Err(e) if is_conflict(&e) => Ok(()),
                other => other.map(drop),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_ours_owned_by_the_node_and_renewed() {
        let l = renewed("edge-1", Some("uid-9"), None);
        assert_eq!(l.metadata.namespace.as_deref(), Some(NAMESPACE));
        let spec = l.spec.clone().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("edge-1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        let owners = l.metadata.owner_references.clone().expect("owners");
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("Node", "uid-9")
        );
        let again = renewed("edge-1", Some("uid-9"), Some(l));
        assert_eq!(again.metadata.owner_references.map(|o| o.len()), Some(1));
    }
}
