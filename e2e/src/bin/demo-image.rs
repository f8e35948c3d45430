//! Writes a busybox image as an OCI archive, built locally from Debian's busybox-static,
//! so the agent's demo needs no network: `demo-image --out FILE --name REF`.

use anyhow::{Context as _, bail};
use e2e::image::{ImageBuilder, REF_NAME_ANNOTATION, busybox_layer, write_oci_archive};

fn main() -> anyhow::Result<()> {
    let mut out = None;
    let mut name = "docker.io/library/busybox:latest".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next(),
            "--name" => name = args.next().context("--name needs a value")?,
            other => bail!("unknown argument {other:?}; usage: demo-image --out FILE [--name REF]"),
        }
    }
    let out = out.context("--out FILE is required")?;
    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .layer(busybox_layer()?)
        .cmd(["sh"])
        .write_layout(&dir.path().join("layout"))?;
    // Name the image in index.json so an import tags it.
    let index_path = layout.dir().join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    index["manifests"][0]["annotations"][REF_NAME_ANNOTATION] =
        serde_json::Value::String(name.clone());
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    let tmp = format!("{out}.tmp");
    write_oci_archive(layout.dir(), std::path::Path::new(&tmp))?;
    std::fs::rename(&tmp, &out)?;
    println!("wrote {name} ({}) to {out}", layout.images[0].config.digest);
    Ok(())
}
