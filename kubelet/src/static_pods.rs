//! Static pods: a directory of pod manifests (`--pod-manifest-path`, `staticPodPath`),
//! watched with inotify. A change re-reads the files it names (the whole directory only
//! when inotify cannot say which: an overflow, the directory itself replaced) and
//! publishes a new snapshot of desired pods; an invalid file is reported with its reason
//! and does not stop the others.
//!
//! As upstream: dot files are ignored, a file may hold one pod, several YAML documents,
//! or a `List`/`PodList`; a pod is named `<name>-<nodeName>`, its namespace defaults to
//! `default`, and its UID is a hash of the manifest and the node, so an unchanged
//! manifest keeps its pod across restarts (and moves between files) and a changed one
//! replaces it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use notify::Watcher as _;
use sha2::Digest as _;
use tokio::sync::{mpsc, watch};

pub const ANNOTATION_SOURCE: &str = pods::ANNOTATION_CONFIG_SOURCE;
pub const ANNOTATION_HASH: &str = "kubernetes.io/config.hash";
/// The manifest file a static pod came from (ours, for messages).
pub const ANNOTATION_FILE: &str = "nodelet.io/manifest-file";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("manifest {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("reading manifest {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Desired static pods by UID, and the files that could not be used.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pods: BTreeMap<String, Pod>,
    pub errors: Vec<String>,
}

/// The manifests of a directory, parsed file by file, so a change to one file re-reads
/// only that file.
#[derive(Debug, Default)]
pub struct ManifestDir {
    dir: PathBuf,
    node_name: String,
    files: BTreeMap<PathBuf, Result<Vec<Pod>, String>>,
    /// The directory itself could not be read.
    error: Option<String>,
}

impl ManifestDir {
    /// Reads every manifest in `dir`. A missing directory has no pods (upstream waits
    /// for it to appear).
    pub fn load(dir: &Path, node_name: &str) -> Self {
        let mut m = Self {
            dir: dir.to_path_buf(),
            node_name: node_name.to_string(),
            ..Default::default()
        };
        m.reload_all();
        m
    }

    /// Re-reads the whole directory. The path may also name a single manifest file, as
    /// upstream's `--pod-manifest-path` may.
    pub fn reload_all(&mut self) {
        self.files.clear();
        self.error = None;
        if std::fs::metadata(&self.dir).is_ok_and(|m| m.is_file()) {
            let path = self.dir.clone();
            self.parse_into(path);
            return;
        }
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    self.reload(&e.path());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                self.error = Some(format!(
                    "reading manifest directory {}: {e}",
                    self.dir.display()
                ))
            }
        }
    }

    /// Re-reads one file of the directory: parsed again if it is a manifest, forgotten
    /// if it is gone (or a dot file, or not a file).
    pub fn reload(&mut self, path: &Path) {
        if path == self.dir {
            self.reload_all();
            return;
        }
        let Some(name) = path.file_name() else {
            return;
        };
        if path.parent() != Some(self.dir.as_path()) {
            return;
        }
        let path = self.dir.join(name);
        let is_manifest = !name.to_string_lossy().starts_with('.')
            && std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.file_type().is_file() || m.file_type().is_symlink());
        if !is_manifest {
            self.files.remove(&path);
            return;
        }
        self.parse_into(path);
    }

    fn parse_into(&mut self, path: PathBuf) {
        let pods = std::fs::read_to_string(&path)
            .map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })
            .and_then(|text| parse_file(&path, &text, &self.node_name))
            .map_err(|e| e.to_string());
        self.files.insert(path, pods);
    }

    /// Desired pods by UID, with the files (or pods) that could not be used.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.errors.extend(self.error.clone());
        for (path, pods) in &self.files {
            let pods = match pods {
                Ok(pods) => pods,
                Err(e) => {
                    snap.errors.push(e.clone());
                    continue;
                }
            };
            for pod in pods {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(other) = snap.pods.get(&uid) {
                    snap.errors.push(format!(
                        "manifest {}: pod {} duplicates one in {}",
                        path.display(),
                        pod.metadata.name.clone().unwrap_or_default(),
                        file_of(other)
                    ));
                    continue;
                }
                snap.pods.insert(uid, pod.clone());
            }
        }
        // Two files naming the same pod: the first (in file order) wins, as upstream.
        let mut names = BTreeMap::new();
        let mut dupes = vec![];
        for (uid, pod) in &snap.pods {
            let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
            if let Some(first) = names.insert(key.clone(), uid.clone()) {
                let (keep, drop) = if file_of(&snap.pods[&first]) <= file_of(pod) {
                    (first, uid.clone())
                } else {
                    (uid.clone(), first)
                };
                names.insert(key, keep);
                dupes.push(drop);
            }
        }
        for uid in dupes {
            if let Some(pod) = snap.pods.remove(&uid) {
                snap.errors.push(format!(
                    "manifest {}: pod {} already defined by another manifest",
                    file_of(&pod),
                    pod.metadata.name.unwrap_or_default()
                ));
            }
        }
        snap
    }
}

fn file_of(pod: &Pod) -> String {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_FILE))
        .cloned()
        .unwrap_or_default()
}

/// The pods in one manifest file, named and stamped for this node.
pub fn parse_file(path: &Path, text: &str, node_name: &str) -> Result<Vec<Pod>> {
    let invalid = |reason: String| Error::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut docs: Vec<serde_json::Value> = vec![];
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = <serde_json::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| invalid(format!("not YAML or JSON: {e}")))?;
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("List" | "PodList") => {
                let items = value
                    .get("items")
                    .and_then(|i| i.as_array())
                    .cloned()
                    .unwrap_or_default();
                docs.extend(items);
            }
            _ => docs.push(value),
        }
    }
    if docs.is_empty() {
        return Err(invalid("no pod in the file".into()));
    }
    docs.into_iter()
        .map(|doc| pod_of(doc, path, node_name).map_err(invalid))
        .collect()
}

fn pod_of(doc: serde_json::Value, path: &Path, node_name: &str) -> Result<Pod, String> {
    match (
        doc.get("apiVersion").and_then(|v| v.as_str()),
        doc.get("kind").and_then(|v| v.as_str()),
    ) {
        (Some("v1"), Some("Pod")) => {}
        (api, kind) => {
            return Err(format!(
                "expected apiVersion v1, kind Pod; got {}, {}",
                api.unwrap_or("no apiVersion"),
                kind.unwrap_or("no kind")
            ));
        }
    }
    let canonical = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
    let mut pod: Pod = serde_json::from_value(doc).map_err(|e| format!("not a valid pod: {e}"))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("pod has no metadata.name")?;
    let spec = pod.spec.as_mut().ok_or("pod has no spec")?;
    if spec.containers.is_empty() {
        return Err(format!("pod {name} has no containers"));
    }
    let mut seen = std::collections::HashSet::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        if c.name.is_empty() {
            return Err(format!("pod {name}: a container has no name"));
        }
        if !seen.insert(c.name.clone()) {
            return Err(format!(
                "pod {name}: container name {} is used twice",
                c.name
            ));
        }
        if c.image.as_deref().unwrap_or_default().is_empty() {
            return Err(format!("pod {name}: container {} has no image", c.name));
        }
    }
    spec.node_name = Some(node_name.to_string());
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    // A UID the manifest gives is kept, as upstream. Else it is a hash of the pod and
    // the node. Upstream also hashes the file's path; we do not, so renaming or moving
    // a manifest keeps its pod running (two files with the same pod are reported as
    // duplicates instead).
    let uid = match pod.metadata.uid.clone().filter(|u| !u.is_empty()) {
        Some(uid) => {
            let safe = uid.len() <= 128
                && uid != "."
                && uid != ".."
                && uid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !safe {
                return Err(format!(
                    "pod {name}: metadata.uid {uid:?} must be letters, digits, '-', '_' or '.' (at most 128)"
                ));
            }
            uid
        }
        None => {
            let mut hasher = sha2::Sha256::new();
            hasher.update(node_name.as_bytes());
            hasher.update([0]);
            hasher.update(&canonical);
            hex::encode(&hasher.finalize()[..16])
        }
    };
    pod.metadata.name = Some(pods::translate::static_pod_name(&name, node_name));
    pod.metadata.namespace = Some(namespace);
    pod.metadata.uid = Some(uid.clone());
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(ANNOTATION_SOURCE.into(), "file".into());
    annotations.insert(ANNOTATION_HASH.into(), uid);
    annotations.insert(ANNOTATION_FILE.into(), path.display().to_string());
    Ok(pod)
}

/// How far along a change to the directory is.
/// What one inotify event says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    /// A file closed after writing, renamed into or out of place, or removed; false: a
    /// file created or written to, not yet closed.
    complete: bool,
    /// The files it is about; empty: unknown (an overflow or a watch error), or the
    /// directory itself.
    paths: Vec<PathBuf>,
}

impl Change {
    /// The change as far as `root` (the manifest path) goes: events of the parent's
    /// watch about its other entries are dropped; an event about unknown paths stays.
    fn only_about(mut self, root: &Path) -> Option<Self> {
        if self.paths.is_empty() {
            return Some(self);
        }
        self.paths.retain(|p| p == root || p.parent() == Some(root));
        (!self.paths.is_empty()).then_some(self)
    }
}

/// Our own reads of the manifests are events too (open, read, close without writing):
/// they are not changes.
fn classify(ev: notify::Result<notify::Event>) -> Option<Change> {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    let Ok(ev) = ev else {
        return Some(Change {
            complete: true,
            paths: vec![],
        });
    };
    let complete = match ev.kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => true,
        K::Access(_) => return None,
        K::Remove(_) | K::Modify(ModifyKind::Name(_)) => true,
        _ => false,
    };
    let paths = if ev.need_rescan() { vec![] } else { ev.paths };
    Some(Change { complete, paths })
}

/// Keeps the inotify watches that [`watch`] needs; dropping it stops the watching.
pub type Watcher = Arc<Mutex<notify::RecommendedWatcher>>;

/// Watches `dir` (inotify) and publishes a new snapshot after every change. Events
/// closer than `settle` apart are taken together (an editor's save is several events).
///
/// The parent directory is watched too, for `dir` itself: when it is removed, replaced
/// or renamed, or created after the start, it is read again and watched anew, so a
/// replaced directory (say, a config management tool's atomic swap) keeps working
/// without any periodic relisting. `dir` may also be a single manifest file.
pub fn watch(
    dir: PathBuf,
    node_name: String,
    settle: Duration,
) -> Result<(watch::Receiver<Snapshot>, Watcher)> {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Change>();
    let relevant = dir.clone();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Some(change) = classify(ev).and_then(|c| c.only_about(&relevant)) {
            let _ = ev_tx.send(change);
        }
    })
    .map_err(|source| Error::Watch {
        path: dir.clone(),
        source,
    })?;
    let watcher = Arc::new(Mutex::new(watcher));
    if std::fs::symlink_metadata(&dir).is_err() {
        // Upstream waits for a missing directory; creating it lets one drop files in.
        let _ = std::fs::create_dir_all(&dir);
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        lock(&watcher)
            .watch(parent, notify::RecursiveMode::NonRecursive)
            .map_err(|source| Error::Watch {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    lock(&watcher)
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|source| Error::Watch {
            path: dir.clone(),
            source,
        })?;
    // Read only once watched: a file written meanwhile is in the read or in an event
    // (or both; reading it twice is harmless), never in neither.
    let mut manifests = ManifestDir::load(&dir, &node_name);
    let (tx, rx) = watch::channel(manifests.snapshot());
    let rewatch = Arc::downgrade(&watcher);
    tokio::spawn(async move {
        while let Some(first) = ev_rx.recv().await {
            // A finished write, a rename or a removal is a whole change: reload now.
            // Anything else (a file being created or written) waits until the events
            // have been quiet for `settle`, so a half-written file is not read.
            let mut settled = first.complete;
            let mut changes = vec![first];
            while !settled {
                match tokio::time::timeout(settle, ev_rx.recv()).await {
                    Ok(Some(c)) => {
                        settled = c.complete;
                        changes.push(c);
                    }
                    Ok(None) => return,
                    Err(_) => settled = true,
                }
            }
            // Whatever else is queued already goes into the same snapshot.
            while let Ok(c) = ev_rx.try_recv() {
                changes.push(c);
            }
            let mut paths = std::collections::BTreeSet::new();
            let mut everything = false;
            for c in changes {
                everything |= c.paths.is_empty() || c.paths.contains(&dir);
                paths.extend(c.paths);
            }
            if everything {
                // The path itself changed: what was watched may be another inode now
                // (or nothing). Watch what is there now, then read all of it.
                let Some(watcher) = rewatch.upgrade() else {
                    return;
                };
                let mut w = lock(&watcher);
                let _ = w.unwatch(&dir);
                match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        tracing::debug!(path = %dir.display(), "watching static pod manifests")
                    }
                    Err(e) => {
                        tracing::info!(path = %dir.display(), err = %e, "static pod path not there; waiting for it to appear")
                    }
                }
                drop(w);
                manifests.reload_all();
            } else {
                for p in &paths {
                    manifests.reload(p);
                }
            }
            let snap = manifests.snapshot();
            for e in &snap.errors {
                tracing::warn!(error = %e, "static pod manifest not used");
            }
            if tx.send(snap).is_err() {
                return;
            }
        }
    });
    Ok((rx, watcher))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_dir(dir: &Path, node_name: &str) -> Snapshot {
        ManifestDir::load(dir, node_name).snapshot()
    }

    fn parse(text: &str) -> Result<Vec<Pod>> {
        parse_file(Path::new("/etc/pods/web.yaml"), text, "node1")
    }

    const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn names_uids_and_annotations() -> Result<()> {
        let pods = parse(WEB)?;
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-node1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(spec.node_name.as_deref(), Some("node1"));
        let uid = p.metadata.uid.clone().unwrap_or_default();
        assert_eq!(uid.len(), 32);
        assert_eq!(
            parse(WEB)?[0].metadata.uid.as_deref(),
            Some(uid.as_str()),
            "stable"
        );
        let moved = parse_file(Path::new("/elsewhere/other.yaml"), WEB, "node1")?;
        assert_eq!(
            moved[0].metadata.uid.as_deref(),
            Some(uid.as_str()),
            "not tied to the file"
        );
        let other_node = parse_file(Path::new("/etc/pods/web.yaml"), WEB, "node2")?;
        assert_ne!(
            other_node[0].metadata.uid.as_deref(),
            Some(uid.as_str()),
            "tied to the node"
        );
        let changed = parse(&WEB.replace("busybox", "busybox:1"))?;
        assert_ne!(
            changed[0].metadata.uid.as_deref(),
            Some(uid.as_str()),
            "changes with the manifest"
        );
        let ann = p.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get(ANNOTATION_SOURCE).map(String::as_str), Some("file"));
        // A UID in the manifest is kept; one that cannot name a directory is refused.
        let given = WEB.replace("  name: web\n", "  name: web\n  uid: 1234-abcd\n");
        assert_eq!(parse(&given)?[0].metadata.uid.as_deref(), Some("1234-abcd"));
        for bad in ["../x", "a/b", ".."] {
            let text = WEB.replace("  name: web\n", &format!("  name: web\n  uid: {bad:?}\n"));
            let err = parse(&text).expect_err(bad).to_string();
            assert!(err.contains("metadata.uid"), "{err}");
        }
        Ok(())
    }

    #[test]
    fn several_pods_per_file() -> Result<()> {
        let multi = format!("{WEB}---\n{}", WEB.replace("name: web", "name: api"));
        assert_eq!(parse(&multi)?.len(), 2);
        let list = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"x"}]}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"b","namespace":"kube-system"},"spec":{"containers":[{"name":"c","image":"x"}]}}]}"#;
        let pods = parse(list)?;
        assert_eq!(pods[1].metadata.namespace.as_deref(), Some("kube-system"));
        Ok(())
    }

    #[test]
    fn invalid_manifests_say_why() {
        let cases = [
            ("", "no pod"),
            (
                "kind: Deployment\napiVersion: apps/v1\n",
                "expected apiVersion v1, kind Pod",
            ),
            (
                "apiVersion: v1\nkind: Pod\nspec:\n  containers: []\n",
                "no metadata.name",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: []\n",
                "no containers",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: a, image: i}, {name: a, image: i}]\n",
                "used twice",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: a}]\n",
                "no image",
            ),
            ("{ not: [valid", "not YAML or JSON"),
        ];
        for (text, want) in cases {
            match parse(text) {
                Ok(p) => panic!("{text:?} parsed to {} pods", p.len()),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(want) && msg.contains("web.yaml"),
                        "{text:?}: {msg}"
                    );
                }
            }
        }
    }

    #[test]
    fn directory_snapshot_skips_bad_and_dot_files() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a.yaml"), WEB)?;
        std::fs::write(dir.path().join("b.yaml"), "kind: Nope")?;
        std::fs::write(dir.path().join(".swp"), "garbage")?;
        std::fs::write(
            dir.path().join("c.json"),
            WEB.replace("name: web", "name: api"),
        )?;
        let snap = load_dir(dir.path(), "n");
        assert_eq!(snap.pods.len(), 2, "{:?}", snap.errors);
        assert_eq!(snap.errors.len(), 1);
        assert!(snap.errors[0].contains("b.yaml"));
        // The same pod name in two files: the first file wins.
        std::fs::write(
            dir.path().join("d.yaml"),
            WEB.replace("image: busybox", "image: other"),
        )?;
        let snap = load_dir(dir.path(), "n");
        assert_eq!(snap.pods.len(), 2);
        assert!(
            snap.errors.iter().any(|e| e.contains("d.yaml")),
            "{:?}",
            snap.errors
        );
        assert!(load_dir(&dir.path().join("missing"), "n").pods.is_empty());
        Ok(())
    }

    #[test]
    fn a_change_re_reads_only_the_files_it_names() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, WEB)?;
        std::fs::write(&b, WEB.replace("name: web", "name: api"))?;
        let mut m = ManifestDir::load(dir.path(), "n");
        let names = |m: &ManifestDir| -> Vec<String> {
            let mut v: Vec<String> = m
                .snapshot()
                .pods
                .values()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&m), ["api-n", "web-n"]);
        // b changes on disk, but only a is named: b keeps what was read before.
        std::fs::write(&b, WEB.replace("name: web", "name: db"))?;
        std::fs::write(&a, WEB.replace("name: web", "name: www"))?;
        m.reload(&a);
        assert_eq!(names(&m), ["api-n", "www-n"]);
        m.reload(&b);
        assert_eq!(names(&m), ["db-n", "www-n"]);
        // Removed, dot files and paths outside the directory.
        std::fs::remove_file(&a)?;
        m.reload(&a);
        std::fs::write(dir.path().join(".c.yaml"), WEB)?;
        m.reload(&dir.path().join(".c.yaml"));
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("d.yaml"), WEB)?;
        m.reload(&outside.path().join("d.yaml"));
        assert_eq!(names(&m), ["db-n"]);
        // A file turning invalid is reported and drops its pods.
        std::fs::write(&b, "kind: Nope")?;
        m.reload(&b);
        let snap = m.snapshot();
        assert!(snap.pods.is_empty());
        assert!(snap.errors[0].contains("b.yaml"), "{:?}", snap.errors);
        Ok(())
    }

    fn pod_named(name: &str) -> String {
        WEB.replace("name: web", &format!("name: {name}"))
    }

    /// Waits (10 s at most) until the snapshot's pod names are `want`.
    async fn until_pods(rx: &mut watch::Receiver<Snapshot>, want: &[&str]) {
        let names = |s: &Snapshot| -> Vec<String> {
            let mut v: Vec<String> = s
                .pods
                .values()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            v.sort();
            v
        };
        let want: Vec<String> = want.iter().map(|n| format!("{n}-n")).collect();
        let wait = async {
            while names(&rx.borrow_and_update()) != want {
                rx.changed().await.expect("watch task alive");
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            panic!("pods {:?}, want {want:?}", names(&rx.borrow()));
        }
    }

    #[tokio::test]
    async fn a_removed_or_replaced_directory_is_watched_again() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("manifests");
        let (mut rx, _w) =
            watch(dir.clone(), "n".into(), Duration::from_millis(20)).expect("watch");
        std::fs::write(dir.join("a.yaml"), pod_named("a"))?;
        until_pods(&mut rx, &["a"]).await;
        // Swapped for another directory at once (rename over it).
        let next = tmp.path().join("next");
        std::fs::create_dir(&next)?;
        std::fs::write(next.join("b.yaml"), pod_named("b"))?;
        std::fs::rename(&dir, tmp.path().join("old"))?;
        std::fs::rename(&next, &dir)?;
        until_pods(&mut rx, &["b"]).await;
        // The new directory is the one watched.
        std::fs::write(dir.join("c.yaml"), pod_named("c"))?;
        until_pods(&mut rx, &["b", "c"]).await;
        std::fs::write(tmp.path().join("old/z.yaml"), pod_named("z"))?;
        // Removed, then made again.
        std::fs::remove_dir_all(&dir)?;
        until_pods(&mut rx, &[]).await;
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("d.yaml"), pod_named("d"))?;
        until_pods(&mut rx, &["d"]).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_single_manifest_file_is_a_manifest_path() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("web.yaml");
        std::fs::write(&file, pod_named("a"))?;
        std::fs::write(tmp.path().join("other.yaml"), pod_named("other"))?;
        let (mut rx, _w) =
            watch(file.clone(), "n".into(), Duration::from_millis(20)).expect("watch");
        until_pods(&mut rx, &["a"]).await;
        // Written in place, then replaced by a rename (as editors save).
        std::fs::write(&file, pod_named("b"))?;
        until_pods(&mut rx, &["b"]).await;
        let tmp_file = tmp.path().join(".web.yaml.swp");
        std::fs::write(&tmp_file, pod_named("c"))?;
        std::fs::rename(&tmp_file, &file)?;
        until_pods(&mut rx, &["c"]).await;
        std::fs::write(tmp.path().join("more.yaml"), pod_named("more"))?;
        std::fs::remove_file(&file)?;
        until_pods(&mut rx, &[]).await;
        Ok(())
    }

    /// The manifests we ship parse, and every pod in them translates to CRI configs.
    #[test]
    fn shipped_manifests_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let node = pods::translate::NodeInfo {
            node_name: "n".into(),
            host_ip: "192.0.2.1".into(),
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            cgroup_root: "/kubepods".into(),
            cluster_dns: vec![],
            cluster_domain: String::new(),
            host_dns: None,
            seccomp_profile_root: "/var/lib/nodelet/kubelet/seccomp".into(),
            seccomp_default: false,
            ..Default::default()
        };
        let mut count = 0;
        for dir in [root.join("example"), root.join("demo")] {
            let snap = load_dir(&dir, "n");
            assert!(
                snap.errors.is_empty(),
                "{}: {:?}",
                dir.display(),
                snap.errors
            );
            for pod in snap.pods.values() {
                count += 1;
                let sb = pods::translate::sandbox_config(pod, &node, 0, Path::new("/var/log/pods"));
                assert!(sb.is_ok(), "{:?}: {sb:?}", pod.metadata.name);
                for (kind, c) in pods::translate::containers(pod) {
                    let cc = pods::translate::container_config(
                        pod,
                        c,
                        kind,
                        0,
                        "sha256:00",
                        vec![],
                        &node,
                        "10.0.0.2",
                    );
                    assert!(cc.is_ok(), "{:?}/{}: {cc:?}", pod.metadata.name, c.name);
                }
            }
        }
        assert!(count >= 4, "the example and the three demo pods");
    }
}
