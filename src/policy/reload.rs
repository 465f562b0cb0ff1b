//! Hot reload: a watcher on the scripts and plugins directories.
//!
//! Directories are watched, not files, because editors save by writing a
//! temporary file and renaming it over the old one. Events arrive in bursts,
//! so changed paths are collected until the directory has been quiet for the
//! debounce time, then each is reloaded once, off every room's path (on a
//! blocking thread: compiling a plugin takes milliseconds). The catalog
//! keeps the old version when a load fails; rooms switch when it succeeds.
//!
//! Only events that change a directory entry or its content count
//! ([`is_change`]): reading a file produces access events (open, read,
//! close), and reacting to those would make every reload cause the next.

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
            Ok(event) if is_change(&event.kind) => {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
            Ok(_) => {}
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

/// Whether a file event may have changed what a file holds: created,
/// written, renamed or removed. Access (open, read, close) and metadata
/// events never do.
pub fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        // A backend that cannot tell what happened: check; the content
        // hash makes an unchanged file cost one read.
        EventKind::Any => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    #[test]
    fn only_events_that_can_change_a_file_count() {
        let changes = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
        ];
        for kind in changes {
            assert!(is_change(&kind), "{kind:?}");
        }
        let not_changes = [
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
            EventKind::Other,
        ];
        for kind in not_changes {
            assert!(!is_change(&kind), "{kind:?}");
        }
    }
}
