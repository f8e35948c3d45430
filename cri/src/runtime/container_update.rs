//! `UpdateContainerResources`: new limits applied by the OCI runtime's `update`, or
//! written into the bundle of a container the runtime has not run yet.

use proto::v1;

use super::{Error, Result, Runtime, io_err};

impl Runtime {
    #[tracing::instrument(skip_all, fields(container.id = %id))]
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: v1::LinuxContainerResources,
    ) -> Result<()> {
        let c = self.containers.get(id)?;
        let _guard = self.lock(&c.id).await;
        let c = self.containers.get(&c.id)?;
        if !c.alive() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let dir = self.containers.dir_of(&c.id);
        let doc = oci_resources(&resources, self.host.hugetlb_controller);
        if c.unstarted() {
            update_bundle(&dir.join("config.json"), &doc)?;
            self.containers.update(&c.id, |c| c.resources = resources)?;
            return Ok(());
        }
        let path = dir.join("resources.json");
        std::fs::write(&path, doc.to_string()).map_err(io_err("writing resources", &path))?;
        let handler = self.handler(&c.handler)?.clone();
        handler.update(&c.id, &path).await?;
        self.containers.update(&c.id, |c| c.resources = resources)?;
        Ok(())
    }
}

/// Sets the bundle's `linux.resources` fields that `doc` (from [`oci_resources`]) sets.
fn update_bundle(spec_path: &std::path::Path, doc: &serde_json::Value) -> Result<()> {
    let text = std::fs::read(spec_path).map_err(io_err("reading spec", spec_path))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        Error::FailedPrecondition(format!("bundle spec {}: {e}", spec_path.display()))
    })?;
    let resources = &mut spec["linux"]["resources"];
    for (section, fields) in doc.as_object().into_iter().flatten() {
        match fields.as_object() {
            Some(fields) if section != "unified" => {
                for (k, v) in fields {
                    resources[section][k] = v.clone();
                }
            }
            _ => resources[section] = fields.clone(),
        }
    }
    std::fs::write(spec_path, spec.to_string()).map_err(io_err("writing spec", spec_path))
}

/// The OCI `LinuxResources` document for CRI resources (zero means "not set"). Hugepage
/// limits only where the host has the hugetlb controller (else dropped, with a warning).
pub fn oci_resources(r: &v1::LinuxContainerResources, hugetlb: bool) -> serde_json::Value {
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), r.cpu_shares.into());
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), r.cpu_quota.into());
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), r.cpu_period.into());
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), r.cpuset_cpus.clone().into());
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), r.cpuset_mems.clone().into());
    }
    let mut memory = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), r.memory_limit_in_bytes.into());
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory.insert("swap".into(), r.memory_swap_limit_in_bytes.into());
    }
    let mut doc = serde_json::Map::new();
    doc.insert("cpu".into(), cpu.into());
    doc.insert("memory".into(), memory.into());
    if !r.unified.is_empty() {
        doc.insert("unified".into(), serde_json::json!(r.unified));
    }
    if !r.hugepage_limits.is_empty() && !hugetlb {
        super::spec::warn_hugetlb_missing(&r.hugepage_limits);
    } else if !r.hugepage_limits.is_empty() {
        let limits: Vec<serde_json::Value> = r
            .hugepage_limits
            .iter()
            .map(|h| serde_json::json!({ "pageSize": h.page_size, "limit": h.limit }))
            .collect();
        doc.insert("hugepageLimits".into(), limits.into());
    }
    doc.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_document() {
        let r = v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let doc = oci_resources(&r, true);
        assert_eq!(doc["cpu"]["quota"], 50_000);
        assert_eq!(doc["cpu"]["shares"], 512);
        assert_eq!(doc["cpu"]["cpus"], "0");
        assert_eq!(doc["memory"]["limit"], 64 << 20);
        assert!(doc["memory"].get("swap").is_none());
        assert!(doc.get("unified").is_none());
        assert!(doc.get("hugepageLimits").is_none());

        let huge = v1::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            hugepage_limits: vec![v1::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        };
        let with = oci_resources(&huge, true);
        assert_eq!(
            with["hugepageLimits"],
            serde_json::json!([{ "pageSize": "2MB", "limit": 0 }])
        );
        let without = oci_resources(&huge, false);
        assert!(without.get("hugepageLimits").is_none());
        assert_eq!(without["memory"]["limit"], 64 << 20);
    }
}
