//! The `cri` server killed with SIGKILL at random moments, under load, and restarted
//! each time: what the architecture promises (records before side effects, recover
//! before serve) checked from the outside. Two clients run pod starts and stops and
//! image pulls while a third kills the server; every request answered OK must have
//! its effect, nothing may be duplicated, every image must verify and run, and after
//! removing everything no mount, netns pin, cgroup or monitor may be left.
//!
//! This file holds one test, so nothing else runs on the host while it counts leftovers
//! (cargo runs test binaries one after another).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::cri::connect;
use e2e::pods::{PodNode, pod_config, shell};
use e2e::{ImageBuilder, Layer, Registry, RegistryOptions, busybox_layer};
use proto::v1;
use proto::v1::image_service_client::ImageServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use sha2::Digest as _;
use tonic::transport::Channel;

type R<T = ()> = anyhow::Result<T>;

/// Pod start/stop cycles the pod client runs.
const POD_CYCLES: u32 = 100;
/// Pulls (and removals) the image client runs.
const PULLS: u32 = 40;
const IMAGES: usize = 4;

/// A small deterministic generator (xorshift), seeded from the clock and printed, so a
/// failing run can be replayed by setting CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    /// Sandbox id → its pod name, for every RunPodSandbox answered OK.
    sandboxes: BTreeMap<String, String>,
    /// Sandboxes whose RemovePodSandbox was answered OK.
    removed: BTreeSet<String>,
    /// Containers whose StartContainer was answered OK (and whose pod was not removed).
    started: BTreeMap<String, String>,
    /// Image name → id for every pull answered OK (minus removals answered OK).
    pulled: BTreeMap<String, String>,
    ok: u32,
    failed: u32,
}

/// A client that reconnects after the server comes back.
async fn runtime_client(socket: &Path) -> RuntimeServiceClient<Channel> {
    loop {
        if let Ok(ch) = connect(socket).await {
            return RuntimeServiceClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn image_client(socket: &Path) -> ImageServiceClient<Channel> {
    loop {
        if let Ok(ch) = connect(socket).await {
            return ImageServiceClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Host state that belongs to this server: mounts and monitors under its directory,
/// pinned namespaces in its netns dir, pod cgroups under /nodelet.
fn leftovers(root: &Path, netns_dir: &Path) -> Vec<String> {
    let root_s = root.display().to_string();
    let mut out = Vec::new();
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        if let Some(mp) = line.split(' ').nth(4)
            && mp.starts_with(&root_s)
        {
            out.push(format!("mount {mp}"));
        }
    }
    for e in std::fs::read_dir(netns_dir).into_iter().flatten().flatten() {
        out.push(format!("netns {}", e.path().display()));
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("cri-monitor") && cmd.contains(&root_s) {
            out.push(format!("monitor {cmd}"));
        }
    }
    out
}

fn pod_cgroups() -> BTreeSet<String> {
    ["memory", "cpu", "pids"]
        .iter()
        .flat_map(|c| {
            std::fs::read_dir(Path::new("/sys/fs/cgroup").join(c).join("nodelet"))
                .into_iter()
                .flatten()
                .flatten()
                .map(move |e| format!("{c}/{}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Every blob of the content store hashes to its name.
fn corrupt_blobs(image_root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(image_root.join("blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let got = std::fs::read(e.path())
            .map(|b| hex::encode(sha2::Sha256::digest(&b)))
            .unwrap_or_default();
        if got != name {
            bad.push(name);
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_the_server_loses_nothing() -> R {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("CRASH_SEED={seed}");

    // Several images of three layers each, on a registry of the test's own.
    let reg = Registry::start(RegistryOptions::default())?;
    let dir = tempfile::tempdir()?;
    let mut names = Vec::new();
    for n in 0..IMAGES {
        let layout = ImageBuilder::new()
            .layer(busybox_layer()?)
            .layer(
                Layer::new()
                    .dir("data", 0o755)
                    .file("data/marker", format!("image-{n}\n").into_bytes(), 0o644)
                    .file("data/blob", vec![n as u8; 256 << 10], 0o644),
            )
            .layer(Layer::new().file(format!("data/extra-{n}"), b"x".to_vec(), 0o644))
            .cmd(["sh"])
            .write_layout(&dir.path().join(format!("img{n}")))?;
        reg.push(layout.dir(), &format!("crash/img{n}:1"))?;
        names.push(reg.image(&format!("crash/img{n}:1")));
    }
    let netns_dir = dir.path().join("netns");
    std::fs::create_dir_all(&netns_dir)?;
    let cgroups_before = pod_cgroups();
    let node = PodNode::start(&format!(
        "[registry]\ninsecure = [\"{}\"]\n[runtime]\nnetns_dir = \"{}\"\n",
        reg.addr(),
        netns_dir.display()
    ))?;
    let socket = node.cri.socket.clone();
    let root = node.cri.root.clone();
    let template = pod_config(&node, "t");
    let check_pod = pod_config(&node, "verify");
    let node = Arc::new(Mutex::new(node));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));

    // The killer: SIGKILL after a random 100–700 ms of service, then a restart (which
    // waits until the server serves again, recovery included).
    let killer = {
        let (node, done, kills) = (node.clone(), done.clone(), kills.clone());
        std::thread::spawn(move || -> R {
            let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100 + rng.below(600)));
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let mut n = node.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                n.cri.kill()?;
                kills.fetch_add(1, Ordering::SeqCst);
                n.cri.restart()?;
            }
            Ok(())
        })
    };

    // The pod client: run a pod with one container, then later stop and remove it;
    // up to three pods alive at once.
    let pods = {
        let (ledger, socket, root) = (ledger.clone(), socket.clone(), root.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            let mut c = runtime_client(&socket).await;
            let mut alive: Vec<String> = Vec::new();
            let mut n = 0u32;
            let note = |ok: bool| {
                let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                if ok { l.ok += 1 } else { l.failed += 1 }
            };
            while n < POD_CYCLES {
                if alive.len() >= 3 || (!alive.is_empty() && rng.below(2) == 0) {
                    let id = alive.remove(rng.below(alive.len() as u64) as usize);
                    // From the first stop on, its container may be stopped.
                    ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .started
                        .retain(|_, sb| *sb != id);
                    let stop = c
                        .stop_pod_sandbox(v1::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    note(stop.is_ok());
                    let rm = c
                        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    note(rm.is_ok());
                    if rm.is_ok() {
                        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                        l.removed.insert(id.clone());
                    } else {
                        // Unknown outcome: try again later.
                        alive.push(id);
                        c = runtime_client(&socket).await;
                    }
                    continue;
                }
                n += 1;
                let name = format!("crash-{n}");
                let mut pc = template.clone();
                if let Some(m) = pc.metadata.as_mut() {
                    m.name = name.clone();
                    m.uid = format!("uid-{name}");
                }
                pc.log_directory = root.join("pod-logs").join(&name).display().to_string();
                let Ok(resp) = c
                    .run_pod_sandbox(v1::RunPodSandboxRequest {
                        config: Some(pc.clone()),
                        runtime_handler: String::new(),
                    })
                    .await
                else {
                    note(false);
                    c = runtime_client(&socket).await;
                    continue;
                };
                note(true);
                let id = resp.into_inner().pod_sandbox_id;
                ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sandboxes
                    .insert(id.clone(), name.clone());
                alive.push(id.clone());
                let created = c
                    .create_container(v1::CreateContainerRequest {
                        pod_sandbox_id: id.clone(),
                        config: Some(shell("app", "sleep 1000")),
                        sandbox_config: Some(pc),
                    })
                    .await;
                note(created.is_ok());
                let Ok(created) = created else {
                    c = runtime_client(&socket).await;
                    continue;
                };
                let ctr = created.into_inner().container_id;
                let started = c
                    .start_container(v1::StartContainerRequest {
                        container_id: ctr.clone(),
                    })
                    .await;
                note(started.is_ok());
                if started.is_ok() {
                    ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .started
                        .insert(ctr, id);
                } else {
                    c = runtime_client(&socket).await;
                }
            }
            alive
        })
    };

    // The image client: pull the images in random order, sometimes removing one.
    let pulls = {
        let (ledger, socket, names) = (ledger.clone(), socket.clone(), names.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed.rotate_left(17) | 1);
            let mut c = image_client(&socket).await;
            for _ in 0..PULLS {
                let name = names[rng.below(names.len() as u64) as usize].clone();
                let spec = Some(v1::ImageSpec {
                    image: name.clone(),
                    ..Default::default()
                });
                if rng.below(4) == 0 {
                    // From the first removal on, the image may be gone.
                    ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pulled
                        .remove(&name);
                    let ok = c
                        .remove_image(v1::RemoveImageRequest { image: spec })
                        .await
                        .is_ok();
                    {
                        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                        if ok {
                            l.ok += 1;
                        } else {
                            l.failed += 1;
                        }
                    }
                    if !ok {
                        c = image_client(&socket).await;
                    }
                    continue;
                }
                let pulled = c
                    .pull_image(v1::PullImageRequest {
                        image: spec,
                        ..Default::default()
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner().image_ref);
                {
                    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
                    match &pulled {
                        Some(id) => {
                            l.ok += 1;
                            l.pulled.insert(name, id.clone());
                        }
                        None => l.failed += 1,
                    }
                }
                if pulled.is_none() {
                    c = image_client(&socket).await;
                }
            }
        })
    };

    let started = Instant::now();
    let alive = tokio::time::timeout(Duration::from_secs(600), pods).await??;
    tokio::time::timeout(Duration::from_secs(600), pulls).await??;
    done.store(true, Ordering::SeqCst);
    killer
        .join()
        .map_err(|_| anyhow::anyhow!("killer panicked"))??;
    let load_time = started.elapsed();

    // The server is up and stays up: check what the clients were told.
    let mut c = runtime_client(&socket).await;
    let mut images = image_client(&socket).await;
    let l = std::mem::take(&mut *ledger.lock().unwrap_or_else(|p| p.into_inner()));
    let listed = c
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let mut faults = Vec::new();
    let mut by_name: HashMap<String, u32> = HashMap::new();
    for p in &listed {
        let m = p.metadata.clone().unwrap_or_default();
        *by_name
            .entry(format!("{}/{}", m.name, m.attempt))
            .or_default() += 1;
    }
    for (name, n) in &by_name {
        if *n > 1 {
            faults.push(format!("sandbox {name} listed {n} times"));
        }
    }
    let listed_ids: BTreeSet<&str> = listed.iter().map(|p| p.id.as_str()).collect();
    for id in l.sandboxes.keys() {
        let gone = l.removed.contains(id);
        if gone && listed_ids.contains(id.as_str()) {
            faults.push(format!("sandbox {id} removed (answered OK) but listed"));
        }
        if !gone && !listed_ids.contains(id.as_str()) {
            faults.push(format!("sandbox {id} created (answered OK) but not listed"));
        }
    }
    let containers = c
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    for (ctr, sb) in &l.started {
        match containers.iter().find(|x| &x.id == ctr) {
            None => faults.push(format!(
                "container {ctr} of {sb} started (OK) but not listed"
            )),
            Some(x) if x.state != v1::ContainerState::ContainerRunning as i32 => {
                faults.push(format!("container {ctr} started (OK) but {}", x.state))
            }
            Some(_) => {}
        }
    }
    for (name, id) in &l.pulled {
        let st = images
            .image_status(v1::ImageStatusRequest {
                image: Some(v1::ImageSpec {
                    image: name.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner()
            .image;
        if st.as_ref().map(|i| &i.id) != Some(id) {
            faults.push(format!("image {name} pulled (OK) as {id}, status {st:?}"));
        }
    }
    let image_root = root.join("root").join("images");
    for b in corrupt_blobs(&image_root) {
        faults.push(format!("blob {b} does not hash to its name"));
    }

    // Every listed image runs and holds its own content.
    let listed_images = images
        .list_images(v1::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images;
    let check_sb = c
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(check_pod.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let mut ran = 0;
    for img in &listed_images {
        let Some(name) = img.repo_tags.iter().find(|t| t.contains("crash/img")) else {
            continue;
        };
        let n = name
            .rsplit("img")
            .next()
            .and_then(|s| s.split(':').next())
            .unwrap_or_default()
            .to_string();
        let mut cfg = shell(&format!("verify{n}"), "cat /data/marker");
        cfg.image = Some(v1::ImageSpec {
            image: img.id.clone(),
            ..Default::default()
        });
        let id = c
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: check_sb.clone(),
                config: Some(cfg),
                sandbox_config: Some(check_pod.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        c.start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        let st = e2e::pods::wait_exited(&mut c, &id, Duration::from_secs(60)).await?;
        let log =
            std::fs::read_to_string(root.join("pod-logs/verify").join(format!("verify{n}.log")))
                .unwrap_or_default();
        if st.exit_code != 0 || !log.contains(&format!("image-{n}")) {
            faults.push(format!(
                "image {name} does not run as built: exit {}, log {log:?}",
                st.exit_code
            ));
        }
        ran += 1;
    }

    // Remove everything; nothing of this server may be left on the host.
    for id in alive
        .iter()
        .chain(listed.iter().map(|p| &p.id))
        .chain([&check_sb])
    {
        let _ = c
            .stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
    }
    let after = c
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    if !after.is_empty() {
        faults.push(format!("{} sandboxes survive their removal", after.len()));
    }
    for left in leftovers(&root, &netns_dir) {
        faults.push(format!("left behind: {left}"));
    }
    let cgroups_after = pod_cgroups();
    for cg in cgroups_after.difference(&cgroups_before) {
        faults.push(format!("left behind: cgroup {cg}"));
    }
    let kills = kills.load(Ordering::SeqCst);
    eprintln!(
        "crash safety: {kills} kills in {load_time:?}; {} requests answered OK, {} failed (server down); {} sandboxes and {} containers confirmed, {} removals confirmed, {} images pulled and verified by running {ran}; faults: {}",
        l.ok,
        l.failed,
        l.sandboxes.len(),
        l.started.len(),
        l.removed.len(),
        l.pulled.len(),
        faults.len()
    );
    assert!(kills >= 5, "the server was killed only {kills} times");
    assert!(faults.is_empty(), "{faults:#?}");
    Ok(())
}
