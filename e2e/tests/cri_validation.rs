//! What the upstream kubelet and cri-tools' `critest` expect of a CRI runtime, checked
//! through the real socket as root: privileged and `ALL` capabilities on a host whose
//! bounding set lacks some, hugepage limits without the hugetlb controller,
//! `run_as_group` without a user, image volumes, and two
//! servers with their default networks side by side. Each check is the behaviour the
//! cri-tools `pkg/validate` spec (or the kubelet) asserts.

use std::time::Duration;

use e2e::cri::{CriServer, Spawn};
use e2e::pods::{BUSYBOX, PodNode, exec, pod_config, run_pod, shell, start, status};
use e2e::{ImageBuilder, Layer, Registry, RegistryOptions, busybox_layer};
use proto::v1;
use tonic::Code;

type R<T = ()> = anyhow::Result<T>;

/// CAP_SYS_MODULE: dropped from the server's bounding set in the capability test.
const CAP_SYS_MODULE: u32 = 16;

/// The hex `CapBnd:` of a `/proc/<pid>/status` text.
fn cap_bnd(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapBnd:"))?;
    u64::from_str_radix(line["CapBnd:".len()..].trim(), 16).ok()
}

fn with_sc(
    mut c: v1::ContainerConfig,
    sc: v1::LinuxContainerSecurityContext,
) -> v1::ContainerConfig {
    c.linux = Some(v1::LinuxContainerConfig {
        resources: None,
        security_context: Some(sc),
    });
    c
}

#[tokio::test]
async fn privileged_and_all_capabilities_mean_the_runtimes_bounding_set() -> R {
    // As in a kind node or a nested container: the server's bounding set lacks a
    // capability the kernel has. Privileged and ALL must still start, with exactly what
    // the server has (critest: "Privileged is true", "adding ALL capabilities").
    let own = cap_bnd(&std::fs::read_to_string("/proc/self/status")?).unwrap_or_default();
    let want = own & !(1u64 << CAP_SYS_MODULE);
    let node = PodNode::start_with(
        "",
        Spawn {
            drop_bounding_caps: vec![CAP_SYS_MODULE],
            ..Default::default()
        },
    )?;
    let mut c = node.client().await?;

    let mut pc = pod_config(&node, "privileged");
    if let Some(sc) = pc.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = true;
    }
    let pod = run_pod(&mut c, &pc).await?;
    let privileged = start(
        &mut c,
        &pod,
        &pc,
        with_sc(
            shell("priv", "sleep 1000"),
            v1::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        ),
    )
    .await?;
    let (code, out, err) = exec(&mut c, &privileged, &["cat", "/proc/self/status"]).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        cap_bnd(&out),
        Some(want),
        "privileged gets the server's set:\n{out}"
    );
    // What critest runs to see a privileged container manage the network.
    let (code, _, err) = exec(
        &mut c,
        &privileged,
        &["busybox", "brctl", "addbr", "foobar"],
    )
    .await?;
    assert_eq!(code, 0, "brctl in a privileged container: {err}");

    let pc = pod_config(&node, "allcaps");
    let pod = run_pod(&mut c, &pc).await?;
    let all = start(
        &mut c,
        &pod,
        &pc,
        with_sc(
            shell("all", "sleep 1000"),
            v1::LinuxContainerSecurityContext {
                capabilities: Some(v1::Capability {
                    add_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    )
    .await?;
    let (code, out, _) = exec(&mut c, &all, &["cat", "/proc/self/status"]).await?;
    assert_eq!(code, 0);
    assert_eq!(
        cap_bnd(&out),
        Some(want),
        "ALL gets the server's set:\n{out}"
    );

    // Asking for the one capability the server lacks is refused by name.
    let err = c
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(with_sc(
                shell("sysmod", "sleep 1"),
                v1::LinuxContainerSecurityContext {
                    capabilities: Some(v1::Capability {
                        add_capabilities: vec!["SYS_MODULE".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            sandbox_config: Some(pc.clone()),
        })
        .await
        .expect_err("a capability outside the bounding set");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("SYS_MODULE"), "{}", err.message());
    Ok(())
}

#[tokio::test]
async fn hugepage_limits_never_fail_a_pod() -> R {
    // The kubelet sends a hugepage limit (0) for every page size the kernel has, with or
    // without the hugetlb controller. Without it they are dropped; with it they apply.
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "huge");
    let pod = run_pod(&mut c, &pc).await?;
    let huge = |memory: i64| v1::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        hugepage_limits: vec![
            v1::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            },
            v1::HugepageLimit {
                page_size: "1GB".into(),
                limit: 0,
            },
        ],
        ..Default::default()
    };
    let mut cfg = shell("app", "sleep 1000");
    cfg.linux = Some(v1::LinuxContainerConfig {
        resources: Some(huge(64 << 20)),
        security_context: None,
    });
    let id = start(&mut c, &pod, &pc, cfg).await?;
    let st = status(&mut c, &id).await?;
    assert_eq!(
        st.state,
        v1::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );

    c.update_container_resources(v1::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(huge(96 << 20)),
        ..Default::default()
    })
    .await?;
    let (_, mem, _) = exec(
        &mut c,
        &id,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ],
    )
    .await?;
    assert_eq!(
        mem.trim(),
        (96u64 << 20).to_string(),
        "the rest of the update applies"
    );
    Ok(())
}

#[tokio::test]
async fn run_as_group_without_a_user_is_refused() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    // critest: "should return error if RunAsGroup is set without RunAsUser".
    let pc = pod_config(&node, "group");
    let pod = run_pod(&mut c, &pc).await?;
    let err = c
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(with_sc(
                shell("group", "echo $(id -u):$(id -g)"),
                v1::LinuxContainerSecurityContext {
                    run_as_group: Some(v1::Int64Value { value: 1002 }),
                    ..Default::default()
                },
            )),
            sandbox_config: Some(pc.clone()),
        })
        .await
        .expect_err("group without user");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("run_as_group") && err.message().contains("run_as_user"),
        "{}",
        err.message()
    );
    // Nothing is left of the refused container.
    let left = c
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

fn image_mount(path: &str, image: &str, sub: &str, readonly: bool) -> v1::Mount {
    v1::Mount {
        container_path: path.into(),
        readonly,
        image: Some(v1::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub.into(),
        ..Default::default()
    }
}

fn mountinfo_mentions(needle: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(needle)
}

#[tokio::test]
async fn image_volumes_mount_an_image_read_only() -> R {
    // An image of three layers (busybox, then data, then more data) from a registry.
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let layout = ImageBuilder::new()
        .layer(busybox_layer()?)
        .layer(Layer::new().dir("etc", 0o755).file(
            "etc/marker",
            b"from-the-image\n".to_vec(),
            0o644,
        ))
        .layer(
            Layer::new()
                .dir("data", 0o755)
                .file("data/x", b"x".to_vec(), 0o644),
        )
        .cmd(["sh"])
        .write_layout(&dir.path().join("img"))?;
    reg.push(layout.dir(), "vol/data:1")?;
    let name = reg.image("vol/data:1");
    let node = PodNode::start(&format!("[registry]\ninsecure = [\"{}\"]\n", reg.addr()))?;
    let mut images = node.cri.images().await?;
    let id = images
        .pull_image(v1::PullImageRequest {
            image: Some(v1::ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .image_ref;

    let mut c = node.client().await?;
    let pc = pod_config(&node, "imgvol");
    let pod = run_pod(&mut c, &pc).await?;
    let mut cfg = shell("app", "sleep 1000");
    cfg.mounts = vec![
        image_mount("/mnt/image-volume", &id, "", true),
        image_mount("/mnt/etc", &name, "etc", true),
        // busybox: one layer, mounted as it is.
        image_mount("/mnt/one", BUSYBOX, "", true),
    ];
    let ctr = start(&mut c, &pod, &pc, cfg.clone()).await?;
    let run = |cmd: &'static str| {
        let (mut c, ctr) = (c.clone(), ctr.clone());
        async move { exec(&mut c, &ctr, &["sh", "-c", cmd]).await }
    };
    let (code, out, err) = run("cat /mnt/image-volume/etc/marker /mnt/image-volume/data/x").await?;
    assert_eq!((code, out.as_str()), (0, "from-the-image\nx"), "{err}");
    // Read-only, yet not noexec (critest runs the image's own ls from the volume).
    let (code, _, _) = run("touch /mnt/image-volume/test-write").await?;
    assert_ne!(code, 0, "an image volume is read-only");
    let (code, out, err) = run("/mnt/image-volume/bin/ls /mnt/image-volume").await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data") && out.contains("etc"), "{out}");
    // subPath: the directory itself, not the image's root.
    let (code, out, err) =
        run("cat /mnt/etc/marker; ls /mnt/etc/etc 2>&1 || echo no-nested").await?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("from-the-image\n") && out.contains("no-nested"),
        "{out}"
    );
    let (code, _, err) = run("/mnt/one/bin/busybox true && ! touch /mnt/one/y").await?;
    assert_eq!(code, 0, "one-layer image volume, read-only: {err}");

    // The status reports each image mount with the image's id (what PullImage answered).
    let st = status(&mut c, &ctr).await?;
    let m = st
        .mounts
        .iter()
        .find(|m| m.container_path == "/mnt/image-volume")
        .and_then(|m| m.image.clone())
        .unwrap_or_default();
    assert_eq!(m.image_ref, id, "{:?}", st.mounts);

    // In use while the container exists.
    let err = images
        .remove_image(v1::RemoveImageRequest {
            image: Some(v1::ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("an image volume's image is in use");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Refused: writable, a sub path the image lacks, an image not on the node.
    let create = |mounts: Vec<v1::Mount>| {
        let (mut c, pod, pc) = (c.clone(), pod.clone(), pc.clone());
        let mut cfg = shell("bad", "sleep 1");
        cfg.mounts = mounts;
        async move {
            c.create_container(v1::CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(cfg),
                sandbox_config: Some(pc),
            })
            .await
        }
    };
    for (mounts, want) in [
        (vec![image_mount("/mnt/v", &id, "", false)], "read-only"),
        (
            vec![image_mount("/mnt/v", &id, "not-existing", true)],
            "does not exist in the image",
        ),
        (
            vec![image_mount("/mnt/v", &id, "../..", true)],
            "must not contain",
        ),
        (
            vec![image_mount(
                "/mnt/v",
                "docker.io/library/absent:1",
                "",
                true,
            )],
            "pull it first",
        ),
    ] {
        let err = create(mounts).await.expect_err(want);
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(err.message().contains(want), "{}", err.message());
    }

    // Removing the container unmounts its image volumes; the image may go then.
    c.remove_container(v1::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await?;
    assert!(
        !mountinfo_mentions(&ctr),
        "image volumes of {ctr} still mounted"
    );
    let left = c
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    assert!(left.is_empty(), "refused containers left: {left:?}");
    images
        .remove_image(v1::RemoveImageRequest {
            image: Some(v1::ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn two_servers_with_different_pod_cidrs_each_get_their_own_bridge() -> R {
    // Both with an empty CNI config directory: each writes its default network. Each
    // bridge follows its pod CIDR, so neither fights the other over a gateway address.
    let mut servers = Vec::new();
    let mut bridges = Vec::new();
    for (n, cidr) in [(1, "10.247.1.0/24"), (2, "10.247.2.0/24")] {
        let dir = tempfile::tempdir()?;
        let toml = format!(
            "[cni]\nconf_dir = \"{}\"\npod_cidr = \"{cidr}\"\n",
            dir.path().join("net.d").display()
        );
        CriServer::write_config(dir.path(), &toml)?;
        let cri = CriServer::start(dir.path(), &[])?;
        let conf: serde_json::Value = serde_json::from_slice(&std::fs::read(
            dir.path().join("net.d").join("10-nodelet.conflist"),
        )?)?;
        let bridge = conf["plugins"][0]["bridge"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(bridge.starts_with("nodelet-"), "{bridge}");
        bridges.push(bridge);
        servers.push((n, cidr, dir, cri));
    }
    assert_ne!(bridges[0], bridges[1]);

    let result: R = async {
        for (n, cidr, dir, cri) in &servers {
            let mut c = cri.runtime().await?;
            let pc = v1::PodSandboxConfig {
                metadata: Some(v1::PodSandboxMetadata {
                    name: format!("pod{n}"),
                    uid: format!("uid-cidr-{n}"),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                log_directory: dir.path().join("logs").display().to_string(),
                linux: Some(v1::LinuxPodSandboxConfig::default()),
                ..Default::default()
            };
            let pod =
                tokio::time::timeout(Duration::from_secs(120), run_pod(&mut c, &pc)).await??;
            let ip = c
                .pod_sandbox_status(v1::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .and_then(|s| s.network)
                .unwrap_or_default()
                .ip;
            let prefix = cidr.trim_end_matches("0/24");
            assert!(ip.starts_with(prefix), "pod ip {ip} in {cidr}");
            c.stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await?;
            c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await?;
        }
        Ok(())
    }
    .await;
    for (_, _, _, mut cri) in servers {
        let _ = cri.kill();
    }
    for b in &bridges {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", b])
            .status();
    }
    result
}

fn metric_value(m: &[v1::Metric], name: &str) -> Option<u64> {
    m.iter()
        .find(|x| x.name == name)
        .and_then(|x| x.value.as_ref())
        .map(|v| v.value)
}

#[tokio::test]
async fn pod_metrics_describe_and_report_what_the_pod_uses() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let descriptors = c
        .list_metric_descriptors(v1::ListMetricDescriptorsRequest {})
        .await?
        .into_inner()
        .descriptors;
    let described = |name: &str| descriptors.iter().find(|d| d.name == name).cloned();
    let ws = described("container_memory_working_set_bytes").expect("working set described");
    assert_eq!(
        ws.label_keys,
        ["pod", "namespace", "container", "id", "image"]
    );

    let pc = pod_config(&node, "metrics");
    let pod = run_pod(&mut c, &pc).await?;
    // 8 MiB in the writable layer, a busy process, and traffic on eth0 to the bridge.
    let mut app = shell(
        "app",
        "dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null; ping -c 3 -i 0.2 \"$GW\" >/dev/null 2>&1; echo ready; sleep 1000",
    );
    let gw = node.subnet.trim_end_matches("0/24").to_string() + "1";
    app.envs = vec![v1::KeyValue {
        key: "GW".into(),
        value: gw,
    }];
    app.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        security_context: None,
    });
    let ctr = start(&mut c, &pod, &pc, app).await?;
    e2e::pods::wait_for_text(
        &node.log_dir("metrics").join("app.log"),
        "ready",
        Duration::from_secs(60),
    )
    .await?;

    let all = c
        .list_pod_sandbox_metrics(v1::ListPodSandboxMetricsRequest {})
        .await?
        .into_inner()
        .pod_metrics;
    let pm = all
        .iter()
        .find(|p| p.pod_sandbox_id == pod)
        .expect("the pod's metrics");
    let cm = pm
        .container_metrics
        .iter()
        .find(|m| m.container_id == ctr)
        .expect("the container's metrics");
    for m in pm.metrics.iter().chain(&cm.metrics) {
        let d = described(&m.name).unwrap_or_else(|| panic!("{} is not described", m.name));
        assert_eq!(m.label_values.len(), d.label_keys.len(), "{m:?}");
    }
    let ws = metric_value(&cm.metrics, "container_memory_working_set_bytes").unwrap_or(0);
    assert!(ws > 0, "{:?}", cm.metrics);
    assert_eq!(
        metric_value(&cm.metrics, "container_spec_memory_limit_bytes"),
        Some(64 << 20)
    );
    assert_eq!(
        metric_value(&cm.metrics, "container_spec_cpu_quota"),
        Some(50_000)
    );
    let fs = metric_value(&cm.metrics, "container_fs_usage_bytes").unwrap_or(0);
    assert!(fs >= 8 << 20, "writable layer {fs}");
    let labels = &cm.metrics[0].label_values;
    assert_eq!(&labels[..4], ["metrics", "default", "app", ctr.as_str()]);
    let rx = pm
        .metrics
        .iter()
        .find(|m| {
            m.name == "container_network_transmit_packets_total"
                && m.label_values.last().map(String::as_str) == Some("eth0")
        })
        .and_then(|m| m.value.as_ref())
        .map_or(0, |v| v.value);
    assert!(rx >= 3, "pings went out of eth0: {:?}", pm.metrics);

    // The stream sends the same snapshot, then ends.
    let mut stream = c
        .stream_pod_sandbox_metrics(v1::StreamPodSandboxMetricsRequest {})
        .await?
        .into_inner();
    let mut pods = Vec::new();
    while let Some(batch) = stream.message().await? {
        pods.extend(
            batch
                .pod_sandbox_metrics
                .into_iter()
                .map(|p| p.pod_sandbox_id),
        );
    }
    assert_eq!(pods, std::slice::from_ref(&pod));

    // ImageFsInfo names the writable layers' filesystem beside the image filesystem,
    // with the id the container's writable_layer stats carry.
    let fsinfo = node
        .cri
        .images()
        .await?
        .image_fs_info(v1::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let cfs = fsinfo
        .container_filesystems
        .first()
        .expect("container filesystem");
    assert!(
        cfs.used_bytes.as_ref().map_or(0, |v| v.value) >= 8 << 20,
        "{cfs:?}"
    );
    let stats = c
        .container_stats(v1::ContainerStatsRequest {
            container_id: ctr.clone(),
        })
        .await?
        .into_inner()
        .stats
        .unwrap_or_default();
    assert_eq!(
        stats.writable_layer.and_then(|w| w.fs_id),
        cfs.fs_id.clone()
    );
    assert!(!fsinfo.image_filesystems.is_empty());
    Ok(())
}

#[tokio::test]
async fn pod_resources_update_is_recorded() -> R {
    let mut node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "resize");
    let pod = run_pod(&mut c, &pc).await?;
    c.update_pod_sandbox_resources(v1::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.clone(),
        overhead: None,
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
    })
    .await?;
    let info = |c: &mut proto::v1::runtime_service_client::RuntimeServiceClient<_>| {
        let (mut c, pod) = (c.clone(), pod.clone());
        async move {
            let st = c
                .pod_sandbox_status(v1::PodSandboxStatusRequest {
                    pod_sandbox_id: pod,
                    verbose: true,
                })
                .await?
                .into_inner();
            let text = st.info.get("info").cloned().unwrap_or_default();
            anyhow::Ok(serde_json::from_str::<serde_json::Value>(&text)?)
        }
    };
    let v = info(&mut c).await?;
    assert_eq!(v["resources"]["memory"]["limit"], 256 << 20, "{v}");
    assert_eq!(v["resources"]["cpu"]["shares"], 512, "{v}");
    // Kept across a restart of the server.
    node.cri.restart()?;
    let mut c = node.client().await?;
    let v = info(&mut c).await?;
    assert_eq!(v["resources"]["memory"]["limit"], 256 << 20, "{v}");

    let err = c
        .update_pod_sandbox_resources(v1::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "no-such-pod".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown sandbox");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn checkpoint_needs_criu_and_leaves_nothing_when_it_fails() -> R {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("ckpt.tar");
    // No CRIU where it is configured: FailedPrecondition naming it.
    let node = PodNode::start("[runtime]\ncriu = \"/nonexistent/criu\"\n")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "ckpt");
    let pod = run_pod(&mut c, &pc).await?;
    let ctr = start(&mut c, &pod, &pc, shell("app", "sleep 1000")).await?;
    let checkpoint = |c: &mut proto::v1::runtime_service_client::RuntimeServiceClient<_>,
                      location: &std::path::Path| {
        let (mut c, ctr, location) = (c.clone(), ctr.clone(), location.display().to_string());
        async move {
            c.checkpoint_container(v1::CheckpointContainerRequest {
                container_id: ctr,
                location,
                timeout: 60,
            })
            .await
        }
    };
    let err = checkpoint(&mut c, &archive).await.expect_err("no criu");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("CRIU") && err.message().contains("/nonexistent/criu"),
        "{}",
        err.message()
    );
    let err = checkpoint(&mut c, std::path::Path::new("relative.tar"))
        .await
        .expect_err("relative location");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!archive.exists());
    drop(c);
    drop(node);

    // With the node's own CRIU (when the criu package is installed): an archive with the
    // CRIU images, or, where CRIU cannot dump on this kernel, an error that says so, the
    // container still running and nothing at the location.
    let Some(criu) = ["/usr/sbin/criu", "/usr/bin/criu"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("criu is not installed: only the missing-CRIU path was checked");
        return Ok(());
    };
    let works = std::process::Command::new(criu)
        .arg("check")
        .output()
        .is_ok_and(|o| o.status.success());
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "ckpt2");
    let pod = run_pod(&mut c, &pc).await?;
    let ctr = start(&mut c, &pod, &pc, shell("app", "sleep 1000")).await?;
    let got = c
        .checkpoint_container(v1::CheckpointContainerRequest {
            container_id: ctr.clone(),
            location: archive.display().to_string(),
            timeout: 120,
        })
        .await;
    let st = status(&mut c, &ctr).await?;
    assert_eq!(
        st.state,
        v1::ContainerState::ContainerRunning as i32,
        "still running"
    );
    match got {
        Ok(_) => {
            let mut names = Vec::new();
            let mut tar = tar::Archive::new(std::fs::File::open(&archive)?);
            for e in tar.entries()? {
                names.push(e?.path()?.display().to_string());
            }
            for want in ["spec.dump", "config.dump", "rootfs-diff.tar"] {
                assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
            }
            assert!(
                names.iter().any(|n| n.starts_with("checkpoint/")),
                "{names:?}"
            );
        }
        Err(err) => {
            assert!(
                !works,
                "criu check passes, yet the checkpoint failed: {err:?}"
            );
            eprintln!(
                "criu cannot dump on this kernel (criu check fails): {}",
                err.message()
            );
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            assert!(err.message().contains("checkpoint"), "{}", err.message());
            assert!(!archive.exists(), "a failed checkpoint leaves no archive");
        }
    }
    Ok(())
}
