//! The threads every script runs on, and the watchdog over them.
//!
//! No Lua runs on the threads that serve connections, media and rooms: a
//! room (or a bot) hands each hook call to this pool and awaits the answer.
//! The instruction and time budgets stop ordinary runaway code from inside
//! the VM; what they cannot see (a C function that runs long, anything that
//! runs with the VM's hooks off) the watchdog catches from outside:
//!
//! - Each worker records when its current job started. While any job runs, a
//!   [`Ticker`] looks every [`WATCH_PERIOD`]; a job running longer than its
//!   limit has **overrun**: its caller is told at once ([`Overrun::Stuck`])
//!   and decides without it, and the worker is abandoned to finish (or not)
//!   on its own.
//! - An abandoned worker is replaced, so the pool keeps its strength, up to
//!   `max_stuck` abandoned threads at once. Past that cap a stuck job's
//!   caller is still answered, but its thread is not replaced: a thousand
//!   hostile scripts cost at most `threads + max_stuck` threads.
//! - An abandoned worker whose job does finish rejoins the pool if it is
//!   short of threads, and ends otherwise.
//! - A job that waits in the queue longer than `queue_timeout` without
//!   starting is withdrawn ([`Overrun::Busy`]): the caller decides without
//!   it, and nothing of its was touched.
//!
//! Both limits are kept by the watchdog's thread on the real clock, not by
//! tokio timers: a hook call costs no timer, and a test on paused tokio
//! time cannot see a call "time out" because its clock jumped.
//!
//! Workers spin for a few microseconds before sleeping, so back-to-back
//! hooks (a burst of joins) skip the wake-up; an idle pool sleeps and costs
//! nothing, and so does the watchdog.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::ticker::Ticker;

/// How often the watchdog looks at running jobs.
pub const WATCH_PERIOD: Duration = Duration::from_millis(5);

/// How long the watchdog keeps looking after the last job, before it parks.
const WATCH_LINGER: Duration = Duration::from_millis(500);

/// How long an idle worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(30);

/// How long a caller spins for its answer before it awaits it. Most hooks
/// answer within a few tens of microseconds; on the machines conclave was
/// measured on, waking a task whose thread went to sleep costs more than
/// that (20 to 70 µs), so a short spin makes the common call cheaper and
/// the rare long one costs this much of a worker more.
const CALLER_SPIN: Duration = Duration::from_micros(50);

/// How the pool is sized.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Threads running scripts; 0: one per core.
    pub threads: usize,
    /// Abandoned (stuck) threads there may be at once; past this, a stuck
    /// thread is not replaced.
    pub max_stuck: usize,
    /// How long past its time budget a call may run before the watchdog
    /// gives up on it.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long a call may wait for a free thread.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: 0,
            max_stuck: 16,
            grace: Duration::from_millis(100),
            queue_timeout: Duration::from_secs(2),
        }
    }
}

impl PoolConfig {
    fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
        .max(1)
    }
}

/// Why a job gave no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overrun {
    /// It ran past its limit; its thread was abandoned.
    #[error("did not return within its limit; abandoned")]
    Stuck,
    /// It never started: every thread was busy for the whole queue timeout.
    #[error("waited too long for a free script thread")]
    Busy,
    /// It panicked (a bug in conclave, not in the script).
    #[error("panicked")]
    Panicked,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The pool's metrics.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    threads: Family<StateLabel, Gauge>,
    overruns: Family<StateLabel, Counter>,
}

impl PoolMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "script_threads",
            "Script threads, by state: serving (taking jobs) and stuck (abandoned inside a call that overran)",
            self.threads.clone(),
        );
        registry.register(
            "script_overruns",
            "Script calls given up on, by why: stuck (ran past budget and grace), busy (no free thread in time), panicked; and unreplaced: stuck threads past the max_stuck cap",
            self.overruns.clone(),
        );
    }

    fn gauge(&self, state: &'static str) -> Gauge {
        self.threads.get_or_create(&StateLabel { state }).clone()
    }

    fn count(&self, state: &'static str) {
        self.overruns.get_or_create(&StateLabel { state }).inc();
    }
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const WITHDRAWN: u8 = 2;

/// Tells a caller why its job gave no answer; called by the watchdog.
type OnOverrun = Box<dyn FnOnce(Overrun) + Send>;

struct Job {
    run: Box<dyn FnOnce() + Send>,
    on_overrun: OnOverrun,
    limit: Duration,
    queued_at: Instant,
    state: Arc<AtomicU8>,
    /// Keeps the watchdog awake from submission to the end.
    _watched: Option<crate::ticker::Busy>,
}

/// What a worker is running, as the watchdog sees it.
struct Running {
    started: Instant,
    limit: Duration,
    on_overrun: OnOverrun,
}

struct Worker {
    current: Mutex<Option<Running>>,
    /// Set by the watchdog when it gives up on this worker.
    abandoned: std::sync::atomic::AtomicBool,
}

struct Inner {
    config: PoolConfig,
    target: usize,
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    queued: AtomicUsize,
    sleeping: AtomicUsize,
    /// The serving workers, for the watchdog.
    workers: Mutex<Vec<Arc<Worker>>>,
    serving: AtomicUsize,
    stuck: AtomicUsize,
    serving_gauge: Gauge,
    stuck_gauge: Gauge,
    metrics: Arc<PoolMetrics>,
    watchdog: Mutex<Option<Ticker>>,
    name: String,
    /// Set when the last [`Pool`] handle is dropped: workers end.
    closed: std::sync::atomic::AtomicBool,
    /// Jobs run on the caller's thread ([`Pool::inline`]).
    inline: bool,
}

impl Inner {
    /// The shared state of a pool with no threads started yet.
    fn new(
        name: &str,
        config: PoolConfig,
        target: usize,
        metrics: Arc<PoolMetrics>,
        inline: bool,
    ) -> Arc<Inner> {
        Arc::new(Inner {
            target,
            config,
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            queued: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
            serving: AtomicUsize::new(0),
            stuck: AtomicUsize::new(0),
            serving_gauge: metrics.gauge("serving"),
            stuck_gauge: metrics.gauge("stuck"),
            metrics,
            watchdog: Mutex::new(None),
            name: name.to_owned(),
            closed: std::sync::atomic::AtomicBool::new(false),
            inline,
        })
    }
}

/// The script threads. Cheap to clone; the threads end when the last clone
/// is dropped (a stuck one when its call returns, if ever).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Closes the pool when the last handle goes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        let _queue = self.0.queue.lock().expect("pool queue");
        self.0.ready.notify_all();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("serving", &self.inner.serving.load(Ordering::Relaxed))
            .field("stuck", &self.inner.stuck.load(Ordering::Relaxed))
            .finish()
    }
}

impl Pool {
    /// Starts the threads. `name` prefixes their names (`conclave-lua-0`).
    pub fn start(
        name: &str,
        config: PoolConfig,
        metrics: Arc<PoolMetrics>,
    ) -> std::io::Result<Pool> {
        let target = config.thread_count();
        let inner = Inner::new(name, config, target, metrics, false);
        let weak = Arc::downgrade(&inner);
        let watchdog = Ticker::spawn(
            &format!("{name}-watchdog"),
            WATCH_PERIOD,
            WATCH_LINGER,
            move || {
                if let Some(inner) = weak.upgrade() {
                    watch(&inner);
                }
            },
        )?;
        *inner.watchdog.lock().expect("pool lock") = Some(watchdog);
        for _ in 0..target {
            spawn_worker(&inner)?;
        }
        Ok(Pool {
            _owner: Arc::new(Owner(inner.clone())),
            inner,
        })
    }

    /// A pool without threads: every job runs on its caller's thread, with
    /// no watchdog. For tests on paused tokio time only (a job on another
    /// thread lets a paused clock jump while it runs); a server never uses
    /// one.
    #[doc(hidden)]
    pub fn inline() -> Pool {
        let metrics = Arc::new(PoolMetrics::default());
        let inner = Inner::new("inline", PoolConfig::default(), 0, metrics, true);
        Pool {
            _owner: Arc::new(Owner(inner.clone())),
            inner,
        }
    }

    /// A pool of its own, for a process that runs scripts alone (`conclave
    /// bot`).
    pub fn standalone(threads: usize) -> std::io::Result<Pool> {
        Pool::start(
            "conclave-lua",
            PoolConfig {
                threads,
                ..PoolConfig::default()
            },
            Arc::new(PoolMetrics::default()),
        )
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Threads taking jobs now.
    pub fn serving(&self) -> usize {
        self.inner.serving.load(Ordering::Relaxed)
    }

    /// Threads abandoned in a call that has not returned.
    pub fn stuck(&self) -> usize {
        self.inner.stuck.load(Ordering::Relaxed)
    }

    /// Runs `f` on a script thread and waits for its result, for at most
    /// `limit` once it has started.
    pub async fn run<T: Send + 'static>(
        &self,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overrun> {
        self.run_waiting(limit, CALLER_SPIN, f).await
    }

    /// [`Pool::run`] for a caller nobody waits on (a shadow policy): it
    /// awaits its answer without yielding for it first, so it never takes
    /// a core from callers that are waited on.
    pub async fn run_unhurried<T: Send + 'static>(
        &self,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overrun> {
        self.run_waiting(limit, Duration::ZERO, f).await
    }

    async fn run_waiting<T: Send + 'static>(
        &self,
        limit: Duration,
        spin: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overrun> {
        if self.inner.inline {
            return run_inline(f);
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (over_tx, over_rx) = tokio::sync::oneshot::channel();
        self.submit(
            limit,
            move || {
                let _ = done_tx.send(f());
            },
            move |why| {
                let _ = over_tx.send(why);
            },
        );
        let (mut done_rx, mut over_rx) = (done_rx, over_rx);
        let spin_until = Instant::now() + spin;
        while !spin.is_zero() {
            use tokio::sync::oneshot::error::TryRecvError;
            match done_rx.try_recv() {
                Ok(answer) => return Ok(answer),
                Err(TryRecvError::Closed) => {
                    return Err(over_rx.try_recv().unwrap_or(Overrun::Panicked));
                }
                Err(TryRecvError::Empty) => {}
            }
            if let Ok(why) = over_rx.try_recv() {
                return Err(why);
            }
            if Instant::now() >= spin_until {
                break;
            }
            // Yield rather than spin: on a busy machine the script thread
            // may need this very core to answer.
            std::thread::yield_now();
        }
        tokio::select! {
            biased;
            done = done_rx => done.map_err(|_| over_rx.try_recv().unwrap_or(Overrun::Panicked)),
            Ok(why) = &mut over_rx => Err(why),
        }
    }

    /// [`Pool::run`] for a caller that is a plain thread, not a task.
    pub fn run_blocking<T: Send + 'static>(
        &self,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overrun> {
        if self.inner.inline {
            return run_inline(f);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let over = tx.clone();
        self.submit(
            limit,
            move || {
                let _ = tx.send(Ok(f()));
            },
            move |why| {
                let _ = over.send(Err(why));
            },
        );
        rx.recv().unwrap_or(Err(Overrun::Panicked))
    }

    fn submit(
        &self,
        limit: Duration,
        run: impl FnOnce() + Send + 'static,
        on_overrun: impl FnOnce(Overrun) + Send + 'static,
    ) {
        let inner = &self.inner;
        let watched = inner
            .watchdog
            .lock()
            .expect("pool lock")
            .as_ref()
            .map(Ticker::begin);
        let job = Job {
            run: Box::new(run),
            on_overrun: Box::new(on_overrun),
            limit,
            queued_at: Instant::now(),
            state: Arc::new(AtomicU8::new(QUEUED)),
            _watched: watched,
        };
        inner.queue.lock().expect("pool queue").push_back(job);
        inner.queued.fetch_add(1, Ordering::SeqCst);
        if inner.sleeping.load(Ordering::SeqCst) > 0 {
            inner.ready.notify_one();
        }
    }
}

/// A pool that runs each job on its caller's thread, with no watchdog.
/// Only for tests on paused tokio time, where a job on another thread would
/// let the paused clock jump while it runs.
fn run_inline<T>(f: impl FnOnce() -> T) -> Result<T, Overrun> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| Overrun::Panicked)
}

fn withdraw(state: &AtomicU8) -> bool {
    state
        .compare_exchange(QUEUED, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

fn spawn_worker(inner: &Arc<Inner>) -> std::io::Result<()> {
    let worker = Arc::new(Worker {
        current: Mutex::new(None),
        abandoned: std::sync::atomic::AtomicBool::new(false),
    });
    let n = inner.serving.fetch_add(1, Ordering::SeqCst);
    inner.serving_gauge.inc();
    inner
        .workers
        .lock()
        .expect("pool workers")
        .push(worker.clone());
    let pool = inner.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("{}-{n}", inner.name))
        // Lua's own C stack limit (LUAI_MAXCCALLS) needs far less; serde
        // conversions of deep tables a little more than the default.
        .stack_size(4 * 1024 * 1024)
        .spawn(move || work(pool, worker));
    if spawned.is_err() {
        inner.serving.fetch_sub(1, Ordering::SeqCst);
        inner.serving_gauge.dec();
    }
    spawned.map(drop)
}

/// A worker's life: take jobs until the pool closes, or until it was
/// abandoned and is not needed back.
fn work(inner: Arc<Inner>, mut me: Arc<Worker>) {
    while let Some(job) = next_job(&inner) {
        if job
            .state
            .compare_exchange(QUEUED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Withdrawn by its caller while queued.
            continue;
        }
        let Job {
            run,
            on_overrun,
            limit,
            _watched: watching,
            ..
        } = job;
        *me.current.lock().expect("worker slot") = Some(Running {
            started: Instant::now(),
            limit,
            on_overrun,
        });
        // A panic is conclave's bug, not the script's: the caller hears of
        // it (its reply is dropped) and the thread carries on.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(run));
        let taken = me.current.lock().expect("worker slot").take();
        drop(watching);
        if taken.is_some() || !me.abandoned.load(Ordering::SeqCst) {
            continue;
        }
        // The watchdog gave up on this call and replaced this thread (or
        // hit the cap). Rejoin if the pool is short; end otherwise.
        inner.stuck.fetch_sub(1, Ordering::SeqCst);
        inner.stuck_gauge.dec();
        if inner.serving.load(Ordering::SeqCst) >= inner.target {
            return;
        }
        inner.serving.fetch_add(1, Ordering::SeqCst);
        inner.serving_gauge.inc();
        me = Arc::new(Worker {
            current: Mutex::new(None),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        });
        inner.workers.lock().expect("pool workers").push(me.clone());
    }
    inner.serving.fetch_sub(1, Ordering::SeqCst);
    inner.serving_gauge.dec();
}

/// The next job: spin a little, then sleep until one is queued. `None` once
/// the pool is closed.
fn next_job(inner: &Inner) -> Option<Job> {
    let spin_until = Instant::now() + SPIN;
    while inner.queued.load(Ordering::SeqCst) == 0 && Instant::now() < spin_until {
        std::hint::spin_loop();
    }
    let mut queue = inner.queue.lock().expect("pool queue");
    loop {
        if inner.closed.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(job) = queue.pop_front() {
            inner.queued.fetch_sub(1, Ordering::SeqCst);
            return Some(job);
        }
        inner.sleeping.fetch_add(1, Ordering::SeqCst);
        queue = inner.ready.wait(queue).expect("pool queue");
        inner.sleeping.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One look at every running job; gives up on those past their limit.
fn watch(inner: &Arc<Inner>) {
    let now = Instant::now();
    let mut overran = Vec::new();
    {
        let mut workers = inner.workers.lock().expect("pool workers");
        workers.retain(|worker| {
            let mut current = worker.current.lock().expect("worker slot");
            let late = current
                .as_ref()
                .is_some_and(|r| now.duration_since(r.started) > r.limit);
            if !late {
                return true;
            }
            worker.abandoned.store(true, Ordering::SeqCst);
            overran.push(current.take().expect("checked above").on_overrun);
            false
        });
    }
    // Jobs that waited too long for a thread: withdrawn, untouched.
    let mut withdrawn = Vec::new();
    {
        let limit = inner.config.queue_timeout;
        let mut queue = inner.queue.lock().expect("pool queue");
        while queue
            .front()
            .is_some_and(|job| now.duration_since(job.queued_at) > limit)
        {
            let job = queue.pop_front().expect("checked above");
            inner.queued.fetch_sub(1, Ordering::SeqCst);
            if withdraw(&job.state) {
                withdrawn.push(job);
            }
        }
    }
    for job in withdrawn {
        inner.metrics.count("busy");
        tracing::warn!("a script call waited too long for a free script thread; withdrawn");
        // Told why before its closure (and the reply sender in it) goes.
        let Job {
            run, on_overrun, ..
        } = job;
        on_overrun(Overrun::Busy);
        drop(run);
    }
    // The books first, then the callers: one told of its overrun sees the
    // pool as it now is.
    for on_overrun in overran {
        inner.metrics.count("stuck");
        inner.serving.fetch_sub(1, Ordering::SeqCst);
        inner.serving_gauge.dec();
        let stuck = inner.stuck.fetch_add(1, Ordering::SeqCst) + 1;
        inner.stuck_gauge.inc();
        if stuck > inner.config.max_stuck {
            inner.metrics.count("unreplaced");
            tracing::error!(
                stuck,
                cap = inner.config.max_stuck,
                "a script call overran and the stuck-thread cap is reached: not replacing its thread"
            );
        } else {
            tracing::warn!(
                stuck,
                "a script call overran; its thread is abandoned and replaced"
            );
            if let Err(e) = spawn_worker(inner) {
                tracing::error!(error = %e, "cannot start a replacement script thread");
            }
        }
        on_overrun(Overrun::Stuck);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize, max_stuck: usize) -> Pool {
        Pool::start(
            "test-lua",
            PoolConfig {
                threads,
                max_stuck,
                grace: Duration::ZERO,
                queue_timeout: Duration::from_secs(30),
            },
            Arc::new(PoolMetrics::default()),
        )
        .unwrap()
    }

    /// A job that blocks until the returned sender is used or dropped.
    fn stuck_job() -> (std::sync::mpsc::Sender<()>, impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        (tx, move || {
            let _ = rx.recv();
        })
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_job_runs_on_a_script_thread_and_answers() {
        let pool = pool(2, 4);
        let here = std::thread::current().id();
        let there = pool
            .run(Duration::from_secs(5), || std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(here, there);
        let name = pool
            .run(Duration::from_secs(5), || {
                std::thread::current().name().map(str::to_owned)
            })
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("test-lua-"));
    }

    #[tokio::test]
    async fn an_overrun_is_answered_and_its_thread_replaced() {
        let pool = pool(1, 4);
        let (release, job) = stuck_job();
        let answer = pool.run(Duration::from_millis(20), job).await;
        assert_eq!(answer, Err(Overrun::Stuck));
        assert_eq!(pool.stuck(), 1);
        assert_eq!(pool.serving(), 1, "replaced");
        // The replacement takes work at once.
        assert_eq!(pool.run(Duration::from_secs(5), || 7).await, Ok(7));
        // The stuck call returns at last: the pool is at strength, so the
        // thread ends rather than rejoining.
        release.send(()).unwrap();
        eventually("the abandoned thread to end", || pool.stuck() == 0).await;
        assert_eq!(pool.serving(), 1);
    }

    #[tokio::test]
    async fn past_the_cap_stuck_threads_are_not_replaced_and_rejoin_when_free() {
        let pool = pool(2, 1);
        let (first, job) = stuck_job();
        assert_eq!(
            pool.run(Duration::from_millis(10), job).await,
            Err(Overrun::Stuck)
        );
        let (second, job) = stuck_job();
        assert_eq!(
            pool.run(Duration::from_millis(10), job).await,
            Err(Overrun::Stuck)
        );
        // One replaced (the cap is one), one not.
        assert_eq!(pool.stuck(), 2);
        assert_eq!(pool.serving(), 1);
        assert_eq!(pool.run(Duration::from_secs(5), || 1).await, Ok(1));
        // Freed, a stuck thread rejoins the short pool.
        second.send(()).unwrap();
        eventually("a thread to rejoin", || pool.serving() == 2).await;
        assert_eq!(pool.stuck(), 1);
        drop(first);
        eventually("the other to end", || pool.stuck() == 0).await;
        assert_eq!(pool.serving(), 2);
    }

    #[tokio::test]
    async fn a_job_that_cannot_start_in_time_is_withdrawn_untouched() {
        let pool = Pool::start(
            "test-lua",
            PoolConfig {
                threads: 1,
                max_stuck: 1,
                grace: Duration::ZERO,
                queue_timeout: Duration::from_millis(50),
            },
            Arc::new(PoolMetrics::default()),
        )
        .unwrap();
        let (release, job) = stuck_job();
        // Occupies the only thread without overrunning.
        let busy = pool.run(Duration::from_secs(600), job);
        let waiting = async {
            // Runs only once the first job holds the thread.
            tokio::task::yield_now().await;
            let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = ran.clone();
            let answer = pool
                .run(Duration::from_secs(5), move || {
                    flag.store(true, Ordering::SeqCst)
                })
                .await;
            release.send(()).unwrap();
            (answer, ran)
        };
        let (first, (answer, ran)) = tokio::join!(busy, waiting);
        assert_eq!(first, Ok(()));
        assert_eq!(answer, Err(Overrun::Busy));
        // Give the thread every chance to (wrongly) run it.
        assert_eq!(pool.run(Duration::from_secs(5), || ()).await, Ok(()));
        assert!(!ran.load(Ordering::SeqCst), "a withdrawn job never runs");
    }

    #[test]
    fn a_blocking_caller_gets_the_same_answers() {
        let pool = pool(1, 2);
        assert_eq!(pool.run_blocking(Duration::from_secs(5), || 3), Ok(3));
        let (_release, job) = stuck_job();
        assert_eq!(
            pool.run_blocking(Duration::from_millis(10), job),
            Err(Overrun::Stuck)
        );
        assert_eq!(
            pool.run_blocking(Duration::from_secs(5), || panic!("a bug")),
            Err::<(), _>(Overrun::Panicked)
        );
        assert_eq!(pool.run_blocking(Duration::from_secs(5), || 4), Ok(4));
    }
}
