//! A thread that ticks while there is work, and costs nothing while there
//! is none.
//!
//! Two things in conclave need a clock hand moving only while something runs:
//! the wasm engine's epoch (a plugin check is interrupted after so many
//! ticks) and the script pool's watchdog (a hook that overran is noticed on a
//! tick). A thread ticking at a fixed rate for ever would cost an idle server
//! a wake-up every period, which on machines where a syscall is dear adds up.
//!
//! So a [`Ticker`] ticks every `period` while work is in flight
//! ([`Ticker::begin`]) and for `linger` after the last of it, then parks. The
//! first `begin` after that wakes it: one `futex` call, once per idle spell.
//! While it is awake, `begin` and its guard's drop are two atomic operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::thread::Thread;
use std::time::Duration;

struct Shared {
    /// Work in flight.
    active: AtomicUsize,
    /// Every `begin` ever: how the thread tells that work came and went
    /// between two ticks.
    begun: AtomicU64,
    parked: AtomicBool,
    /// Set when the last handle is dropped: the thread ends.
    stopped: AtomicBool,
    thread: Thread,
}

/// A handle on a ticking thread; the thread ends when the last one drops.
#[derive(Clone)]
pub struct Ticker {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Stops the thread when the last [`Ticker`] clone goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stopped.store(true, SeqCst);
        self.0.thread.unpark();
    }
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker")
            .field("active", &self.shared.active.load(SeqCst))
            .field("parked", &self.shared.parked.load(SeqCst))
            .finish()
    }
}

/// Work in flight; dropping it ends that work.
#[must_use = "the work ends when the guard is dropped"]
pub struct Busy {
    shared: Arc<Shared>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, SeqCst);
    }
}

impl Ticker {
    /// Starts a thread named `name` calling `tick` every `period` while work
    /// is in flight and for `linger` after.
    pub fn spawn(
        name: &str,
        period: Duration,
        linger: Duration,
        mut tick: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Ticker> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Shared>>();
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let Ok(shared) = rx.recv() else { return };
                drop(rx);
                run(&shared, period, linger, &mut tick);
            })?;
        let shared = Arc::new(Shared {
            active: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            // Asleep until the first work arrives.
            parked: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            thread: handle.thread().clone(),
        });
        tx.send(shared.clone())
            .expect("the thread waits for its state");
        Ok(Ticker {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Work begins: the thread ticks until the guard drops (and `linger`
    /// after).
    pub fn begin(&self) -> Busy {
        let shared = &self.shared;
        shared.active.fetch_add(1, SeqCst);
        shared.begun.fetch_add(1, SeqCst);
        if shared.parked.load(SeqCst) && shared.parked.swap(false, SeqCst) {
            shared.thread.unpark();
        }
        Busy {
            shared: shared.clone(),
        }
    }

    /// Whether the thread is parked now (for tests and metrics).
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(SeqCst)
    }
}

fn run(shared: &Shared, period: Duration, linger: Duration, tick: &mut dyn FnMut()) {
    // Parked from the start: wait for the first `begin`.
    wait_while_parked(shared);
    let mut quiet = Duration::ZERO;
    loop {
        if shared.stopped.load(SeqCst) {
            return;
        }
        let seen = shared.begun.load(SeqCst);
        std::thread::sleep(period);
        tick();
        let idle = shared.active.load(SeqCst) == 0 && shared.begun.load(SeqCst) == seen;
        quiet = if idle { quiet + period } else { Duration::ZERO };
        if quiet < linger {
            continue;
        }
        quiet = Duration::ZERO;
        shared.parked.store(true, SeqCst);
        // Work that began between the check and the store would have seen
        // `parked` false and not woken us: look again before sleeping.
        if shared.active.load(SeqCst) > 0 || shared.begun.load(SeqCst) != seen {
            shared.parked.store(false, SeqCst);
            continue;
        }
        wait_while_parked(shared);
    }
}

fn wait_while_parked(shared: &Shared) {
    while shared.parked.load(SeqCst) && !shared.stopped.load(SeqCst) {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn counting(linger: Duration) -> (Ticker, Arc<AtomicU64>) {
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = Ticker::spawn("test-ticker", Duration::from_millis(1), linger, move || {
            counter.fetch_add(1, SeqCst);
        })
        .unwrap();
        (ticker, ticks)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn it_sleeps_until_work_begins_and_ticks_while_it_runs() {
        let (ticker, ticks) = counting(Duration::from_millis(5));
        assert!(ticker.is_parked());
        assert_eq!(ticks.load(SeqCst), 0, "no work, no ticks");
        let busy = ticker.begin();
        wait_for("ticks while busy", || ticks.load(SeqCst) >= 20);
        // However long the work runs, the ticker does not park under it.
        assert!(!ticker.is_parked());
        drop(busy);
        wait_for("parked after the linger", || ticker.is_parked());
        let parked_at = ticks.load(SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        // At most the tick that was under way when it decided to park.
        assert!(ticks.load(SeqCst) <= parked_at + 1);
        // And it wakes again for the next work.
        let _busy = ticker.begin();
        wait_for("ticks again", || ticks.load(SeqCst) >= parked_at + 5);
    }

    #[test]
    fn short_work_keeps_it_awake_for_the_linger() {
        let (ticker, ticks) = counting(Duration::from_secs(60));
        drop(ticker.begin());
        // Work that came and went still gets ticks after it (a plugin check
        // that began and ended between two ticks needs nothing more, but
        // the next one should not pay for a wake-up).
        wait_for("ticks after short work", || ticks.load(SeqCst) >= 5);
        assert!(!ticker.is_parked());
    }
}
