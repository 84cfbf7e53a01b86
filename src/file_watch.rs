//! Calls a reload function whenever a file (or a directory's files) changes:
//! what policies and key files use to follow edits without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Changes closer together than this are handled once.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Calls `reload` after every change under `path` (changes close together are
/// handled once), until the process ends. The directory is watched rather than
/// the file: editors and Kubernetes ConfigMaps and Secrets replace files (a
/// symlink swap) rather than write them in place. Needs a Tokio runtime.
pub fn watch(path: &Path, mut reload: impl FnMut() + Send + 'static) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", path.display()))?;
    let watched: PathBuf = if path.is_dir() {
        path.to_owned()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    };
    watcher
        .watch(&watched, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", watched.display()))?;
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            reload();
        }
    });
    Ok(())
}
