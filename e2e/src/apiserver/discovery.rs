//! Discovery documents in the legacy (non-aggregated) format, `/version`, and a minimal
//! OpenAPI v3 index.
//!
//! kubectl asks for aggregated discovery first and falls back to these documents when
//! they come back as plain `application/json`. The OpenAPI v3 documents only describe
//! each resource's PATCH operation with its `fieldValidation` parameter: enough for
//! kubectl to see that the server validates fields itself (so it skips client-side
//! schema validation) and to compute apply patches from its compiled-in types.

use serde_json::{Value, json};

use super::resources::{RESOURCES, Resource, group_version, group_versions};

/// The version this server claims to be.
pub const GIT_VERSION: &str = "v1.36.0";

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "36",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str) -> Value {
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": group_version(g, v), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// `GET /apis`.
pub fn groups() -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in group_versions() {
        if !g.is_empty() && !names.contains(&g) {
            names.push(g);
        }
    }
    let groups: Vec<Value> = names.into_iter().map(group_entry).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`, if the group is served.
pub fn group(group: &str) -> Option<Value> {
    if group.is_empty() || !group_versions().iter().any(|(g, _)| *g == group) {
        return None;
    }
    let mut entry = group_entry(group);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

fn resource_entry(r: &Resource) -> Value {
    let mut entry = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    entry
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`, if served.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in served {
        list.push(resource_entry(r));
        for s in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if let Some(g) = s.group {
                entry["group"] = json!(g);
            }
            if let Some(v) = s.version {
                entry["version"] = json!(v);
            }
            list.push(entry);
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": list,
    }))
}

/// `api/v1` or `apis/<group>/<version>`: the OpenAPI v3 path of a group version.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in group_versions() {
        let p = openapi_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<api/v1 | apis/group/version>`, if served.
pub fn openapi_group_version(path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>()[..] {
        ["api", v] => ("", v),
        ["apis", g, v] => (g, v),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        if !r.allows("patch") {
            continue;
        }
        let prefix = format!("/{}", openapi_path(group, version));
        let object_path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        paths.insert(
            object_path,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_v1_lists_pods_with_short_names_and_subresources() {
        let list = resources("", "v1").expect("served");
        let entries = list["resources"].as_array().expect("list");
        let pods = entries.iter().find(|r| r["name"] == "pods").expect("pods");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["namespaced"], true);
        assert!(entries.iter().any(|r| r["name"] == "pods/status"));
        let token = entries
            .iter()
            .find(|r| r["name"] == "serviceaccounts/token")
            .expect("token");
        assert_eq!(token["group"], "authentication.k8s.io");
        assert_eq!(token["kind"], "TokenRequest");
    }

    #[test]
    fn groups_are_listed_once_each() {
        let g = groups();
        let names: Vec<&str> = g["groups"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|x| x["name"].as_str())
            .collect();
        for want in [
            "apps",
            "authentication.k8s.io",
            "authorization.k8s.io",
            "certificates.k8s.io",
            "coordination.k8s.io",
            "events.k8s.io",
            "node.k8s.io",
        ] {
            assert_eq!(names.iter().filter(|n| **n == want).count(), 1, "{want}");
        }
    }
}
