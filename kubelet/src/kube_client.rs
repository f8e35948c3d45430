//! The API-server client: a kubeconfig (client certificate or bearer token) turned into
//! a `kube` client, and the few error shapes the agent acts on.

/// The HTTP status of an API error answer (`None` for a transport failure).
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    status_code(e) == Some(404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    status_code(e) == Some(409)
}
