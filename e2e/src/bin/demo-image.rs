//! Writes a busybox image as an OCI archive, built locally from Debian's busybox-static,
//! so the agent's demo needs no network: `demo-image --out FILE --name REF`.

use anyhow::{Context as _, bail};

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
    let tmp = format!("{out}.tmp");
    e2e::pods::busybox_archive(std::path::Path::new(&tmp), &name, None, None)?;
    std::fs::rename(&tmp, &out)?;
    println!("wrote {name} to {out}");
    Ok(())
}
