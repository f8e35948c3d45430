//! Cold and warm pull of a multi-layer image from a local registry, through the `cri`
//! binary over its socket. Not a test: it prints numbers.
//!
//! `cargo build --release --bins && cargo bench -p e2e --bench pull`

use std::time::Instant;

use e2e::bench::stats;
use e2e::cri::CriServer;
use e2e::image::{Compression, ImageBuilder, Layer};
use e2e::{Registry, RegistryOptions, busybox_layer};
use proto::v1;

const ROUNDS: usize = 5;
const LAYERS: usize = 6;
const LAYER_BYTES: usize = 8 << 20;

fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // half-compressible: text-like bytes
            b'a' + (x % 16) as u8
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let mut image = ImageBuilder::new().layer(busybox_layer()?);
    for i in 0..LAYERS - 1 {
        let c = if i % 2 == 0 {
            Compression::Gzip
        } else {
            Compression::Zstd
        };
        image = image.layer(Layer::new().compression(c).file(
            format!("data{i}"),
            noise(i as u32 + 7, LAYER_BYTES),
            0o644,
        ));
    }
    let layout = image.write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "bench/multi:1")?;
    let total: u64 = layout.images[0]
        .layers
        .iter()
        .map(|l| l.descriptor.size)
        .sum();
    println!(
        "image: {LAYERS} layers, {:.1} MiB compressed, {:.1} MiB unpacked",
        total as f64 / (1 << 20) as f64,
        ((LAYERS - 1) * LAYER_BYTES) as f64 / (1 << 20) as f64
    );

    let root = tempfile::tempdir()?;
    CriServer::write_config(
        root.path(),
        &format!("[registry]\ninsecure = [\"{}\"]\n", reg.addr()),
    )?;
    let cri = CriServer::start(root.path(), &[])?;
    let mut c = cri.images().await?;
    let name = reg.image("bench/multi:1");
    let req = || v1::PullImageRequest {
        image: Some(v1::ImageSpec {
            image: name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let id = c.pull_image(req()).await?.into_inner().image_ref;
        cold.push(t.elapsed());
        let t = Instant::now();
        c.pull_image(req()).await?;
        warm.push(t.elapsed());
        c.remove_image(v1::RemoveImageRequest {
            image: Some(v1::ImageSpec {
                image: id,
                ..Default::default()
            }),
        })
        .await?;
    }
    stats("cold pull (nothing present)", &mut cold);
    stats("warm pull (image present)", &mut warm);
    Ok(())
}
