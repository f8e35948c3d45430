//! The CRI image service end to end: the `cri` binary over its unix socket, a real
//! registry (Debian's docker-registry) and images built from busybox-static.
//! Needs root (ownership, device nodes, overlay xattrs in unpacked layers).

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::cri::CriServer;
use e2e::image::{Compression, Entry, ImageBuilder, Layer, ManifestFormat, Platform};
use e2e::{IndexBuilder, Registry, RegistryOptions, busybox_layer, malicious, two_platform_index};
use proto::v1;
use tonic::Code;

type R<T = ()> = anyhow::Result<T>;

struct Node {
    _dir: tempfile::TempDir,
    cri: CriServer,
}

impl Node {
    /// A `cri` server with its own state; `toml` is its config file.
    fn start(toml: &str, args: &[&str]) -> R<Self> {
        let dir = tempfile::tempdir()?;
        CriServer::write_config(dir.path(), toml)?;
        let cri = CriServer::start(dir.path(), args)?;
        Ok(Self { _dir: dir, cri })
    }

    fn insecure(reg: &Registry) -> R<Self> {
        Self::start(
            &format!("[registry]\ninsecure = [\"{}\"]\n", reg.addr()),
            &[],
        )
    }

    fn image_root(&self) -> PathBuf {
        self.cri.root.join("root").join("images")
    }

    fn layer_dirs(&self) -> Vec<PathBuf> {
        let dir = self.image_root().join("layers").join("sha256");
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Leftovers of unfinished work that must never survive a failed pull.
    fn scratch_entries(&self) -> usize {
        ["ingest", "layers/tmp", "import"]
            .iter()
            .map(|d| {
                std::fs::read_dir(self.image_root().join(d))
                    .map(|rd| rd.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn blob_count(&self) -> usize {
        std::fs::read_dir(self.image_root().join("blobs/sha256"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }

    /// Bytes and inodes ImageFsInfo reports.
    async fn fs_used(&self) -> R<(u64, u64)> {
        let mut c = self.cri.images().await?;
        let fs = c
            .image_fs_info(v1::ImageFsInfoRequest {})
            .await?
            .into_inner();
        let usage = fs
            .image_filesystems
            .first()
            .ok_or_else(|| anyhow::anyhow!("no image filesystem reported"))?;
        Ok((
            usage.used_bytes.as_ref().map(|u| u.value).unwrap_or(0),
            usage.inodes_used.as_ref().map(|u| u.value).unwrap_or(0),
        ))
    }

    /// Nothing at all under the image store: no image, layer, blob or unfinished write.
    async fn assert_empty(&self, case: &str) -> R {
        assert!(self.list().await?.is_empty(), "{case}: images listed");
        assert!(self.layer_dirs().is_empty(), "{case}: layers left");
        assert_eq!(self.blob_count(), 0, "{case}: blobs left");
        assert_eq!(self.scratch_entries(), 0, "{case}: unfinished writes left");
        assert_eq!(self.fs_used().await?, (0, 0), "{case}: ImageFsInfo");
        Ok(())
    }

    async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        self.pull_auth(image, None).await
    }

    async fn pull_auth(
        &self,
        image: &str,
        auth: Option<v1::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let mut c = self
            .cri
            .images()
            .await
            .map_err(|e| tonic::Status::unknown(e.to_string()))?;
        let resp = c
            .pull_image(v1::PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            })
            .await?;
        Ok(resp.into_inner().image_ref)
    }

    async fn status(&self, image: &str) -> R<Option<v1::Image>> {
        let mut c = self.cri.images().await?;
        let resp = c
            .image_status(v1::ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await?;
        Ok(resp.into_inner().image)
    }

    async fn list(&self) -> R<Vec<v1::Image>> {
        let mut c = self.cri.images().await?;
        Ok(c.list_images(v1::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images)
    }

    async fn remove(&self, image: &str) -> R {
        let mut c = self.cri.images().await?;
        c.remove_image(v1::RemoveImageRequest {
            image: Some(spec(image)),
        })
        .await?;
        Ok(())
    }
}

/// `path` as a TOML string.
fn toml_path(path: &Path) -> String {
    // A JSON string is a TOML basic string.
    serde_json::Value::from(path.to_string_lossy()).to_string()
}

fn spec(image: &str) -> v1::ImageSpec {
    v1::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

fn find_in_layers(node: &Node, rel: &str) -> Vec<PathBuf> {
    node.layer_dirs()
        .into_iter()
        .map(|d| d.join(rel))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// busybox plus an app layer: three layers with the three compressions.
fn app_image(user: &str, marker: &str) -> R<ImageBuilder> {
    Ok(ImageBuilder::new()
        .layer(busybox_layer()?.compression(Compression::Gzip))
        .layer(
            Layer::new()
                .compression(Compression::Zstd)
                .dir("app", 0o755)
                .file("app/marker", marker.as_bytes().to_vec(), 0o644),
        )
        .layer(
            Layer::new()
                .compression(Compression::None)
                .entry(Entry::file("app/owned", b"x".to_vec(), 0o4750).owner(1000, 1000)),
        )
        .user(user)
        .cmd(["sh"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_multi_layer_image_then_status_list_fsinfo() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = app_image("1000", "v1")?.write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "test/app:v1")?;
    let built = &layout.images[0];
    let node = Node::insecure(&reg)?;

    let name = reg.image("test/app:v1");
    let id = node.pull(&name).await?;
    assert_eq!(
        id, built.config.digest,
        "PullImage returns the image id (config digest)"
    );

    let img = node.status(&name).await?.expect("image present");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/test/app@{}", reg.addr(), layout.digest())]
    );
    assert_eq!(img.uid.map(|u| u.value), Some(1000));
    assert_eq!(img.username, "");
    let total: u64 = built.layers.iter().map(|l| l.descriptor.size).sum::<u64>()
        + built.config.size
        + built.manifest.size;
    assert_eq!(img.size, total);

    // The same image is found by id, id prefix, short name forms and digest.
    for r in [
        id.clone(),
        id.trim_start_matches("sha256:").to_string(),
        id["sha256:".len().."sha256:".len() + 12].to_string(),
        format!("{}/test/app@{}", reg.addr(), layout.digest()),
    ] {
        assert_eq!(
            node.status(&r).await?.map(|i| i.id),
            Some(id.clone()),
            "lookup by {r}"
        );
    }
    assert!(node.status(&reg.image("test/app:other")).await?.is_none());
    // A repository whose name only starts the same is another image.
    for other in ["test/ap", "test/a", "test"] {
        let r = format!("{}/{other}@{}", reg.addr(), layout.digest());
        assert!(node.status(&r).await?.is_none(), "lookup by {r}");
    }

    // Verbose status carries the config and the layers.
    let mut c = node.cri.images().await?;
    let verbose = c
        .image_status(v1::ImageStatusRequest {
            image: Some(spec(&name)),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"])?;
    assert_eq!(info["imageSpec"]["config"]["User"], "1000");
    assert_eq!(info["layers"].as_array().map(Vec::len), Some(3));

    // Listing with and without a filter.
    let all = node.list().await?;
    assert_eq!(all.len(), 1);
    let filtered = c
        .list_images(v1::ListImagesRequest {
            filter: Some(v1::ImageFilter {
                image: Some(spec(&name)),
            }),
        })
        .await?
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let mut stream = c
        .stream_images(v1::StreamImagesRequest { filter: None })
        .await?
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = stream.message().await? {
        assert!(
            !msg.images.is_empty(),
            "every streamed list holds at least one image"
        );
        streamed.extend(msg.images);
    }
    assert_eq!(streamed, all);

    // Unpacked content: three layer dirs, files with their modes and owners.
    assert_eq!(node.layer_dirs().len(), 3);
    let marker = find_in_layers(&node, "app/marker");
    assert_eq!(marker.len(), 1);
    assert_eq!(std::fs::read_to_string(&marker[0])?, "v1");
    use std::os::unix::fs::MetadataExt as _;
    let owned = std::fs::metadata(&find_in_layers(&node, "app/owned")[0])?;
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1000, 0o4750)
    );
    let sh = find_in_layers(&node, "bin/sh");
    assert_eq!(std::fs::read_link(&sh[0])?, PathBuf::from("busybox"));

    // Filesystem usage covers at least the unpacked busybox binary.
    let fs = c
        .image_fs_info(v1::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let usage = &fs.image_filesystems[0];
    let busybox_len = std::fs::metadata("/bin/busybox")?.len();
    assert!(usage.used_bytes.as_ref().map(|u| u.value).unwrap_or(0) > busybox_len);
    assert!(usage.inodes_used.as_ref().map(|u| u.value).unwrap_or(0) > 10);
    assert!(
        Path::new(
            &usage
                .fs_id
                .as_ref()
                .map(|f| f.mountpoint.clone())
                .unwrap_or_default()
        )
        .is_dir()
    );
    assert_eq!(node.scratch_entries(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn index_pull_selects_host_platform() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = two_platform_index()?.write_layout(&dir.path().join("idx"))?;
    reg.push(layout.dir(), "multi/arch:1")?;
    let node = Node::insecure(&reg)?;
    let id = node.pull(&reg.image("multi/arch:1")).await?;
    let host = Platform::host();
    let want = layout
        .image(&host)
        .expect("host platform in the test index");
    assert_eq!(id, want.config.digest);
    let marker = find_in_layers(&node, "platform");
    assert_eq!(marker.len(), 1, "only the chosen platform is unpacked");
    assert_eq!(
        std::fs::read_to_string(&marker[0])?,
        format!("linux/{}\n", host.architecture)
    );
    // The repo digest names the index, the digest the user can pull again.
    let img = node.status(&id).await?.expect("present");
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/multi/arch@{}", reg.addr(), layout.digest())]
    );
    let by_digest = format!("{}/multi/arch@{}", reg.addr(), layout.digest());
    assert_eq!(node.pull(&by_digest).await?, id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_image_pulls() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .format(ManifestFormat::DockerV2)
        .layer(busybox_layer()?)
        .user("app")
        .write_layout(&dir.path().join("d"))?;
    reg.push(layout.dir(), "docker/img:latest")?;
    let node = Node::insecure(&reg)?;
    // A reference without a tag means :latest.
    let id = node.pull(&format!("{}/docker/img", reg.addr())).await?;
    let img = node.status(&id).await?.expect("present");
    assert_eq!(img.repo_tags, vec![reg.image("docker/img:latest")]);
    assert_eq!(img.username, "app");
    assert_eq!(img.uid, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_manifest_list_selects_host_platform_and_repulls_from_store() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let base = busybox_layer()?;
    let mut list = IndexBuilder::new();
    for platform in [
        Platform::linux("amd64"),
        Platform::linux("arm64").with_variant("v8"),
    ] {
        let marker = format!("{}/{}\n", platform.os, platform.architecture);
        list = list.image(
            ImageBuilder::new()
                .format(ManifestFormat::DockerV2)
                .platform(platform)
                .layer(base.clone())
                .layer(Layer::new().file("platform", marker, 0o644)),
        );
    }
    let layout = list.write_layout(&dir.path().join("list"))?;
    reg.push(layout.dir(), "docker/list:1")?;
    let top = reg.manifest("docker/list", "1")?;
    assert_eq!(
        top.header("content-type"),
        Some(e2e::image::media_type::DOCKER_MANIFEST_LIST)
    );
    let node = Node::insecure(&reg)?;
    let name = reg.image("docker/list:1");
    let id = node.pull(&name).await?;
    let host = Platform::host();
    let want = layout.image(&host).expect("host platform in the list");
    assert_eq!(id, want.config.digest);
    let marker = find_in_layers(&node, "platform");
    assert_eq!(marker.len(), 1, "only the chosen platform is unpacked");
    assert_eq!(
        std::fs::read_to_string(&marker[0])?,
        format!("linux/{}\n", host.architecture)
    );
    let img = node.status(&id).await?.expect("present");
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/docker/list@{}", reg.addr(), layout.digest())]
    );

    // Pulling again reads the chosen manifest from the store: the registry lost it, and
    // the pull still succeeds.
    std::fs::remove_file(reg.blob_path(&want.manifest.digest))?;
    assert_ne!(
        reg.manifest("docker/list", &want.manifest.digest)?.status,
        200
    );
    assert_eq!(node.pull(&name).await?, id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_repo_digest_removes_the_image_and_its_tags() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "rm")?.write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "rm/img:1")?;
    reg.push(layout.dir(), "rm/img:2")?;
    let node = Node::insecure(&reg)?;
    let id = node.pull(&reg.image("rm/img:1")).await?;
    assert_eq!(node.pull(&reg.image("rm/img:2")).await?, id);
    let img = node.status(&id).await?.expect("present");
    assert_eq!(img.repo_tags.len(), 2);
    let repo_digest = format!("{}/rm/img@{}", reg.addr(), layout.digest());
    assert_eq!(img.repo_digests, vec![repo_digest.clone()]);

    node.remove(&repo_digest).await?;
    for r in [
        reg.image("rm/img:1"),
        reg.image("rm/img:2"),
        id,
        repo_digest,
    ] {
        assert!(node.status(&r).await?.is_none(), "{r} still found");
    }
    node.assert_empty("removed by repo digest").await
}

#[tokio::test(flavor = "multi_thread")]
async fn images_missing_everywhere_are_not_found() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let mirror = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "here")?.write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "lib/img:1")?;
    let closed = e2e::ClosedPort::new()?;
    let dead = closed.addr();
    // The registry alone; with a mirror (that lacks everything); and a registry that is
    // down behind a mirror.
    let toml = format!(
        "[registry]\ninsecure = [\"{reg}\", \"{dead}\"]\n\
         [registry.mirrors.\"{reg}\"]\nendpoints = [\"http://{mi}\"]\n\
         [registry.mirrors.\"{dead}\"]\nendpoints = [\"http://{mi}\"]\n",
        reg = reg.addr(),
        mi = mirror.addr(),
    );
    let alone = Node::insecure(&reg)?;
    let mirrored = Node::start(&toml, &[])?;
    let missing_digest = format!("sha256:{}", "0".repeat(64));
    for (node, what) in [(&alone, "alone"), (&mirrored, "behind a mirror")] {
        for missing in [
            reg.image("no/such-repo:1"),
            reg.image("lib/img:2"),
            format!("{}/lib/img@{missing_digest}", reg.addr()),
        ] {
            let err = node.pull(&missing).await.expect_err("missing image");
            assert_eq!(err.code(), Code::NotFound, "{what}: {missing}: {err:?}");
            assert!(err.message().contains(&missing), "{}", err.message());
        }
        node.assert_empty(what).await?;
    }
    // The mirror lacking it says nothing about an upstream that could not be asked.
    let err = mirrored
        .pull(&format!("{dead}/lib/img:1"))
        .await
        .expect_err("registry down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_registry_is_trusted_through_ca_files() -> R {
    let reg = Registry::start(RegistryOptions::with_auth("carol", "tls-pass").tls())?;
    let ca = reg.ca_file().expect("an https registry has a CA");
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "tls")?.write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "secure/img:1")?;
    let name = reg.image("secure/img:1");
    let creds = |password: &str| v1::AuthConfig {
        username: "carol".into(),
        password: password.into(),
        ..Default::default()
    };

    // The registry speaks TLS only: plain HTTP to its port is refused.
    let plain = e2e::http::get(reg.addr(), "/v2/", &[])?;
    assert_eq!(
        plain.status,
        400,
        "{}",
        String::from_utf8_lossy(&plain.body)
    );
    assert!(String::from_utf8_lossy(&plain.body).contains("HTTPS"));

    // Without its CA: a certificate error, at once, and nothing stored. The bound only
    // tells a hang from an answer.
    let untrusted = Node::start("", &[])?;
    let pull = untrusted.pull_auth(&name, Some(creds("tls-pass")));
    let err = tokio::time::timeout(Duration::from_secs(120), pull)
        .await?
        .expect_err("unknown CA");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("certificate") && err.message().contains(reg.addr()),
        "{}",
        err.message()
    );
    untrusted.assert_empty("untrusted registry").await?;

    // With its CA: pulls over HTTPS, with basic auth.
    let node = Node::start(
        &format!("[registry]\nca_files = [{}]\n", toml_path(ca)),
        &[],
    )?;
    let err = node
        .pull_auth(&name, Some(creds("wrong")))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let id = node.pull_auth(&name, Some(creds("tls-pass"))).await?;
    assert_eq!(id, layout.images[0].config.digest);
    assert_eq!(
        std::fs::read_to_string(&find_in_layers(&node, "app/marker")[0])?,
        "tls"
    );

    // A CA file that is missing or holds no certificate stops the server at start,
    // naming the file.
    let not_pem = dir.path().join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello\n")?;
    for bad in [dir.path().join("missing.pem"), not_pem] {
        let toml = format!("[registry]\nca_files = [{}]\n", toml_path(&bad));
        let err = Node::start(&toml, &[]).err().expect("bad CA file");
        let text = format!("{err:#}");
        assert!(
            text.contains("registry CA file") && text.contains(&bad.display().to_string()),
            "{text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_without_ca_certificates_starts_and_pulls_with_its_own_roots() -> R {
    // A host with no CA store (no ca-certificates package): the TLS stack finds no
    // system roots. rustls-native-certs reads only SSL_CERT_FILE/SSL_CERT_DIR when they
    // are set, so pointing both at nothing is that host.
    let reg = Registry::start(RegistryOptions::default().tls())?;
    let ca = reg.ca_file().expect("an https registry has a CA");
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "no-ca")?.write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "bare/img:1")?;
    let name = reg.image("bare/img:1");
    let empty = dir.path().join("no-certs");
    std::fs::create_dir_all(&empty)?;
    let missing = dir.path().join("no-bundle.pem");
    let spawn = e2e::cri::Spawn {
        env: vec![
            ("SSL_CERT_FILE".into(), missing.display().to_string()),
            ("SSL_CERT_DIR".into(), empty.display().to_string()),
        ],
        ..Default::default()
    };
    let start = |toml: &str| -> R<Node> {
        let d = tempfile::tempdir()?;
        CriServer::write_config(d.path(), toml)?;
        let cri = CriServer::start_with(d.path(), &[], spawn.clone())?;
        Ok(Node { _dir: d, cri })
    };

    // It starts (it used to panic), says why and what to do, and serves.
    let bare = start("")?;
    bare.cri
        .runtime()
        .await?
        .version(v1::VersionRequest::default())
        .await?;
    let log = bare.cri.log_text();
    assert!(
        log.contains("no usable CA certificates") && log.contains("ca_files"),
        "{log}"
    );
    // The bundled public roots do not vouch for a private CA: a certificate error.
    let err = bare
        .pull(&name)
        .await
        .expect_err("private CA, no roots for it");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("certificate"), "{}", err.message());
    bare.assert_empty("no roots").await?;

    // Its own roots in ca_files work with no system store at all.
    let node = start(&format!("[registry]\nca_files = [{}]\n", toml_path(ca)))?;
    let id = node.pull(&name).await?;
    assert_eq!(id, layout.images[0].config.digest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_ca_is_trusted_for_that_host_only_and_https_mirrors_use_the_roots() -> R {
    let a = Registry::start(RegistryOptions::default().tls())?;
    let b = Registry::start(RegistryOptions::default().tls())?;
    let ca_a = toml_path(a.ca_file().expect("CA"));
    let ca_b = toml_path(b.ca_file().expect("CA"));
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "from-a")?.write_layout(&dir.path().join("img"))?;
    a.push(layout.dir(), "lib/img:1")?;
    b.push(layout.dir(), "lib/img:1")?;
    let id = &layout.images[0].config.digest;

    // A's CA under [registry.hosts."A"] makes A trusted; B's CA given for another host
    // does not make B trusted.
    let node = Node::start(
        &format!(
            "[registry.hosts.\"{a}\"]\nca_file = {ca_a}\n[registry.hosts.\"127.0.0.1:1\"]\nca_file = {ca_b}\n",
            a = a.addr(),
        ),
        &[],
    )?;
    assert_eq!(&node.pull(&a.image("lib/img:1")).await?, id);
    let err = node
        .pull(&b.image("lib/img:1"))
        .await
        .expect_err("B's CA is trusted for another host only");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("certificate"), "{}", err.message());

    // An https:// mirror is checked against the same roots: B's image comes from mirror
    // A, trusted through ca_files, while B itself is not.
    let toml = format!(
        "[registry]\nca_files = [{ca_a}]\n[registry.mirrors.\"{b}\"]\nendpoints = [\"https://{a}\"]\n",
        a = a.addr(),
        b = b.addr(),
    );
    let mirrored = Node::start(&toml, &[])?;
    assert_eq!(&mirrored.pull(&b.image("lib/img:1")).await?, id);
    let img = mirrored.status(id).await?.expect("present");
    assert_eq!(img.repo_tags, vec![b.image("lib/img:1")]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_layers_names_repull_and_removal() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let a = app_image("0", "a")?.write_layout(&dir.path().join("a"))?;
    let b = app_image("0", "b")?.write_layout(&dir.path().join("b"))?;
    reg.push(a.dir(), "shared/a:1")?;
    reg.push(b.dir(), "shared/b:1")?;
    // The same image under a second repository.
    reg.push(a.dir(), "other/a:2")?;
    let node = Node::insecure(&reg)?;

    let id_a = node.pull(&reg.image("shared/a:1")).await?;
    let id_b = node.pull(&reg.image("shared/b:1")).await?;
    assert_ne!(id_a, id_b);
    // busybox layer shared; a and b each have their own 2nd and 3rd layer chains
    assert_eq!(node.layer_dirs().len(), 5);

    let id_a2 = node.pull(&reg.image("other/a:2")).await?;
    assert_eq!(id_a2, id_a, "one image under two names");
    let img = node.status(&id_a).await?.expect("present");
    let mut tags = img.repo_tags.clone();
    tags.sort();
    assert_eq!(tags, vec![reg.image("other/a:2"), reg.image("shared/a:1")]);
    assert_eq!(img.repo_digests.len(), 2);
    let listed: Vec<v1::Image> = node.list().await?;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        node.status(&reg.image("other/a:2")).await?.map(|i| i.id),
        Some(id_a.clone())
    );

    // Pulling what is present downloads nothing: with the registry's blobs gone, a pull
    // still succeeds (only the manifest is fetched).
    for l in &a.images[0].layers {
        std::fs::remove_file(reg.blob_path(&l.descriptor.digest))?;
    }
    std::fs::remove_file(reg.blob_path(&a.images[0].config.digest))?;
    assert_eq!(node.pull(&reg.image("shared/a:1")).await?, id_a);

    // Removing b keeps the shared busybox layer for a.
    node.remove(&reg.image("shared/b:1")).await?;
    assert!(node.status(&id_b).await?.is_none());
    assert_eq!(node.layer_dirs().len(), 3);
    assert_eq!(find_in_layers(&node, "bin/busybox").len(), 1);
    assert_eq!(
        std::fs::read_to_string(&find_in_layers(&node, "app/marker")[0])?,
        "a"
    );
    // Removal is idempotent.
    node.remove(&reg.image("shared/b:1")).await?;
    node.remove(&id_b).await?;

    // Removing by one tag removes the image with all its names; then nothing is left.
    node.remove(&reg.image("other/a:2")).await?;
    assert!(node.status(&reg.image("shared/a:1")).await?.is_none());
    assert!(node.list().await?.is_empty());
    assert!(node.layer_dirs().is_empty());
    let blobs = std::fs::read_dir(node.image_root().join("blobs/sha256"))?.count();
    assert_eq!(blobs, 0, "no blob outlives its images");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_layers_are_rejected_and_host_untouched() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let outside = tempfile::tempdir()?;
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"original")?;
    let victim_abs = victim.to_string_lossy().into_owned();
    let sentinel = outside.path().join("created-by-layer");
    let sentinel_abs = sentinel.to_string_lossy().into_owned();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            malicious::path_traversal("../../../../../../../../tmp/escape-dotdot")?,
        ),
        ("absolute", malicious::absolute_path(&sentinel_abs)?),
        (
            "symlink",
            malicious::symlink_escape(
                "evil",
                outside.path().to_string_lossy().as_ref(),
                "created-by-layer",
            )?,
        ),
        (
            "hardlink",
            malicious::hardlink_escape("passwd-link", "../../../../../../etc/passwd")?,
        ),
        (
            "hardlink-abs",
            malicious::hardlink_escape("victim-link", &victim_abs)?,
        ),
    ];
    let node = Node::insecure(&reg)?;
    for (name, tar) in cases {
        let layout = ImageBuilder::new()
            .layer(busybox_layer()?)
            .layer(Layer::raw_tar(tar))
            .write_layout(&dir.path().join(name))?;
        reg.push(layout.dir(), &format!("evil/{name}:1"))?;
        let err = node
            .pull(&reg.image(&format!("evil/{name}:1")))
            .await
            .expect_err(&format!("{name} layer must be rejected"));
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err:?}");
        assert!(
            err.message().contains("rejected"),
            "{name}: {}",
            err.message()
        );
    }
    assert!(!sentinel.exists(), "nothing was written outside the layer");
    assert!(!Path::new("/tmp/escape-dotdot").exists());
    assert_eq!(std::fs::read(&victim)?, b"original");
    // The good busybox layer of these images was committed while the bad one failed; no
    // image refers to it, so the failed pull collected it.
    node.assert_empty("after rejected layers").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn decompression_bomb_is_stopped_by_the_layer_limit() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let bomb = malicious::decompression_bomb(malicious::BOMB_SIZE)?;
    let layout = ImageBuilder::new()
        .layer(Layer::precompressed(bomb))
        .write_layout(&dir.path().join("bomb"))?;
    reg.push(layout.dir(), "evil/bomb:1")?;
    let node = Node::start(
        &format!(
            "max_layer_bytes = {}\n[registry]\ninsecure = [\"{}\"]\n",
            64 << 20,
            reg.addr()
        ),
        &[],
    )?;
    let err = node
        .pull(&reg.image("evil/bomb:1"))
        .await
        .expect_err("bomb must fail");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("more than"), "{}", err.message());
    node.assert_empty("after the bomb").await?;
    Ok(())
}

/// Which blob a [`tampered_blob_is_rejected`] case changes, and how.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// Flips bytes of the uncompressed layer: its diff id changes too.
    PlainLayer,
    /// Changes the mtime in the gzip header of the busybox layer. The tar inside, and so
    /// the diff id, stay the same: only the blob digest can tell.
    GzipHeaderMtime,
    /// Changes the `created` date in the config, keeping its size, its JSON and its diff
    /// ids: only the blob digest can tell.
    Config,
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_blob_is_rejected() -> R {
    let dir = tempfile::tempdir()?;
    for case in [Tamper::PlainLayer, Tamper::GzipHeaderMtime, Tamper::Config] {
        // A registry each: blobs are shared by content, so tampering one affects all.
        let reg = Registry::start(RegistryOptions::default())?;
        let layout = app_image("0", "t")?.write_layout(&dir.path().join(format!("{case:?}")))?;
        reg.push(layout.dir(), "tamper/img:1")?;
        let built = &layout.images[0];
        let target = match case {
            Tamper::PlainLayer => &built.layers[2].descriptor,
            Tamper::GzipHeaderMtime => &built.layers[0].descriptor,
            Tamper::Config => &built.config,
        };
        let path = reg.blob_path(&target.digest);
        let mut bytes = std::fs::read(&path)?;
        match case {
            Tamper::PlainLayer => {
                let last = bytes.len() - 1;
                bytes[600] ^= 0xff;
                bytes[last] ^= 0x01;
            }
            Tamper::GzipHeaderMtime => {
                // RFC 1952: bytes 4..8 are MTIME, covered by no checksum.
                assert_eq!(&bytes[..2], &[0x1f, 0x8b], "busybox layer is gzip");
                bytes[4..8].copy_from_slice(&0x6000_0000u32.to_le_bytes());
                let mut tar = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(bytes.as_slice()),
                    &mut tar,
                )?;
                assert_eq!(
                    e2e::image::sha256_digest(&tar),
                    built.layers[0].diff_id,
                    "the tampered layer keeps its diff id"
                );
            }
            Tamper::Config => {
                let text = String::from_utf8(bytes.clone())?;
                let changed = text.replacen("2023-11-14T22:13:20Z", "2023-11-14T22:13:21Z", 1);
                assert_ne!(changed, text, "config has the expected created date");
                let json: serde_json::Value = serde_json::from_str(&changed)?;
                assert!(
                    json["rootfs"]["diff_ids"].is_array(),
                    "still a usable config"
                );
                bytes = changed.into_bytes();
            }
        }
        assert_eq!(bytes.len() as u64, target.size, "{case:?}: size unchanged");
        std::fs::write(&path, bytes)?;

        let node = Node::insecure(&reg)?;
        let err = node
            .pull(&reg.image("tamper/img:1"))
            .await
            .expect_err("must fail");
        assert_eq!(err.code(), Code::FailedPrecondition, "{case:?}: {err:?}");
        let msg = err.message();
        match case {
            Tamper::PlainLayer => {
                assert!(msg.contains("digest") || msg.contains("diff id"), "{msg}")
            }
            Tamper::GzipHeaderMtime | Tamper::Config => {
                assert!(
                    msg.contains(&target.digest) && msg.contains("content has digest"),
                    "{case:?}: the blob digest check names the blob: {msg}"
                );
                assert!(!msg.contains("diff id"), "{case:?}: {msg}");
            }
        }
        node.assert_empty(&format!("{case:?}")).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_are_tried_in_order_with_fallback_to_upstream() -> R {
    let upstream = Registry::start(RegistryOptions::default())?;
    let mirror = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let up = app_image("0", "upstream")?.write_layout(&dir.path().join("up"))?;
    let mi = app_image("0", "mirror")?.write_layout(&dir.path().join("mi"))?;
    upstream.push(up.dir(), "lib/img:1")?;
    upstream.push(up.dir(), "lib/only-upstream:1")?;
    mirror.push(mi.dir(), "lib/img:1")?;

    // A closed port first (connection refused), then the mirror, then the registry.
    let closed = e2e::ClosedPort::new()?;
    let dead = closed.addr();
    let toml = format!(
        "[registry]\ninsecure = [\"{up}\"]\n[registry.mirrors.\"{up}\"]\nendpoints = [\"http://{dead}\", \"http://{mi}\"]\n",
        up = upstream.addr(),
        mi = mirror.addr(),
    );
    let node = Node::start(&toml, &[])?;
    let id = node.pull(&upstream.image("lib/img:1")).await?;
    assert_eq!(id, mi.images[0].config.digest, "served by the mirror");
    // Names are the requested ones, not the mirror's.
    let img = node.status(&id).await?.expect("present");
    assert_eq!(img.repo_tags, vec![upstream.image("lib/img:1")]);
    // Not on the mirror: falls back to the registry itself.
    let id2 = node.pull(&upstream.image("lib/only-upstream:1")).await?;
    assert_eq!(id2, up.images[0].config.digest);
    // Not anywhere: NotFound naming every host tried.
    let err = node
        .pull(&upstream.image("lib/nowhere:1"))
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(mirror.addr()), "{}", err.message());
    assert!(err.message().contains(upstream.addr()), "{}", err.message());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_a_mirror_lost_come_from_the_next_host() -> R {
    let upstream = Registry::start(RegistryOptions::default())?;
    let mirror = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "blobs")?.write_layout(&dir.path().join("img"))?;
    upstream.push(layout.dir(), "lib/img:1")?;
    mirror.push(layout.dir(), "lib/img:1")?;
    // The mirror serves the manifest but lost the config and a layer.
    let built = &layout.images[0];
    let lost = [&built.config.digest, &built.layers[1].descriptor.digest];
    for digest in lost {
        std::fs::remove_file(mirror.blob_path(digest))?;
        assert_ne!(mirror.blob("lib/img", digest)?.status, 200);
    }
    // Only what the pull asks counts, not what the pushes logged.
    let log_since = |reg: &Registry| -> R<usize> { Ok(std::fs::read(reg.log_path())?.len()) };
    let (mirror_mark, upstream_mark) = (log_since(&mirror)?, log_since(&upstream)?);
    let toml = format!(
        "[registry]\ninsecure = [\"{up}\"]\n[registry.mirrors.\"{up}\"]\nendpoints = [\"http://{mi}\"]\n",
        up = upstream.addr(),
        mi = mirror.addr(),
    );
    let node = Node::start(&toml, &[])?;
    let id = node.pull(&upstream.image("lib/img:1")).await?;
    assert_eq!(id, built.config.digest);
    assert_eq!(
        std::fs::read_to_string(&find_in_layers(&node, "app/marker")[0])?,
        "blobs"
    );
    // The manifest came from the mirror; the lost blobs, and only those, from upstream.
    let tail = |reg: &Registry, mark: usize| -> R<String> {
        let log = std::fs::read(reg.log_path())?;
        Ok(String::from_utf8_lossy(log.get(mark..).unwrap_or_default()).into_owned())
    };
    let mirror_log = tail(&mirror, mirror_mark)?;
    let upstream_log = tail(&upstream, upstream_mark)?;
    assert!(
        mirror_log.contains("/v2/lib/img/manifests/1"),
        "manifest asked from the mirror"
    );
    for digest in lost {
        assert!(
            upstream_log.contains(digest.as_str()),
            "{digest} from upstream"
        );
    }
    assert!(
        !upstream_log.contains(built.layers[0].descriptor.digest.as_str()),
        "blobs the mirror has are not fetched upstream"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn same_image_from_two_registries_is_one_image() -> R {
    let one = Registry::start(RegistryOptions::default())?;
    let two = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "twice")?.write_layout(&dir.path().join("img"))?;
    one.push(layout.dir(), "team/img:1")?;
    two.push(layout.dir(), "copy/img:2")?;
    let node = Node::start(
        &format!(
            "[registry]\ninsecure = [\"{}\", \"{}\"]\n",
            one.addr(),
            two.addr()
        ),
        &[],
    )?;
    let names = [one.image("team/img:1"), two.image("copy/img:2")];
    let digests = [
        format!("{}/team/img@{}", one.addr(), layout.digest()),
        format!("{}/copy/img@{}", two.addr(), layout.digest()),
    ];
    let id = node.pull(&names[0]).await?;
    assert_eq!(node.pull(&names[1]).await?, id, "one image id");
    assert_eq!(node.layer_dirs().len(), 3, "layers unpacked once");

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let listed = node.list().await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let img = &listed[0];
    assert_eq!(img.id, id);
    assert_eq!(sorted(img.repo_tags.clone()), sorted(names.to_vec()));
    assert_eq!(sorted(img.repo_digests.clone()), sorted(digests.to_vec()));
    for r in names.iter().chain(&digests).chain([&id]) {
        let by = node.status(r).await?.expect("found");
        assert_eq!(&by, img, "ImageStatus({r}) agrees with ListImages");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_a_crash_are_removed_at_start() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "kept")?.write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "crash/kept:1")?;
    let mut node = Node::insecure(&reg)?;
    let name = reg.image("crash/kept:1");
    let id = node.pull(&name).await?;
    let layers = node.layer_dirs();
    let blobs = node.blob_count();
    let used = node.fs_used().await?;

    // What a crash at each point of a pull leaves (see cri/src/image/mod.rs): a partial
    // blob in ingest/, a partial unpack in layers/tmp/, and a committed layer and blob
    // that no image record names yet.
    let root = node.image_root();
    std::fs::write(root.join("ingest/.tmpPartial"), vec![1u8; 4096])?;
    let unpacking = root.join("layers/tmp/unpack-crashed/usr/bin");
    std::fs::create_dir_all(&unpacking)?;
    std::fs::write(unpacking.join("half"), vec![2u8; 4096])?;
    let orphan_layer = root.join("layers/sha256").join("ab".repeat(32));
    std::fs::create_dir_all(orphan_layer.join("etc"))?;
    std::fs::write(orphan_layer.join("etc/orphan"), vec![3u8; 8192])?;
    let orphan_bytes = b"verified but never recorded".to_vec();
    let orphan_blob = root
        .join("blobs/sha256")
        .join(e2e::image::sha256_digest(&orphan_bytes).trim_start_matches("sha256:"));
    std::fs::write(&orphan_blob, &orphan_bytes)?;
    let importing = root.join("import/import-crashed/blobs/sha256");
    std::fs::create_dir_all(&importing)?;
    std::fs::write(importing.join("partial"), b"x")?;
    assert_eq!(node.scratch_entries(), 3);
    // ImageFsInfo counts what is on disk, referenced or not.
    let (bytes, inodes) = node.fs_used().await?;
    assert!(
        bytes >= used.0 + 8192 + orphan_bytes.len() as u64 && inodes > used.1,
        "{used:?} then {:?}",
        (bytes, inodes)
    );

    node.cri.restart()?;
    assert_eq!(node.scratch_entries(), 0, "unfinished writes discarded");
    assert!(!orphan_layer.exists(), "unreferenced layer collected");
    assert!(!orphan_blob.exists(), "unreferenced blob collected");
    assert_eq!(node.layer_dirs(), layers);
    assert_eq!(node.blob_count(), blobs);
    assert_eq!(node.fs_used().await?, used);
    // The image is whole: found, its files there, and a pull downloads nothing (the
    // registry lost its layers).
    assert_eq!(node.status(&name).await?.map(|i| i.id), Some(id.clone()));
    assert_eq!(
        std::fs::read_to_string(&find_in_layers(&node, "app/marker")[0])?,
        "kept"
    );
    for l in &layout.images[0].layers {
        std::fs::remove_file(reg.blob_path(&l.descriptor.digest))?;
    }
    assert_eq!(node.pull(&name).await?, id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_from_the_request() -> R {
    let reg = Registry::start(RegistryOptions::with_auth("alice", "s3cret"))?;
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "auth")?.write_layout(&dir.path().join("p"))?;
    reg.push(layout.dir(), "private/img:1")?;
    let node = Node::insecure(&reg)?;
    let name = reg.image("private/img:1");

    let err = node.pull(&name).await.expect_err("anonymous must fail");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let wrong = v1::AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = node
        .pull_auth(&name, Some(wrong))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let good = v1::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let id = node.pull_auth(&name, Some(good)).await?;
    assert_eq!(id, layout.images[0].config.digest);
    node.remove(&id).await?;
    // The docker-config `auth` field: base64 of user:password.
    let encoded = v1::AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    assert_eq!(node.pull_auth(&name, Some(encoded)).await?, id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_auth_from_the_request() -> R {
    let reg = Registry::start(RegistryOptions::with_token_auth("bob", "t0ken"))?;
    let tokens = reg.token_server().expect("token server");
    // The registry takes no credentials itself: it sends clients to the token server.
    let anon = e2e::http::get(reg.addr(), "/v2/", &[])?;
    assert_eq!(anon.status, 401);
    let challenge = anon.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(&tokens.realm()),
        "{challenge}"
    );
    let dir = tempfile::tempdir()?;
    let layout = app_image("0", "token")?.write_layout(&dir.path().join("p"))?;
    reg.push(layout.dir(), "private/img:1")?;
    let node = Node::insecure(&reg)?;
    let name = reg.image("private/img:1");

    let err = node.pull(&name).await.expect_err("anonymous must fail");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let wrong = v1::AuthConfig {
        username: "bob".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = node
        .pull_auth(&name, Some(wrong))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let good = v1::AuthConfig {
        username: "bob".into(),
        password: "t0ken".into(),
        ..Default::default()
    };
    let id = node.pull_auth(&name, Some(good)).await?;
    assert_eq!(id, layout.images[0].config.digest);
    assert_eq!(find_in_layers(&node, "app/marker").len(), 1);
    // The token that let the pull through was asked for with the request's credentials,
    // for pulling this repository.
    let asked = tokens.requests();
    assert!(
        asked.iter().any(|r| r.granted
            && r.user.as_deref() == Some("bob")
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:private/img:") && s.contains("pull"))),
        "{asked:?}"
    );
    // Anonymous and wrong-password requests were refused a token.
    for user in [None, Some("bob")] {
        assert!(
            asked
                .iter()
                .any(|r| !r.granted && r.user.as_deref() == user),
            "{user:?}: {asked:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_are_preloaded_at_start() -> R {
    let dir = tempfile::tempdir()?;
    let preload = dir.path().join("preload");
    std::fs::create_dir_all(&preload)?;
    let layout = app_image("0", "airgap")?.write_layout(&dir.path().join("l"))?;
    // skopeo-style archive: index.json names the image in org.opencontainers.image.ref.name
    std::process::Command::new("skopeo")
        .args(["copy", "--preserve-digests"])
        .arg(format!("oci:{}:latest", layout.dir().display()))
        .arg(format!(
            "oci-archive:{}:docker.io/library/airgap:1.0",
            preload.join("airgap.tar").display()
        ))
        .status()?
        .success()
        .then_some(())
        .ok_or_else(|| anyhow::anyhow!("skopeo copy failed"))?;
    std::fs::write(preload.join("broken.tar"), b"this is not a tar")?;

    let node = Node::start(
        "",
        &["--image-preload-dir", preload.to_str().unwrap_or_default()],
    )?;
    let img = node.status("airgap:1.0").await?.expect("preloaded image");
    assert_eq!(img.id, layout.images[0].config.digest);
    assert_eq!(img.repo_tags, vec!["docker.io/library/airgap:1.0"]);
    assert!(
        node.cri.log_text().contains("broken.tar"),
        "a bad archive is reported"
    );
    assert_eq!(find_in_layers(&node, "app/marker").len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_pull_leaves_nothing_trusted() -> R {
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    // A layer big enough that the kill lands during the pull most of the time; the
    // assertions hold wherever it lands.
    let mut big = vec![0u8; 48 << 20];
    let mut x: u32 = 1;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let layout = ImageBuilder::new()
        .layer(busybox_layer()?)
        .layer(Layer::new().file("big", big, 0o644))
        .write_layout(&dir.path().join("big"))?;
    reg.push(layout.dir(), "crash/big:1")?;
    let mut node = Node::insecure(&reg)?;
    let name = reg.image("crash/big:1");
    let pull = {
        let socket = node.cri.socket.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut c = proto::v1::image_service_client::ImageServiceClient::new(
                e2e::cri::connect(&socket).await?,
            );
            c.pull_image(v1::PullImageRequest {
                image: Some(spec(&name)),
                ..Default::default()
            })
            .await?;
            anyhow::Ok(())
        })
    };
    // Kill as soon as the pull has started writing.
    let ingest = node.image_root().join("ingest");
    for _ in 0..2000 {
        if std::fs::read_dir(&ingest)
            .map(|rd| rd.count() > 0)
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    node.cri.restart()?;
    let _ = pull.await;
    assert_eq!(
        node.scratch_entries(),
        0,
        "unfinished writes discarded at start"
    );
    // Whatever was committed is complete: a pull now succeeds and the content is right.
    let id = node.pull(&name).await?;
    assert_eq!(id, layout.images[0].config.digest);
    let big = find_in_layers(&node, "big");
    assert_eq!(std::fs::metadata(&big[0])?.len(), 48 << 20);
    // Records survive restarts.
    node.cri.restart()?;
    assert_eq!(node.status(&name).await?.map(|i| i.id), Some(id));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors() -> R {
    let node = Node::start("", &[])?;
    let mut c = node.cri.images().await?;
    let err = c
        .pull_image(v1::PullImageRequest::default())
        .await
        .expect_err("empty spec");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = node
        .pull("UPPER/Case:tag")
        .await
        .expect_err("bad reference");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("UPPER/Case"), "{}", err.message());
    let err = node
        .pull_auth(
            "127.0.0.1:1/x:1",
            Some(v1::AuthConfig {
                auth: "%%%".into(),
                ..Default::default()
            }),
        )
        .await
        .expect_err("bad auth");
    assert_eq!(err.code(), Code::InvalidArgument);
    // An unreachable registry is Unavailable, not Internal.
    let err = node
        .pull("127.0.0.1:1/nothing/here:1")
        .await
        .expect_err("unreachable");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn server_socket_version_status_and_shutdown() -> R {
    let mut node = Node::start("", &[])?;
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let md = std::fs::metadata(&node.cri.socket)?;
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o660);

    let mut rt = node.cri.runtime().await?;
    let v = rt
        .version(v1::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_name, "nodelet");
    let st = rt
        .status(v1::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let conds = st.status.expect("status").conditions;
    let ready = conds
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady");
    assert!(ready.status, "runc is installed: ready ({ready:?})");
    assert!(st.info.contains_key("info"));
    let pods = rt
        .list_pod_sandbox(v1::ListPodSandboxRequest::default())
        .await?
        .into_inner();
    assert!(pods.items.is_empty());
    // A checkpoint request that names no archive is refused, saying why.
    let err = rt
        .checkpoint_container(v1::CheckpointContainerRequest::default())
        .await
        .expect_err("no location");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("location"), "{}", err.message());

    // A second server refuses to steal a live socket.
    let second = std::process::Command::new(e2e::cri::binary("cri")?)
        .arg("--socket")
        .arg(&node.cri.socket)
        .arg("--root")
        .arg(node.cri.root.join("root"))
        .output()?;
    assert!(
        !second.status.success(),
        "a second server on a live root must fail"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");

    // SIGKILL leaves a stale socket; a restart replaces it.
    node.cri.restart()?;
    let mut rt = node.cri.runtime().await?;
    rt.version(v1::VersionRequest::default()).await?;
    // SIGTERM: clean exit, socket removed.
    let status = node.cri.terminate()?;
    assert!(status.success(), "exit status {status}");
    assert!(!node.cri.socket.exists());
    Ok(())
}
