//! Join round trip over loopback WebSocket under a steady join rate.
//!
//! Starts a dev server in-process, opens `clients` signaling connections
//! spread over `rooms` rooms, and has each client join its room, stay for half
//! its period, leave, and wait for its next slot. Slots are staggered so the
//! aggregate is `rate` joins per second, and every connection stays open for
//! the whole run. Each room also holds one member that never leaves, so
//! rooms stay open between visits and every join and leave is broadcast.
//!
//! The measured round trip is from handing `join` to the client until its
//! response arrives, so it includes the client library, the socket, the
//! server's connection task, the room task and the way back.
//!
//! Rooms run the shipped default policy (`scripts/default.lua`), as a server
//! started with no configuration does; `--no-policy` runs them without one,
//! to separate signaling from the Lua hooks.
//!
//! ```text
//! cargo bench --bench join_rtt
//! cargo bench --bench join_rtt -- --clients 2000 --rate 2000 --secs 30
//! JOIN_RTT_RATE=500 cargo bench --bench join_rtt
//! cargo bench --bench join_rtt -- --no-policy
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use conclave::app::config::Config;
use conclave::auth::{Auth, Grants, claims_for};
use conclave::client::SignalClient;
use conclave::protocol::Mode;
use conclave::server::Server;

const USAGE: &str = "usage: join_rtt [--clients N] [--rooms N] [--rate JOINS_PER_SEC] \
                     [--secs MEASURED_SECONDS] [--warmup SECONDS] [--no-policy]
each option can also be set as JOIN_RTT_CLIENTS, JOIN_RTT_ROOMS, JOIN_RTT_RATE, \
                     JOIN_RTT_SECS, JOIN_RTT_WARMUP, JOIN_RTT_NO_POLICY=1";

/// Connections opened at once while setting up; enough to be quick, few
/// enough not to overflow the listen backlog.
const CONNECT_CONCURRENCY: usize = 64;

#[derive(Clone, Debug)]
struct Options {
    clients: usize,
    rooms: usize,
    rate: f64,
    secs: f64,
    warmup: f64,
    policy: bool,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            clients: 1000,
            rooms: 100,
            rate: 1000.0,
            secs: 15.0,
            warmup: 2.0,
            policy: true,
        };
        if std::env::var("JOIN_RTT_NO_POLICY").is_ok_and(|v| v == "1") {
            options.policy = false;
        }
        for (key, slot) in [
            ("JOIN_RTT_CLIENTS", "--clients"),
            ("JOIN_RTT_ROOMS", "--rooms"),
            ("JOIN_RTT_RATE", "--rate"),
            ("JOIN_RTT_SECS", "--secs"),
            ("JOIN_RTT_WARMUP", "--warmup"),
        ] {
            if let Ok(value) = std::env::var(key) {
                options.set(slot, &value)?;
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // `cargo bench` passes this to every bench binary.
                "--bench" => {}
                "-h" | "--help" => return Err(USAGE.into()),
                "--no-policy" => options.policy = false,
                flag => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
                    options.set(flag, &value)?;
                }
            }
        }
        if options.clients == 0 || options.rooms == 0 || options.rooms > options.clients {
            return Err(format!("need 0 < rooms <= clients\n{USAGE}"));
        }
        if !(options.rate > 0.0 && options.secs > 0.0 && options.warmup >= 0.0) {
            return Err(format!("rate and secs must be positive\n{USAGE}"));
        }
        Ok(options)
    }

    fn set(&mut self, flag: &str, value: &str) -> Result<(), String> {
        let bad = |e: &dyn fmt::Display| format!("{flag} {value}: {e}\n{USAGE}");
        match flag {
            "--clients" => self.clients = value.parse().map_err(|e| bad(&e))?,
            "--rooms" => self.rooms = value.parse().map_err(|e| bad(&e))?,
            "--rate" => self.rate = value.parse().map_err(|e| bad(&e))?,
            "--secs" => self.secs = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => self.warmup = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
        Ok(())
    }

    /// How often each client joins, for the aggregate to be `rate`.
    fn period(&self) -> Duration {
        Duration::from_secs_f64(self.clients as f64 / self.rate)
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    joins: Vec<Duration>,
    leaves: Vec<Duration>,
    /// How late requests went out against their slot: if this grows, the
    /// load generator could not keep the schedule and the rate is off.
    lag: Vec<Duration>,
    failures: Vec<String>,
    events: u64,
    /// When the first and last measured joins went out, for the achieved rate.
    span: Option<(Instant, Instant)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.joins.extend(other.joins);
        self.leaves.extend(other.leaves);
        self.lag.extend(other.lag);
        self.failures.extend(other.failures);
        self.events += other.events;
        if let Some((first, last)) = other.span {
            self.note_sent(first);
            self.note_sent(last);
        }
    }

    fn note_sent(&mut self, at: Instant) {
        self.span = Some(match self.span {
            Some((first, last)) => (first.min(at), last.max(at)),
            None => (at, at),
        });
    }

    /// Measured joins per second between the first and last one sent.
    fn achieved_rate(&self) -> f64 {
        match self.span {
            Some((first, last)) if last > first => {
                (self.joins.len() - 1) as f64 / (last - first).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

fn room_name(i: usize) -> String {
    format!("bench-{i}")
}

fn token(auth: &Auth, user: &str) -> String {
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        ..Grants::default()
    };
    auth.mint(&claims_for(user, user, grants, Duration::from_secs(3600)))
        .expect("the dev key signs tokens")
}

async fn connect(url: &str, auth: &Auth, user: &str) -> SignalClient {
    let mut client = SignalClient::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
    client
        .hello(&token(auth, user))
        .await
        .unwrap_or_else(|e| panic!("{user} hello refused: {e}"));
    client
}

/// Reads events until `deadline`, as a real client does between requests;
/// false if the connection closed.
async fn drain_until(client: &mut SignalClient, deadline: Instant, tally: &mut Tally) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return true,
            event = client.next_event() => match event {
                Some(_) => tally.events += 1,
                None => return false,
            },
        }
    }
}

struct Schedule {
    first: Instant,
    period: Duration,
    measure_from: Instant,
    end: Instant,
}

async fn visit_repeatedly(mut client: SignalClient, room: String, plan: Schedule) -> Tally {
    let mut tally = Tally::default();
    let hold = plan.period / 2;
    let mut slot = plan.first;
    while slot < plan.end {
        if !drain_until(&mut client, slot, &mut tally).await {
            tally.failures.push("connection closed".into());
            break;
        }
        let measured = slot >= plan.measure_from;
        let sent = Instant::now();
        let joined = client.join(&room, Mode::Audio, None).await;
        let rtt = sent.elapsed();
        if let Err(e) = joined {
            tally.failures.push(format!("join: {e}"));
            slot += plan.period;
            continue;
        }
        if measured {
            tally.joins.push(rtt);
            tally.lag.push(sent - slot);
            tally.note_sent(sent);
        }
        if !drain_until(&mut client, slot + hold, &mut tally).await {
            tally.failures.push("connection closed".into());
            break;
        }
        let sent = Instant::now();
        let left = client.leave().await;
        let rtt = sent.elapsed();
        match left {
            Ok(()) if measured => tally.leaves.push(rtt),
            Ok(()) => {}
            Err(e) => tally.failures.push(format!("leave: {e}")),
        }
        slot += plan.period;
    }
    client.close();
    tally
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn summary(label: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    println!(
        "{label:<10} n={:<7} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        samples.len(),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 90.0)),
        ms(percentile(samples, 99.0)),
        ms(percentile(samples, 99.9)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

async fn run(options: &Options, url: String) -> Tally {
    let auth = Auth::dev();
    let set_up = Instant::now();

    // One member per room that never leaves; it creates the room too.
    let holders: Vec<SignalClient> = stream::iter(0..options.rooms)
        .map(|i| {
            let (url, auth) = (url.clone(), auth.clone());
            async move {
                let client = connect(&url, &auth, &format!("holder-{i}")).await;
                let room = room_name(i);
                client.create(&room, "").await.expect("create the room");
                client
                    .join(&room, Mode::Audio, None)
                    .await
                    .expect("the holder joins");
                client
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let stop_holders = tokio_util::sync::CancellationToken::new();
    let mut holder_tasks = JoinSet::new();
    for mut holder in holders {
        let stop = stop_holders.clone();
        holder_tasks.spawn(async move {
            let mut events = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    event = holder.next_event() => match event {
                        Some(_) => events += 1,
                        None => break,
                    },
                }
            }
            holder.close();
            events
        });
    }

    let clients: Vec<(usize, SignalClient)> = stream::iter(0..options.clients)
        .map(|i| {
            let (url, auth) = (url.clone(), auth.clone());
            async move { (i, connect(&url, &auth, &format!("client-{i}")).await) }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    println!(
        "set up {} holders and {} clients in {:.1} s",
        options.rooms,
        options.clients,
        set_up.elapsed().as_secs_f64()
    );

    // Slots start a little ahead so every task is waiting before the first.
    let start = Instant::now() + Duration::from_millis(500);
    let period = options.period();
    let spacing = Duration::from_secs_f64(1.0 / options.rate);
    let measure_from = start + Duration::from_secs_f64(options.warmup);
    let end = measure_from + Duration::from_secs_f64(options.secs);
    let mut visitors = JoinSet::new();
    for (i, client) in clients {
        let plan = Schedule {
            // Spread evenly over one period; `i as u32` is fine for any
            // client count a single box can hold.
            first: start + spacing * i as u32,
            period,
            measure_from,
            end,
        };
        visitors.spawn(visit_repeatedly(client, room_name(i % options.rooms), plan));
    }
    let mut tally = Tally::default();
    while let Some(done) = visitors.join_next().await {
        tally.merge(done.expect("a client task panicked"));
    }
    stop_holders.cancel();
    while let Some(done) = holder_tasks.join_next().await {
        tally.events += done.expect("a holder task panicked");
    }
    tally
}

fn main() {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };

    // Server and clients get separate runtimes, as they would be separate
    // processes; they still share the machine's cores.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .enable_all()
        .build()
        .expect("a tokio runtime for the server");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("clients")
        .enable_all()
        .build()
        .expect("a tokio runtime for the clients");

    let data = tempfile::tempdir().expect("a temporary data directory");
    let mut config = Config::default();
    config.server.bind.set_port(0);
    // Any free UDP port: a server may already hold the default.
    config.media.udp_port = "0".parse().expect("literal port");
    config.server.data_dir = data.path().to_owned();
    config.server.shutdown_grace = Duration::from_secs(2);
    config.signal.max_connections = (options.clients + options.rooms) * 2;
    config.rooms.max_rooms = options.rooms * 2;
    // The shipped scripts, wherever the binary is started from; no watching,
    // so editing a script during a run cannot change what is measured.
    let (scripts, plugins) = if options.policy {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        (root.join("scripts"), root.join("plugins"))
    } else {
        (PathBuf::new(), PathBuf::new())
    };
    config.policy.scripts_dir = scripts;
    config.policy.plugins_dir = plugins;
    config.policy.watch = false;
    let server = server_rt
        .block_on(Server::start(config, true))
        .expect("the server starts");
    let url = format!("ws://{}/ws", server.addr());

    println!(
        "join_rtt: {} clients in {} rooms (+{} holders), {} joins/s for {} s after {} s warm-up, \
         each client every {:.3} s, {}",
        options.clients,
        options.rooms,
        options.rooms,
        options.rate,
        options.secs,
        options.warmup,
        options.period().as_secs_f64(),
        if options.policy {
            "default policy"
        } else {
            "no policy"
        },
    );
    let mut tally = client_rt.block_on(run(&options, url));
    server_rt.block_on(server.shutdown());

    let achieved = tally.achieved_rate();
    println!(
        "joins      {} measured, {:.1}/s achieved (target {}), {} failed requests, {} events received",
        tally.joins.len(),
        achieved,
        options.rate,
        tally.failures.len(),
        tally.events,
    );
    summary("join rtt", &mut tally.joins);
    summary("leave rtt", &mut tally.leaves);
    summary("send lag", &mut tally.lag);
    for failure in tally.failures.iter().take(5) {
        println!("failure: {failure}");
    }
}
