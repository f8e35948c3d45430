//! Service environment variables, as upstream's kubelet sets them (pkg/kubelet/envvars):
//! for each service with a cluster IP, `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`,
//! `<NAME>_SERVICE_PORT_<PORTNAME>` for named ports, and the Docker-link style
//! `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

/// Where the master service lives.
pub const MASTER_NAMESPACE: &str = "default";
/// The services every pod gets variables for, whatever `enableServiceLinks` says.
const MASTER_SERVICES: &[&str] = &["kubernetes"];

/// The variables of a pod in `namespace`: the master services of the `default`
/// namespace always, and with `enable_service_links` every service of the pod's own
/// namespace (one of the same name there wins over a master service).
pub fn service_env(
    namespace: &str,
    enable_service_links: bool,
    own: &[Service],
    master: &[Service],
) -> BTreeMap<String, String> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    if namespace != MASTER_NAMESPACE || !enable_service_links {
        for s in master {
            let name = s.metadata.name.as_deref().unwrap_or_default();
            if MASTER_SERVICES.contains(&name) && has_cluster_ip(s) {
                chosen.insert(name.to_string(), s);
            }
        }
    }
    if enable_service_links {
        for s in own.iter().filter(|s| has_cluster_ip(s)) {
            chosen.insert(s.metadata.name.clone().unwrap_or_default(), s);
        }
    }
    let mut out = BTreeMap::new();
    for s in chosen.values() {
        for (k, v) in from_service(s) {
            out.insert(k, v);
        }
    }
    out
}

/// A cluster IP that is set: not empty, not `None` (headless).
fn has_cluster_ip(s: &Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|sp| sp.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// `my-svc` → `MY_SVC`.
fn var_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// The variables of one service, in upstream's order.
fn from_service(s: &Service) -> Vec<(String, String)> {
    let Some(spec) = s.spec.as_ref() else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = var_name(s.metadata.name.as_deref().unwrap_or_default());
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.clone()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for p in ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", var_name(name)),
                p.port.to_string(),
            ));
        }
    }
    // An IPv6 address is bracketed in the URLs (Go's net.JoinHostPort).
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p
            .protocol
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("TCP");
        let lower = proto.to_lowercase();
        let url = format!("{lower}://{host}:{}", p.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((port_prefix.clone(), url));
        out.push((format!("{port_prefix}_PROTO"), lower));
        out.push((format!("{port_prefix}_PORT"), p.port.to_string()));
        out.push((format!("{port_prefix}_ADDR"), ip.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    #[test]
    fn variables_of_a_service() {
        let s = svc(
            json!({"metadata": {"name": "my-db"}, "spec": {"clusterIP": "10.0.0.7", "ports": [
                {"name": "sql", "port": 5432},
                {"name": "admin-ui", "port": 8080, "protocol": "UDP"}
            ]}}),
        );
        let got: BTreeMap<String, String> = from_service(&s).into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("MY_DB_SERVICE_HOST", "10.0.0.7"),
            ("MY_DB_SERVICE_PORT", "5432"),
            ("MY_DB_SERVICE_PORT_SQL", "5432"),
            ("MY_DB_SERVICE_PORT_ADMIN_UI", "8080"),
            ("MY_DB_PORT", "tcp://10.0.0.7:5432"),
            ("MY_DB_PORT_5432_TCP", "tcp://10.0.0.7:5432"),
            ("MY_DB_PORT_5432_TCP_PROTO", "tcp"),
            ("MY_DB_PORT_5432_TCP_PORT", "5432"),
            ("MY_DB_PORT_5432_TCP_ADDR", "10.0.0.7"),
            ("MY_DB_PORT_8080_UDP", "udp://10.0.0.7:8080"),
            ("MY_DB_PORT_8080_UDP_PROTO", "udp"),
            ("MY_DB_PORT_8080_UDP_PORT", "8080"),
            ("MY_DB_PORT_8080_UDP_ADDR", "10.0.0.7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);

        let v6 = svc(
            json!({"metadata": {"name": "v6"}, "spec": {"clusterIP": "fd00::1", "ports": [{"port": 80}]}}),
        );
        let got: BTreeMap<String, String> = from_service(&v6).into_iter().collect();
        assert_eq!(got["V6_PORT"], "tcp://[fd00::1]:80");
        assert_eq!(got["V6_PORT_80_TCP_ADDR"], "fd00::1");
    }

    #[test]
    fn which_services_a_pod_sees() {
        let kubernetes = svc(
            json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}}),
        );
        let other_default = svc(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}));
        let headless = svc(json!({"metadata": {"name": "peers", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"port": 7000}]}}));
        let mine = svc(json!({"metadata": {"name": "cache", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 6379}]}}));
        let master = [kubernetes.clone(), other_default.clone()];
        let own = [headless, mine];

        let env = service_env("ns", true, &own, &master);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["CACHE_SERVICE_HOST"], "10.96.0.3");
        assert!(!env.contains_key("WEB_SERVICE_HOST"), "another namespace");
        assert!(!env.contains_key("PEERS_SERVICE_HOST"), "headless");

        let env = service_env("ns", false, &own, &master);
        assert!(env.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!env.contains_key("CACHE_SERVICE_HOST"));

        // In the default namespace with links: all of its services.
        let env = service_env("default", true, &master, &master);
        assert!(
            env.contains_key("KUBERNETES_SERVICE_HOST") && env.contains_key("WEB_SERVICE_HOST")
        );

        // A `kubernetes` service of the pod's namespace wins over the master one.
        let local = svc(
            json!({"metadata": {"name": "kubernetes", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.9.9", "ports": [{"port": 443}]}}),
        );
        let env = service_env("ns", true, &[local], &master);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.9.9");
    }
}
