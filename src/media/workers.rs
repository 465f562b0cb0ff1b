//! The media workers: one thread per core, each running its own
//! single-threaded tokio runtime, where the rooms' media shards live.
//!
//! Why threads of their own rather than tasks on the server's runtime: a
//! shard that hands a batch of packets to another shard of its room wakes
//! it, and tokio's multi-threaded scheduler puts a task woken from a worker
//! into that worker's LIFO slot, which no other worker may steal. The two
//! shards would take turns on one core while the other sat parked. On a
//! runtime of its own a shard runs where it was placed, and the only price
//! of a wake across threads is one futex call, paid per batch, never per
//! packet. Signaling, scripts and the HTTP API stay on the server's runtime
//! and cannot delay a packet.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

/// The media worker threads of one server. Dropping it lets every thread
/// finish: each drops its runtime, and with it whatever shards are left.
pub(crate) struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    /// Closed when `Workers` drops; each thread waits on its receiver.
    _stop: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub(crate) fn start(count: usize) -> std::io::Result<Workers> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("conclave-media-{index}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = rx.await;
                    });
                })?;
        }
        Ok(Workers {
            handles,
            _stop: stop,
            next: AtomicUsize::new(0),
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.handles.len()
    }

    /// Where a new room's first shard goes: round-robin, so rooms spread
    /// over every worker.
    pub(crate) fn next_base(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// Runs `task` on worker `index` (modulo the worker count).
    pub(crate) fn spawn<F>(&self, index: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handles[index % self.handles.len()].spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_worker_they_were_given() {
        let workers = Workers::start(2).unwrap();
        let mut names = Vec::new();
        for index in 0..4 {
            let (tx, rx) = oneshot::channel();
            workers.spawn(index, async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
            names.push(rx.await.unwrap().unwrap());
        }
        assert_eq!(
            names,
            [
                "conclave-media-0",
                "conclave-media-1",
                "conclave-media-0",
                "conclave-media-1"
            ]
        );
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_tasks() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        workers.spawn(0, async move {
            // Never completes on its own; dropped with the runtime.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert!(rx.await.is_err(), "the task's sender was dropped");
    }
}
