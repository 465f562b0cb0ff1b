//! A three-node cluster on loopback, measured: join round trips through the
//! room's owner and through another node, Redis commands per join, how
//! 300 new rooms spread over the nodes, and the time from `kill -9` of a
//! room's node to its members joined again on the others.
//!
//! Starts its own `redis-server` (Debian's `redis-server` package) and three
//! `conclave serve --dev` processes of the release build, each with a
//! `[cluster]` section and the default lease (3 s) and reconnect grace (15 s).
//!
//! ```text
//! cargo bench --bench cluster
//! cargo bench --bench cluster -- --rate 1000 --secs 10 --members 50
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use conclave::auth::{Auth, Grants, claims_for};
use conclave::client::{ClientOptions, SignalClient};
use conclave::protocol::Mode;

const USAGE: &str = "usage: cluster [--rate JOINS_PER_SEC] [--secs SECONDS] [--clients N] \
                     [--rooms N] [--members N] [--spread N]";

struct Options {
    rate: f64,
    secs: f64,
    clients: usize,
    rooms: usize,
    members: usize,
    spread: usize,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut o = Options {
            rate: 1000.0,
            secs: 10.0,
            clients: 500,
            rooms: 50,
            members: 50,
            spread: 300,
        };
        let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}\n{USAGE}");
            match flag.as_str() {
                "--rate" => o.rate = value()?.parse().map_err(|e| bad(&e))?,
                "--secs" => o.secs = value()?.parse().map_err(|e| bad(&e))?,
                "--clients" => o.clients = value()?.parse().map_err(|e| bad(&e))?,
                "--rooms" => o.rooms = value()?.parse().map_err(|e| bad(&e))?,
                "--members" => o.members = value()?.parse().map_err(|e| bad(&e))?,
                "--spread" => o.spread = value()?.parse().map_err(|e| bad(&e))?,
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown option {other}\n{USAGE}")),
            }
        }
        Ok(o)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed with the bench.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    id: String,
    port: u16,
    proc: Option<Proc>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(id: &str, redis: &str) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\n\
             [policy]\nscripts_dir = \"{scripts}\"\nplugins_dir = \"{plugins}\"\n\
             [media]\nbind_ip = \"127.0.0.1\"\nudp_port = 0\n\
             [rooms]\nmax_rooms = 100000\n\
             [signal]\nrate_per_second = 1000\nrate_burst = 1000\nmax_connections = 100000\n\
             [log]\nlevel = \"warn\"\n\
             [cluster]\nredis_url = \"{redis}\"\nnode_id = \"{id}\"\n",
            data = dir.path().join("data").display(),
            scripts = dir.path().join("scripts").display(),
            plugins = dir.path().join("plugins").display(),
        );
        std::fs::create_dir_all(dir.path().join("scripts")).expect("dir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("dir");
        let file = dir.path().join("conclave.toml");
        std::fs::write(&file, config).expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(["serve", "--dev", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("conclave starts");
        Node {
            id: id.into(),
            port,
            proc: Some(Proc(child)),
            _dir: dir,
        }
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn kill9(&mut self) {
        self.proc.take();
    }
}

fn token(user: &str, admin: bool) -> String {
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        admin,
        ..Grants::default()
    };
    Auth::dev()
        .mint(&claims_for(user, "", grants, Duration::from_secs(3600)))
        .expect("mint")
}

async fn client(url: &str, user: &str) -> SignalClient {
    let mut client = SignalClient::connect_with(url, ClientOptions { heartbeat: true })
        .await
        .expect("connect");
    client.hello(&token(user, false)).await.expect("hello");
    client
}

/// Opens `room` on `node` itself: the admin API creates where it is asked.
async fn create_on(http: &reqwest::Client, node: &Node, admin: &str, room: &str) {
    let resp = http
        .post(format!("http://127.0.0.1:{}/api/rooms", node.port))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "room": room }))
        .send()
        .await
        .expect("create");
    assert!(
        resp.status().is_success(),
        "create {room}: {}",
        resp.status()
    );
}

fn redis_commands(redis: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(redis).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `clients` connections to `url` join and leave rooms `prefix-0..rooms` at
/// `rate` joins per second for `secs`; the join round trips, sorted.
async fn join_load(
    url: &str,
    o: &Options,
    label: &str,
    redis: &mut redis::Connection,
    background: f64,
) -> (Vec<Duration>, f64) {
    let mut clients = Vec::new();
    for i in 0..o.clients {
        clients.push(client(url, &format!("{label}-{i}")).await);
    }
    // Every connection's first join, counted apart: through another node it
    // is the one that asks Redis where the room is and opens the relay.
    let before = redis_commands(redis);
    let started = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        c.join(&format!("bench-{}", i % o.rooms), Mode::Audio, None)
            .await
            .expect("join");
        c.leave().await.expect("leave");
    }
    let spent =
        (redis_commands(redis) - before) as f64 - background * started.elapsed().as_secs_f64();
    let first_join_commands = (spent / o.clients as f64).max(0.0);
    let total = (o.rate * o.secs) as usize;
    let every = Duration::from_secs_f64(1.0 / o.rate);
    let start = Instant::now();
    let clients = std::sync::Arc::new(clients);
    let mut tasks = tokio::task::JoinSet::new();
    let mut rtts = Vec::with_capacity(total);
    for n in 0..total {
        tokio::time::sleep_until(start + every * n as u32).await;
        let shared = clients.clone();
        let room = format!("bench-{}", n % o.rooms);
        tasks.spawn(async move {
            let c = &shared[n % shared.len()];
            let t = Instant::now();
            // Refused only if this connection is still in a room from an
            // earlier slot (a slow leave): not a join to measure.
            if let Err(e) = c.join(&room, Mode::Audio, None).await {
                eprintln!("join refused: {e}");
                return None;
            }
            let rtt = t.elapsed();
            c.leave().await.ok()?;
            Some(rtt)
        });
        // One connection handles one request at a time: keep fewer in
        // flight than connections.
        while tasks.len() >= clients.len() / 2 {
            if let Some(Ok(Some(rtt))) = tasks.join_next().await {
                rtts.push(rtt);
            }
        }
    }
    rtts.extend(tasks.join_all().await.into_iter().flatten());
    rtts.sort();
    (rtts, first_join_commands)
}

fn main() {
    let o = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(o));
}

async fn run(o: Options) {
    let redis_dir = tempfile::tempdir().expect("temp dir");
    let redis_port = free_port();
    let _redis = Proc(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(redis_dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)"),
    );
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut redis = loop {
        match redis::Client::open(redis_url.as_str()).and_then(|c| c.get_connection()) {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| Node::start(id, &redis_url))
        .collect();
    let http = reqwest::Client::new();
    let admin = token("ops", true);
    for node in &nodes {
        let url = format!("http://127.0.0.1:{}/api/cluster/nodes", node.port);
        loop {
            let seen = match http.get(&url).bearer_auth(&admin).send().await {
                Ok(r) => r.json::<serde_json::Value>().await.ok(),
                Err(_) => None,
            };
            if seen.is_some_and(|v| v["nodes"].as_array().map_or(0, |a| a.len()) == 3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("three nodes and Redis up");

    // 300 new rooms, each created on a fresh connection to the next node in
    // turn: where do they land?
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..o.spread {
        let url = nodes[i % nodes.len()].ws();
        let c = client(&url, &format!("spreader-{i}")).await;
        let room = format!("spread-{i}");
        c.create(&room, "").await.expect("create");
        let claim: String = redis::cmd("GET")
            .arg(format!("conclave:{{room:{room}}}:owner"))
            .query(&mut redis)
            .expect("owner");
        let node = claim.split('#').next().unwrap_or_default().to_owned();
        if std::env::var_os("CLUSTER_BENCH_TRACE").is_some() {
            eprintln!("{} -> {node}", nodes[i % nodes.len()].id);
        }
        *counts.entry(node).or_default() += 1;
    }
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    println!(
        "{} rooms created round-robin through {ids:?} landed: {counts:?}",
        o.spread
    );

    // The rooms live on node-a (the admin API creates where it is asked),
    // each with one member who stays, so every join is broadcast.
    let owner = nodes[0].ws();
    let mut keepers = Vec::new();
    for r in 0..o.rooms {
        let room = format!("bench-{r}");
        create_on(&http, &nodes[0], &admin, &room).await;
        let keeper = client(&owner, &format!("keeper-{r}")).await;
        keeper.join(&room, Mode::Audio, None).await.expect("join");
        keepers.push(keeper);
    }

    // Redis's own background: heartbeats and claim renewals.
    let before = redis_commands(&mut redis);
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let background = (redis_commands(&mut redis) - before) as f64 / quiet.elapsed().as_secs_f64();

    for (label, url) in [("owner", owner.clone()), ("non-owner", nodes[1].ws())] {
        let before = redis_commands(&mut redis);
        let started = Instant::now();
        let (rtts, first) = join_load(&url, &o, label, &mut redis, background).await;
        let elapsed = started.elapsed().as_secs_f64();
        let commands = (redis_commands(&mut redis) - before) as f64 - background * elapsed;
        println!(
            "joins through the {label} node at {} /s: {} joins, p50 {}, p90 {}, p99 {}, max {}; \
             Redis commands per join {:.2}, per first join on a connection {first:.2} \
             (background {:.0}/s subtracted)",
            o.rate,
            rtts.len(),
            ms(percentile(&rtts, 0.5)),
            ms(percentile(&rtts, 0.9)),
            ms(percentile(&rtts, 0.99)),
            ms(percentile(&rtts, 1.0)),
            (commands / (rtts.len() + o.clients) as f64).max(0.0),
            background,
        );
    }

    // Failover: a room on node-c with members connected to node-c; kill -9
    // node-c; each member goes to node-a or node-b and joins again, retrying
    // while the dead node's lease runs.
    let c_url = nodes[2].ws();
    create_on(&http, &nodes[2], &admin, "failover").await;
    let mut members = Vec::new();
    for i in 0..o.members {
        let m = client(&c_url, &format!("member-{i}")).await;
        m.join("failover", Mode::Audio, None).await.expect("join");
        members.push(m);
    }
    let survivors = [nodes[0].ws(), nodes[1].ws()];
    let killed = Instant::now();
    nodes[2].kill9();
    let mut rejoins = tokio::task::JoinSet::new();
    for (i, mut m) in members.into_iter().enumerate() {
        let url = survivors[i % 2].clone();
        rejoins.spawn(async move {
            while m.next_event().await.is_some() {}
            loop {
                let c = client(&url, &format!("member-{i}")).await;
                match c.join("failover", Mode::Audio, None).await {
                    Ok(_) => return (killed.elapsed(), c),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    let mut back: Vec<Duration> = Vec::new();
    let mut rejoined = Vec::new();
    while let Some(done) = rejoins.join_next().await {
        let (t, c) = done.expect("rejoin task");
        back.push(t);
        rejoined.push(c);
    }
    back.sort();
    println!(
        "kill -9 of a room's node to its {} members joined on live nodes: p50 {}, p99 {}, max {} \
         (lease 3 s, members retry every 100 ms)",
        back.len(),
        ms(percentile(&back, 0.5)),
        ms(percentile(&back, 0.99)),
        ms(percentile(&back, 1.0)),
    );
}
