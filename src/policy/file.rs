//! Policies from YAML files: `--policies <file|dir>` holds `ChannelPolicy`
//! documents (several per file), read at start and again whenever the files
//! change. A file that cannot be read or parsed leaves the policies as they were.

use std::path::{Path, PathBuf};

use super::compile::PolicyDocument;
use super::crd::ChannelPolicy;
use super::SourceHandle;

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
    let watched = path.clone();
    crate::file_watch::watch(&watched, move || match read_policies(&path) {
        Ok(documents) => {
            source.replace(documents);
        }
        Err(e) => {
            tracing::error!(error = %e, "policy files not reloaded; keeping the previous policies");
            source.report_error(e);
        }
    })
}
