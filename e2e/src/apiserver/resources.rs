//! The resources this server serves: one static table that routing, discovery, the
//! store keys and the test helpers all read, so a resource is added in one place.

use std::fmt;

/// A group/version/resource, as tests name what they read and write:
/// `Gvr::PODS`, `Gvr::LEASES`, or `Gvr::new("apps", "v1", "deployments")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gvr {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
}

impl Gvr {
    pub const fn new(group: &'static str, version: &'static str, resource: &'static str) -> Self {
        Self {
            group,
            version,
            resource,
        }
    }

    pub const NODES: Gvr = Gvr::new("", "v1", "nodes");
    pub const PODS: Gvr = Gvr::new("", "v1", "pods");
    pub const NAMESPACES: Gvr = Gvr::new("", "v1", "namespaces");
    pub const CONFIGMAPS: Gvr = Gvr::new("", "v1", "configmaps");
    pub const SECRETS: Gvr = Gvr::new("", "v1", "secrets");
    pub const SERVICEACCOUNTS: Gvr = Gvr::new("", "v1", "serviceaccounts");
    pub const SERVICES: Gvr = Gvr::new("", "v1", "services");
    pub const EVENTS: Gvr = Gvr::new("", "v1", "events");
    pub const EVENTS_V1: Gvr = Gvr::new("events.k8s.io", "v1", "events");
    pub const LEASES: Gvr = Gvr::new("coordination.k8s.io", "v1", "leases");
    pub const DEPLOYMENTS: Gvr = Gvr::new("apps", "v1", "deployments");
    pub const CSRS: Gvr = Gvr::new("certificates.k8s.io", "v1", "certificatesigningrequests");
    pub const RUNTIMECLASSES: Gvr = Gvr::new("node.k8s.io", "v1", "runtimeclasses");
}

impl fmt::Display for Gvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.resource)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.resource)
        }
    }
}

/// What a resource does beyond plain storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Objects kept in the store.
    Stored,
    /// `create` only, answered at once and never stored (TokenReview, SubjectAccessReview).
    Review,
}

/// A subresource: `pods/status`, `serviceaccounts/token`.
#[derive(Debug)]
pub struct Subresource {
    pub name: &'static str,
    /// The kind sent and returned, with its group and version when not the parent's.
    pub kind: &'static str,
    pub group: Option<&'static str>,
    pub version: Option<&'static str>,
    pub verbs: &'static [&'static str],
}

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    pub behavior: Behavior,
    /// The storage the objects live in, when shared with another version's resource
    /// (events.k8s.io/v1 events are core/v1 events, converted on the way in and out).
    pub storage: Option<Gvr>,
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_DELETECOLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const CREATE_ONLY: &[&str] = &["create"];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

const fn status_sub(kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        kind,
        group: None,
        version: None,
        verbs: STATUS_VERBS,
    }
}

const fn stored(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
        behavior: Behavior::Stored,
        storage: None,
    }
}

const fn review(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        verbs: CREATE_ONLY,
        behavior: Behavior::Review,
        ..stored(group, "v1", plural, singular, kind, namespaced)
    }
}

/// Every resource served, in discovery order.
pub static RESOURCES: &[Resource] = &[
    Resource {
        short_names: &["cm"],
        ..stored("", "v1", "configmaps", "configmap", "ConfigMap", true)
    },
    Resource {
        short_names: &["ev"],
        ..stored("", "v1", "events", "event", "Event", true)
    },
    Resource {
        short_names: &["ns"],
        verbs: NO_DELETECOLLECTION,
        subresources: &[
            status_sub("Namespace"),
            Subresource {
                name: "finalize",
                kind: "Namespace",
                group: None,
                version: None,
                verbs: &["update"],
            },
        ],
        ..stored("", "v1", "namespaces", "namespace", "Namespace", false)
    },
    Resource {
        short_names: &["no"],
        subresources: &[status_sub("Node")],
        ..stored("", "v1", "nodes", "node", "Node", false)
    },
    Resource {
        short_names: &["po"],
        categories: &["all"],
        subresources: &[status_sub("Pod")],
        ..stored("", "v1", "pods", "pod", "Pod", true)
    },
    stored("", "v1", "secrets", "secret", "Secret", true),
    Resource {
        short_names: &["sa"],
        subresources: &[Subresource {
            name: "token",
            kind: "TokenRequest",
            group: Some("authentication.k8s.io"),
            version: Some("v1"),
            verbs: CREATE_ONLY,
        }],
        ..stored(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
        )
    },
    Resource {
        short_names: &["svc"],
        categories: &["all"],
        verbs: &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
        subresources: &[status_sub("Service")],
        ..stored("", "v1", "services", "service", "Service", true)
    },
    Resource {
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[status_sub("Deployment")],
        ..stored(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            true,
        )
    },
    review(
        "authentication.k8s.io",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false,
    ),
    review(
        "authentication.k8s.io",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        false,
    ),
    review(
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true,
    ),
    review(
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
    ),
    review(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
    ),
    Resource {
        short_names: &["csr"],
        subresources: &[
            Subresource {
                name: "approval",
                kind: "CertificateSigningRequest",
                group: None,
                version: None,
                verbs: STATUS_VERBS,
            },
            status_sub("CertificateSigningRequest"),
        ],
        ..stored(
            "certificates.k8s.io",
            "v1",
            "certificatesigningrequests",
            "certificatesigningrequest",
            "CertificateSigningRequest",
            false,
        )
    },
    stored(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
    ),
    Resource {
        short_names: &["ev"],
        storage: Some(Gvr::EVENTS),
        ..stored("events.k8s.io", "v1", "events", "event", "Event", true)
    },
    stored(
        "node.k8s.io",
        "v1",
        "runtimeclasses",
        "runtimeclass",
        "RuntimeClass",
        false,
    ),
];

impl Resource {
    pub fn gvr(&self) -> Gvr {
        Gvr::new(self.group, self.version, self.plural)
    }

    /// The resource whose objects these are in the store.
    pub fn storage(&self) -> Gvr {
        self.storage.unwrap_or_else(|| self.gvr())
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        group_version(self.group, self.version)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }
}

/// `v1` for the core group, `group/version` otherwise.
pub fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// The served resource for `gvr`.
pub fn find(gvr: Gvr) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == gvr.group && r.version == gvr.version && r.plural == gvr.resource)
}

/// The served resource at `group`/`version` called `plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The served group versions, in discovery order (core `v1` first).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constant_is_served() {
        for gvr in [
            Gvr::NODES,
            Gvr::PODS,
            Gvr::NAMESPACES,
            Gvr::CONFIGMAPS,
            Gvr::SECRETS,
            Gvr::SERVICEACCOUNTS,
            Gvr::SERVICES,
            Gvr::EVENTS,
            Gvr::EVENTS_V1,
            Gvr::LEASES,
            Gvr::DEPLOYMENTS,
            Gvr::CSRS,
            Gvr::RUNTIMECLASSES,
        ] {
            assert!(find(gvr).is_some(), "{gvr} not served");
        }
    }

    #[test]
    fn events_v1_share_core_storage() {
        let r = find(Gvr::EVENTS_V1).expect("served");
        assert_eq!(r.storage(), Gvr::EVENTS);
        assert_eq!(r.api_version(), "events.k8s.io/v1");
    }
}
