//! Hot reload: a watcher on the scripts and plugins directories.
//!
//! Directories are watched, not files, because editors save by writing a
//! temporary file and renaming it over the old one. Events arrive in bursts,
//! so changed paths are collected until the directory has been quiet for the
//! debounce time, then each is reloaded once, off every room's path (on a
//! blocking thread: compiling a plugin takes milliseconds). The catalog
//! keeps the old version when a load fails; rooms switch when it succeeds.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;

/// Starts watching; stops when `stop` is cancelled. Returns the watcher,
/// which must be kept alive as long as watching should go on.
pub fn watch(
    catalog: Arc<Catalog>,
    stop: CancellationToken,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watcher error"),
        })?;
    let config = catalog.config();
    for dir in [&config.scripts_dir, &config.plugins_dir] {
        if dir.is_dir() {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
            tracing::info!(dir = %dir.display(), "watching for changes");
        } else {
            tracing::info!(dir = %dir.display(), "not watching: no such directory");
        }
    }
    let debounce = config.debounce;
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                path = rx.recv() => match path {
                    Some(path) => path,
                    None => return,
                },
            };
            let mut paths = BTreeSet::from([first]);
            // Gather the rest of the burst.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(path)) => {
                        paths.insert(path);
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let catalog = catalog.clone();
            let work = tokio::task::spawn_blocking(move || {
                for path in paths {
                    if catalog.classify(&path).is_some() {
                        catalog.reload_path(&path);
                    }
                }
            });
            if let Err(e) = work.await {
                tracing::error!(error = %e, "reload task failed");
            }
        }
    });
    Ok(watcher)
}
