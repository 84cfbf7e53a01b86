//! Policies from YAML files: `--policies <file|dir>` holds `ChannelPolicy`
//! documents (several per file), read at start and again whenever the files
//! change. A file that cannot be read or parsed leaves the policies as they were.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::compile::PolicyDocument;
use super::crd::ChannelPolicy;
use super::SourceHandle;

/// Changes closer together than this are read once.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The policy files under `path`: the file itself, or a directory's `*.yaml`,
/// `*.yml` and `*.json` files in name order.
fn policy_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every `ChannelPolicy` under `path`. Documents of other kinds are
/// skipped; a document that is not a valid `ChannelPolicy` is an error.
pub fn read_policies(path: &Path) -> Result<Vec<PolicyDocument>, String> {
    let mut documents = Vec::new();
    for file in policy_files(path)? {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let values =
            crate::yaml::documents(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for value in values {
            if value.get("kind").and_then(|k| k.as_str()) != Some("ChannelPolicy") {
                continue;
            }
            let policy: ChannelPolicy = serde_json::from_value(value)
                .map_err(|e| format!("{}: not a valid ChannelPolicy: {e}", file.display()))?;
            let name = policy.metadata.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(format!(
                    "{}: a ChannelPolicy without metadata.name",
                    file.display()
                ));
            }
            let key = match &policy.metadata.namespace {
                Some(ns) => format!("file:{ns}/{name}"),
                None => format!("file:{name}"),
            };
            documents.push(PolicyDocument {
                key,
                generation: None,
                spec: policy.spec,
            });
        }
    }
    Ok(documents)
}

/// Loads `path` into `source` now, then again on every change until the
/// process ends. Fails when the first load fails (a bad start is reported, not
/// run with half the policies).
pub fn watch(path: PathBuf, source: SourceHandle) -> Result<(), String> {
    source.replace(read_policies(&path)?);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", path.display()))?;
    // Watch the directory (or the file's directory): editors and Kubernetes
    // ConfigMaps replace files rather than write them in place.
    let watched = if path.is_dir() {
        path.clone()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_owned()
    };
    watcher
        .watch(&watched, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", watched.display()))?;
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            match read_policies(&path) {
                Ok(documents) => {
                    source.replace(documents);
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy files not reloaded; keeping the previous policies");
                    source.report_error(e);
                }
            }
        }
    });
    Ok(())
}
