//! The harness itself against the real registry and skopeo: what the CRI tests rely on.

use std::fs;
use std::io::Read;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use e2e::image::{media_type, sha256_digest};
use e2e::{
    Compression, ImageBuilder, Layer, ManifestFormat, Platform, Registry, RegistryOptions,
    busybox_layer, http, malicious, push, two_platform_index,
};

#[test]
fn registry_serves_v2() -> Result<()> {
    let reg = Registry::start(RegistryOptions::default())?;
    let r = http::get(reg.addr(), "/v2/", &[])?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Docker-Distribution-Api-Version"),
        Some("registry/2.0")
    );
    assert!(reg.storage_dir().is_dir());
    Ok(())
}

#[test]
fn pushed_layers_keep_their_compression_and_digests() -> Result<()> {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .layer(busybox_layer()?)
        .layer(
            Layer::new()
                .file("/zstd", "z", 0o644)
                .compression(Compression::Zstd),
        )
        .layer(
            Layer::new()
                .file("/plain", "p", 0o644)
                .compression(Compression::None),
        )
        .user("app")
        .env("GREETING", "hi")
        .entrypoint(["/bin/sh", "-c"])
        .cmd(["echo $GREETING"])
        .working_dir("/home/app")
        .write_layout(dir.path())?;

    let pushed = push(layout.dir(), reg.addr(), "e2e/busybox:1", None)?;
    assert_eq!(pushed, layout.digest());

    let r = reg.manifest("e2e/busybox", "1")?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Docker-Content-Digest"), Some(layout.digest()));
    assert_eq!(r.header("Content-Type"), Some(media_type::OCI_MANIFEST));
    assert_eq!(sha256_digest(&r.body), layout.digest());
    let image = &layout.images[0];
    assert_eq!(r.body, image.manifest_bytes);

    let manifest = r.json()?;
    let types = manifest["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(
        types,
        [
            media_type::OCI_LAYER_GZIP,
            media_type::OCI_LAYER_ZSTD,
            media_type::OCI_LAYER_TAR
        ]
    );

    for layer in &image.layers {
        let blob = reg.blob("e2e/busybox", &layer.descriptor.digest)?;
        assert_eq!(blob.status, 200);
        assert_eq!(sha256_digest(&blob.body), layer.descriptor.digest);
    }
    let config = reg.blob("e2e/busybox", &image.config.digest)?.json()?;
    assert_eq!(config["config"]["User"], "app");
    assert_eq!(config["architecture"], Platform::host().architecture);
    Ok(())
}

#[test]
fn docker_schema2_image_round_trips() -> Result<()> {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .format(ManifestFormat::DockerV2)
        .layer(busybox_layer()?)
        .cmd(["sh"])
        .write_layout(dir.path())?;
    reg.push(layout.dir(), "e2e/docker:v2s2")?;

    let r = reg.manifest("e2e/docker", "v2s2")?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Content-Type"), Some(media_type::DOCKER_MANIFEST));
    assert_eq!(r.header("Docker-Content-Digest"), Some(layout.digest()));
    let manifest = r.json()?;
    assert_eq!(manifest["config"]["mediaType"], media_type::DOCKER_CONFIG);
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        media_type::DOCKER_LAYER_GZIP
    );
    Ok(())
}

#[test]
fn two_platform_index_round_trips() -> Result<()> {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = two_platform_index()?.write_layout(dir.path())?;
    let pushed = reg.push(layout.dir(), "e2e/multi:1")?;
    assert_eq!(pushed, layout.digest());

    let r = reg.manifest("e2e/multi", "1")?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Content-Type"), Some(media_type::OCI_INDEX));
    assert_eq!(r.header("Docker-Content-Digest"), Some(layout.digest()));
    let index = r.json()?;
    let platforms = index["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(platforms, ["amd64", "arm64"]);

    let arm = layout
        .image(&Platform::linux("arm64").with_variant("v8"))
        .context("arm64 image")?;
    let amd = layout
        .image(&Platform::linux("amd64"))
        .context("amd64 image")?;
    assert_ne!(arm.manifest.digest, amd.manifest.digest);
    for image in [arm, amd] {
        let r = reg.manifest("e2e/multi", &image.manifest.digest)?;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, image.manifest_bytes);
        let marker = image.layers.last().context("marker layer")?;
        let blob = reg.blob("e2e/multi", &marker.descriptor.digest)?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(blob.body.as_slice()).read_to_end(&mut tar)?;
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entry = archive.entries()?.next().context("marker entry")??;
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        assert_eq!(text, format!("linux/{}\n", image.platform.architecture));
    }
    Ok(())
}

#[test]
fn htpasswd_registry_requires_credentials() -> Result<()> {
    let reg = Registry::start(RegistryOptions::with_auth("e2e", "s3cret"))?;
    let anon = http::get(reg.addr(), "/v2/", &[])?;
    assert_eq!(anon.status, 401);
    assert!(
        anon.header("WWW-Authenticate")
            .is_some_and(|h| h.starts_with("Basic")),
        "{:?}",
        anon.headers
    );
    let wrong = http::get(
        reg.addr(),
        "/v2/",
        &[("Authorization", &http::basic_auth("e2e", "nope"))],
    )?;
    assert_eq!(wrong.status, 401);
    assert_eq!(reg.get("/v2/", &[])?.status, 200);

    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .layer(Layer::new().file("/hello", "hello", 0o644))
        .write_layout(dir.path())?;
    let denied = push(layout.dir(), reg.addr(), "e2e/private:1", None);
    assert!(denied.is_err(), "anonymous push was accepted");
    push(
        layout.dir(),
        reg.addr(),
        "e2e/private:1",
        Some(("e2e", "s3cret")),
    )?;

    let accept = [("Accept", media_type::OCI_MANIFEST)];
    let path = "/v2/e2e/private/manifests/1";
    assert_eq!(http::get(reg.addr(), path, &accept)?.status, 401);
    let r = reg.get(path, &accept)?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Docker-Content-Digest"), Some(layout.digest()));
    Ok(())
}

#[test]
fn tampered_blob_is_served_as_stored() -> Result<()> {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .layer(Layer::new().file("/a", "original", 0o644))
        .write_layout(dir.path())?;
    reg.push(layout.dir(), "e2e/tamper:1")?;
    let layer = &layout.images[0].layers[0].descriptor;
    let stored = reg.blob_path(&layer.digest);
    ensure!(stored.is_file(), "no blob at {}", stored.display());

    let mut bytes = fs::read(&stored)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&stored, &bytes)?;
    let r = reg.blob("e2e/tamper", &layer.digest)?;
    assert_eq!(r.status, 200);
    assert_ne!(sha256_digest(&r.body), layer.digest);
    Ok(())
}

#[test]
fn oci_archive_is_a_tar_of_the_layout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .layer(busybox_layer()?)
        .cmd(["sh"])
        .write_layout(&dir.path().join("layout"))?;
    let archive = dir.path().join("image.tar");
    layout.write_archive(&archive)?;

    let mut names = Vec::new();
    let mut index = None;
    for entry in tar::Archive::new(fs::File::open(&archive)?).entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if name == "index.json" {
            let mut s = String::new();
            entry.read_to_string(&mut s)?;
            index = Some(serde_json::from_str::<serde_json::Value>(&s)?);
        }
        names.push(name);
    }
    assert!(names.iter().any(|n| n == "oci-layout"), "{names:?}");
    let index = index.context("index.json in archive")?;
    assert_eq!(index["manifests"][0]["digest"], layout.digest());
    let image = &layout.images[0];
    for digest in [&image.manifest.digest, &image.config.digest] {
        let hex = digest.trim_start_matches("sha256:");
        let want = format!("blobs/sha256/{hex}");
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    // skopeo reads it as an image: the same manifest comes out.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", archive.display()))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, image.manifest_bytes);
    Ok(())
}

#[test]
fn busybox_layer_has_shell_applets_and_app_user() -> Result<()> {
    let tar = busybox_layer()?.tar()?;
    let mut passwd = String::new();
    let mut links = Vec::new();
    let mut has_busybox = false;
    for entry in tar::Archive::new(tar.as_slice()).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        match path.as_str() {
            "bin/busybox" => has_busybox = entry.header().mode()? & 0o111 != 0,
            "etc/passwd" => {
                entry.read_to_string(&mut passwd)?;
            }
            _ if entry.header().entry_type().is_symlink() => links.push(path),
            _ => {}
        }
    }
    assert!(has_busybox);
    for applet in ["sh", "ls", "cat", "echo", "sleep"] {
        assert!(links.contains(&format!("bin/{applet}")), "{applet}");
    }
    assert!(passwd.contains("app:x:1000:1000:"), "{passwd}");
    Ok(())
}

#[test]
fn malicious_layers_push_like_any_other() -> Result<()> {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let bomb = malicious::decompression_bomb(64 << 20)?;
    let layout = ImageBuilder::new()
        .layer(Layer::raw_tar(malicious::path_traversal("../escape")?))
        .layer(Layer::raw_tar(malicious::absolute_path("/tmp/x")?))
        .layer(Layer::raw_tar(malicious::symlink_escape(
            "escape", "/tmp", "x",
        )?))
        .layer(Layer::raw_tar(malicious::hardlink_escape(
            "passwd-link",
            "../../etc/passwd",
        )?))
        .layer(Layer::precompressed(bomb.clone()))
        .write_layout(dir.path())?;
    reg.push(layout.dir(), "e2e/evil:1")?;
    let r = reg.manifest("e2e/evil", "1")?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Docker-Content-Digest"), Some(layout.digest()));
    let image = &layout.images[0];
    assert_eq!(image.layers[4].diff_id, bomb.diff_id);
    assert_eq!(image.layers[4].descriptor.size, bomb.bytes.len() as u64);
    Ok(())
}
