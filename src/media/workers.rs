//! Where a room's media shards run: shard 0 of every room on the server's
//! runtime, beside the UDP port readers; the shards a large room adds on
//! media worker threads, one fewer than the cores, each with a
//! single-threaded tokio runtime of its own.
//!
//! Shard 0 stays on the server's runtime because a small room is one shard
//! and most rooms are small: the port reader that takes a datagram from the
//! kernel wakes the room's shard into the same worker's LIFO slot, and the
//! shard runs next, on the same thread, with no futex, no context switch
//! and a warm cache. Run on a thread of its own, every inbound datagram paid
//! a wake across threads and the thread's park and unpark; measured, that
//! was a third more CPU per forwarded packet at 1,000 packets/s and more at
//! 50 (docs/performance.md).
//!
//! The added shards cannot stay there: a task woken from a worker of
//! tokio's multi-threaded runtime goes into that worker's LIFO slot, which
//! no other worker may steal, so shard 0 handing a batch to shard 1 would
//! have the two take turns on one core while the other core sat parked. On
//! a thread of its own a shard runs where it was placed; the hand-off costs
//! one wake per batch, paid by a room of more than `peers_per_shard`
//! members. Signaling, scripts and the HTTP API share the server's runtime
//! with shard 0 and never hold a packet: scripts run on their own threads.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

/// The media worker threads of one server. Dropping it lets every thread
/// finish: each drops its runtime, and with it whatever shards are left.
pub(crate) struct Workers {
    /// The cores a room's media may use: shard 0 plus one per thread.
    cores: usize,
    threads: Vec<tokio::runtime::Handle>,
    /// Closed when `Workers` drops; each thread waits on its receiver.
    _stop: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts the threads for `cores` cores: `cores - 1` of them.
    pub(crate) fn start(cores: usize) -> std::io::Result<Workers> {
        let cores = cores.max(1);
        let mut threads = Vec::with_capacity(cores - 1);
        let mut stop = Vec::with_capacity(cores - 1);
        for index in 1..cores {
            // Timers only: a shard does no I/O through tokio (its datagrams
            // go out with `sendmmsg` on the ports' sockets), so the thread
            // parks on a futex rather than an epoll instance of its own.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            threads.push(runtime.handle().clone());
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
            cores,
            threads,
            _stop: stop,
            next: AtomicUsize::new(0),
        })
    }

    /// The most shards one room's media may have.
    pub(crate) fn shards_at_most(&self) -> usize {
        self.cores
    }

    /// Where a new room's second shard will go: round-robin over the
    /// threads, so that large rooms spread over them.
    pub(crate) fn next_base(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs shard `shard` of a room: shard 0 on the calling runtime (the
    /// server's), shard `k` on thread `base + k - 1` (modulo their count).
    pub(crate) fn spawn<F>(&self, shard: usize, base: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if shard == 0 || self.threads.is_empty() {
            tokio::spawn(task);
        } else {
            let thread = (base + shard - 1) % self.threads.len();
            self.threads[thread].spawn(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shard_0_runs_here_and_the_others_on_the_threads() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.shards_at_most(), 3);
        let here = std::thread::current().name().map(str::to_owned);
        let mut names = Vec::new();
        for (shard, base) in [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1)] {
            let (tx, rx) = oneshot::channel();
            workers.spawn(shard, base, async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
            names.push(rx.await.unwrap());
        }
        let thread = |n: &str| Some(n.to_owned());
        assert_eq!(
            names,
            [
                here,
                thread("conclave-media-1"),
                thread("conclave-media-2"),
                thread("conclave-media-2"),
                thread("conclave-media-1"),
            ]
        );
    }

    #[tokio::test]
    async fn one_core_means_no_threads() {
        let workers = Workers::start(1).unwrap();
        assert_eq!(workers.shards_at_most(), 1);
        let (tx, rx) = oneshot::channel();
        workers.spawn(1, 0, async move {
            let _ = tx.send(std::thread::current().id());
        });
        assert_eq!(rx.await.unwrap(), std::thread::current().id());
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_tasks() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        workers.spawn(1, 0, async move {
            // Never completes on its own; dropped with the runtime.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert!(rx.await.is_err(), "the task's sender was dropped");
    }
}
