//! SFU forwarding cost, join-to-first-packet time and memory per member.
//!
//! Runs the release `conclave` binary as its own process (so its CPU time is
//! its own), then connects Rust WebRTC clients over loopback: `publishers`
//! interactors each sending a 160-byte audio packet `pps` times a second,
//! and `subscribers` audience members receiving everything. Reports:
//!
//! - forwarded packets per second and per server CPU-second (= per core),
//!   from the server's `/metrics` and `/proc/<pid>/stat`;
//! - join to first media packet: from sending `join` to the first forwarded
//!   packet arriving, per subscriber (p50, p95);
//! - the server's resident memory per connected member;
//! - first, a baseline: the same datagrams (182 bytes, the size of the SRTP
//!   packets conclave forwards) relayed to the same number of receivers by
//!   a process that does nothing but `recv_from` and one plain `send_to` per
//!   receiver, measured the same way; and conclave's cost as a multiple of
//!   it (`--no-baseline` skips it);
//! - last, when Debian's `janus` package is installed and the room has one
//!   publisher, the same clients and load against Janus 1.1's VideoRoom
//!   (`benches/support/janus.rs`): its CPU per packet its subscribers
//!   received, and the multiple of conclave's (`--no-janus` skips it).
//!
//! ```text
//! cargo bench --bench media_forward                                   # 1 publisher -> 50 subscribers
//! cargo bench --bench media_forward -- --publishers 10 --subscribers 0 # a 10-publisher room
//! cargo bench --bench media_forward -- --subscribers 100 --pps 100 --secs 20
//! cargo bench --bench media_forward -- --publishers 0 --subscribers 1000 --secs 60  # idle
//! cargo bench --bench media_forward -- --subscribers 300 --pps 1000 --yield-cpu      # past one core
//! ```
//!
//! `--peers-per-shard N` and `--workers N` set the server's
//! `media.peers_per_shard` and `media.workers`: how many members a shard of a
//! room takes before the room spans another worker thread. `--yield-cpu` runs
//! this bench's own threads (the clients) at nice 19, so that when the
//! server and the clients both want every core, the server gets them: on a
//! machine whose clients cost as much CPU as the server, that is the only
//! way to see one room use more than a core (the clients then fall behind,
//! and the received share says so).

use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conclave::auth::{Auth, Grants, claims_for};
use conclave::client::SignalClient;
use conclave::client::media::{MediaOptions, MediaSession};
use conclave::protocol::{Mode, Request, Role, ServerMessage};

#[path = "support/janus.rs"]
mod janus;
use janus::{Janus, Session};

const USAGE: &str = "usage: media_forward [--publishers N] [--subscribers N] [--pps N] [--secs S] [--no-baseline] \
     [--peers-per-shard N] [--workers N] [--yield-cpu] [--no-janus]";

struct Options {
    publishers: usize,
    subscribers: usize,
    pps: u64,
    secs: u64,
    baseline: bool,
    peers_per_shard: Option<u64>,
    workers: Option<u64>,
    yield_cpu: bool,
    janus: bool,
}

fn options() -> Options {
    let mut o = Options {
        publishers: 1,
        subscribers: 50,
        pps: 50,
        secs: 10,
        baseline: true,
        peers_per_shard: None,
        workers: None,
        yield_cpu: false,
        janus: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{USAGE}"))
        };
        match arg.as_str() {
            "--publishers" => o.publishers = value() as usize,
            "--subscribers" => o.subscribers = value() as usize,
            "--pps" => o.pps = value(),
            "--secs" => o.secs = value(),
            "--no-baseline" => o.baseline = false,
            "--peers-per-shard" => o.peers_per_shard = Some(value()),
            "--workers" => o.workers = Some(value()),
            "--yield-cpu" => o.yield_cpu = true,
            "--no-janus" => o.janus = false,
            // cargo bench passes --bench to every harness=false target.
            "--bench" => {}
            other => panic!("unknown option {other}\n{USAGE}"),
        }
    }
    o
}

/// The server process, killed on drop.
struct ServerProcess {
    child: Child,
    http: String,
    _data: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(o: &Options) -> ServerProcess {
    let data = tempfile::tempdir().expect("temp dir");
    let http_port = free_tcp_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_conclave"));
    if let Some(n) = o.peers_per_shard {
        command.env("CONCLAVE_MEDIA__PEERS_PER_SHARD", n.to_string());
    }
    if let Some(n) = o.workers {
        command.env("CONCLAVE_MEDIA__WORKERS", n.to_string());
    }
    let child = command
        .args(["serve", "--dev"])
        .env("CONCLAVE_SERVER__BIND", format!("127.0.0.1:{http_port}"))
        .env("CONCLAVE_SERVER__DATA_DIR", data.path())
        .env("CONCLAVE_MEDIA__BIND_IP", "127.0.0.1")
        .env("CONCLAVE_MEDIA__UDP_PORT", free_udp_port().to_string())
        .env("CONCLAVE_LOG__LEVEL", "warn")
        // Policies are measured elsewhere (benches/policy.rs).
        .env("CONCLAVE_POLICY__SCRIPTS_DIR", data.path().join("none"))
        .env("CONCLAVE_POLICY__PLUGINS_DIR", data.path().join("none"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the conclave binary");
    ServerProcess {
        child,
        http: format!("127.0.0.1:{http_port}"),
        _data: data,
    }
}

/// utime + stime of a process, in seconds (Linux clock ticks are 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// One of the server's metrics, by its full name.
async fn metric(http: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn forwarded(http: &str) -> f64 {
    metric(http, "conclave_media_forwarded_packets_total").await
}

/// Lowers the calling thread's priority to nice 19 (Linux: per thread).
fn yield_cpu() {
    // SAFETY: setpriority reads no memory of ours; `who` 0 is this thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    assert_eq!(rc, 0, "setpriority: {}", std::io::Error::last_os_error());
}

fn token(user: &str) -> String {
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        ..Grants::default()
    };
    Auth::dev()
        .mint(&claims_for(user, "", grants, Duration::from_secs(3600)))
        .expect("mint")
}

/// One member: joins, starts media, answers every offer, counts packets.
/// Returns once media is connected, with the time from `join` to the first
/// packet reported through `first` when it arrives.
async fn member(
    ws: String,
    user: String,
    role: Role,
    received: Arc<AtomicU64>,
    first: tokio::sync::mpsc::UnboundedSender<Duration>,
    pps: u64,
    go: tokio::sync::watch::Receiver<bool>,
) -> Arc<MediaSession> {
    let mut client = SignalClient::connect(&ws).await.expect("connect");
    client.hello(&token(&user)).await.expect("hello");
    let _ = client.create("bench", "").await;
    let options = MediaOptions {
        audio: role == Role::Interactor,
        video: false,
        bind: "127.0.0.1:0".parse().unwrap(),
    };
    let media = Arc::new(MediaSession::new(options).await.expect("session"));
    let started = Instant::now();
    client
        .join("bench", Mode::Audio, Some(role))
        .await
        .expect("join");
    client
        .request(Request::MediaStart {})
        .await
        .expect("media_start");
    let session = media.clone();
    tokio::spawn(async move {
        while let Some(event) = client.next_event().await {
            if let ServerMessage::MediaOffer { sdp, .. } = event
                && let Err(e) = session.accept_offer(&client, sdp).await
            {
                eprintln!("offer: {e}");
            }
        }
    });
    count_packets(&media, received, first, started);
    media
        .connected(Duration::from_secs(20))
        .await
        .expect("connected");
    if role == Role::Interactor {
        publish(&media, pps, go);
    }
    media
}

/// Counts what `session` receives, and reports the time from `started` to
/// its first packet through `first`.
fn count_packets(
    session: &Arc<MediaSession>,
    received: Arc<AtomicU64>,
    first: tokio::sync::mpsc::UnboundedSender<Duration>,
    started: Instant,
) {
    let session = session.clone();
    tokio::spawn(async move {
        let mut reported = false;
        while session.next_packet(Duration::from_secs(30)).await.is_some() {
            if !reported {
                reported = true;
                let _ = first.send(started.elapsed());
            }
            received.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Sends a 160-byte audio packet `pps` times a second once `go` says so.
fn publish(session: &Arc<MediaSession>, pps: u64, mut go: tokio::sync::watch::Receiver<bool>) {
    let session = session.clone();
    tokio::spawn(async move {
        let _ = go.wait_for(|go| *go).await;
        let payload = [0x5au8; 160];
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / pps));
        let mut n: u32 = 0;
        loop {
            tick.tick().await;
            if session
                .send_audio(&payload, n.wrapping_mul(960), 40)
                .await
                .is_err()
            {
                return;
            }
            n = n.wrapping_add(1);
        }
    });
}

/// A forwarded packet's size on the wire: RTP header, the 160-byte payload
/// the publishers send, and SRTP's 10-byte tag.
const FORWARDED_BYTES: usize = 12 + 160 + 10;

/// The baseline relay, run as a child process of this bench (`--relay`):
/// prints its port, reads the receivers' addresses from stdin, then sends
/// every datagram it gets to each of them with a plain `send_to`.
fn relay_main() -> ! {
    use std::io::{BufRead, Write};
    let socket = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
    println!("{}", socket.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    let receivers: Vec<std::net::SocketAddr> = std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.is_empty())
        .map(|l| l.parse().expect("receiver address"))
        .collect();
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        for to in &receivers {
            let _ = socket.send_to(&buf[..n], to);
        }
    }
}

/// What the baseline measured.
struct Baseline {
    per_packet_us: f64,
    delivered: f64,
}

/// Relays the publishers' rate to `receivers` sockets through the plain
/// relay process and measures its CPU per delivered datagram.
async fn raw_baseline(o: &Options, receivers: usize) -> Baseline {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--relay")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the relay");
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .expect("relay port");
    let relay: std::net::SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let mut list = String::new();
    for _ in 0..receivers {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        list.push_str(&format!("{}\n", socket.local_addr().unwrap()));
        let received = received.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while socket.recv_from(&mut buf).await.is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    list.push('\n');
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    for _ in 0..o.publishers {
        let pps = o.pps;
        tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let payload = [0x5au8; FORWARDED_BYTES];
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / pps));
            loop {
                tick.tick().await;
                let _ = socket.send_to(&payload, relay).await;
            }
        });
    }
    // The same settling time as the server gets after its joins.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id();
    let cpu0 = cpu_seconds(pid);
    let rx0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let rx = (received.load(Ordering::Relaxed) - rx0) as f64;
    let _ = child.kill();
    let _ = child.wait();
    let expected = o.publishers as f64 * o.pps as f64 * elapsed * receivers as f64;
    Baseline {
        per_packet_us: 1e6 * cpu / rx.max(1.0),
        delivered: 100.0 * rx / expected.max(1.0),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--relay") {
        relay_main();
    }
    let o = options();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if o.yield_cpu {
        builder.on_thread_start(yield_cpu);
    }
    let runtime = builder.build().unwrap();
    // The publishers and the measurement keep the normal priority (as do
    // this thread, which only directs the joins, and the children it
    // starts): a publisher starved of CPU would send less than its rate,
    // and the server would have less to forward.
    let publishing = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("publishers")
        .enable_all()
        .build()
        .unwrap();
    let members = o.publishers + o.subscribers;
    let fanout = if o.publishers > 1 {
        members - 1
    } else {
        o.subscribers
    };
    let baseline = (o.baseline && o.publishers > 0).then(|| {
        eprintln!("media_forward: raw UDP baseline, {fanout} receivers...");
        runtime.block_on(raw_baseline(&o, fanout))
    });
    let server = start_server(&o);
    let pid = server.child.id();
    let conclave_us = runtime.block_on(async {
        let ws = format!("ws://{}/ws", server.http);
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("http://{}/healthz", server.http))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rss_empty = rss_bytes(pid);
        let received = Arc::new(AtomicU64::new(0));
        let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut sessions = Vec::new();
        // Publishing starts at once, so that the joins are timed under load;
        // with --yield-cpu after the last join, which a saturated server
        // would otherwise starve of the clients' CPU.
        let (go, go_rx) = tokio::sync::watch::channel(!o.yield_cpu);
        eprintln!(
            "media_forward: {} publisher(s) at {} pps, {} subscriber(s); joining...",
            o.publishers, o.pps, o.subscribers
        );
        for p in 0..o.publishers {
            let join = member(
                ws.clone(),
                format!("pub{p}"),
                Role::Interactor,
                received.clone(),
                first_tx.clone(),
                o.pps,
                go_rx.clone(),
            );
            sessions.push(publishing.spawn(join).await.expect("publisher"));
        }
        for s in 0..o.subscribers {
            sessions.push(
                member(
                    ws.clone(),
                    format!("sub{s}"),
                    Role::Audience,
                    received.clone(),
                    first_tx.clone(),
                    o.pps,
                    go_rx.clone(),
                )
                .await,
            );
        }
        let _ = go.send(true);
        // Everyone with someone to hear hears a first packet.
        let expecting = if o.publishers > 1 {
            members
        } else {
            o.subscribers
        };
        let mut firsts = Vec::new();
        // With no publisher the run measures what idle members cost.
        while o.publishers > 0 && firsts.len() < expecting {
            match tokio::time::timeout(Duration::from_secs(20), first_rx.recv()).await {
                Ok(Some(d)) => firsts.push(d),
                _ => break,
            }
        }
        firsts.sort();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_full = rss_bytes(pid);

        eprintln!("media_forward: measuring for {} s", o.secs);
        // On the publishers' runtime, at the normal priority: a starved
        // clock would stretch the window past what it counts.
        let (http, counted, secs) = (server.http.clone(), received.clone(), o.secs);
        let (elapsed, cpu, fwd, rx) = publishing
            .spawn(async move {
                let cpu0 = cpu_seconds(pid);
                let fwd0 = forwarded(&http).await;
                let rx0 = counted.load(Ordering::Relaxed);
                let t0 = Instant::now();
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let elapsed = t0.elapsed().as_secs_f64();
                let cpu = cpu_seconds(pid) - cpu0;
                let fwd = forwarded(&http).await - fwd0;
                let rx = counted.load(Ordering::Relaxed) - rx0;
                (elapsed, cpu, fwd, rx)
            })
            .await
            .expect("measuring");

        let sent_expected = o.publishers as f64 * o.pps as f64 * elapsed;
        let expected = sent_expected * fanout as f64;
        println!(
            "members                      {members} ({} publishing at {} pps)",
            o.publishers, o.pps
        );
        println!("forwarded packets/s          {:.0}", fwd / elapsed);
        println!(
            "media shards                 {}",
            metric(&server.http, "conclave_media_shards").await
        );
        println!(
            "received by clients/s        {:.0} ({:.2}% of expected)",
            rx as f64 / elapsed,
            100.0 * rx as f64 / expected.max(1.0)
        );
        println!(
            "server CPU                   {:.2}% of one core",
            100.0 * cpu / elapsed
        );
        if o.publishers == 0 {
            println!(
                "idle, per member             {:.4}% of one core",
                100.0 * cpu / elapsed / members.max(1) as f64
            );
        }
        if cpu > 0.0 && fwd > 0.0 {
            println!("forwarded per CPU-second     {:.0}", fwd / cpu);
            println!(
                "server CPU per packet        {:.2} us",
                1e6 * cpu / fwd.max(1.0)
            );
        }
        if let Some(b) = &baseline {
            println!(
                "raw UDP relay per packet     {:.2} us ({:.0} per CPU-second, {:.2}% delivered)",
                b.per_packet_us,
                1e6 / b.per_packet_us.max(1e-9),
                b.delivered
            );
            if cpu > 0.0 {
                println!(
                    "conclave / raw UDP           {:.2}x the CPU per packet",
                    1e6 * cpu / fwd.max(1.0) / b.per_packet_us.max(1e-9)
                );
            }
        }
        if o.yield_cpu {
            println!("join -> first packet         not timed (publishing began after the joins)");
        } else {
        println!(
            "join -> first packet         p50 {:.0} ms, p95 {:.0} ms ({} of {expecting} members)",
            percentile(&firsts, 0.5).as_secs_f64() * 1e3,
            percentile(&firsts, 0.95).as_secs_f64() * 1e3,
            firsts.len()
        );
        }
        println!(
            "server memory per member     {:.0} KiB (RSS {} -> {} MiB)",
            (rss_full.saturating_sub(rss_empty)) as f64 / members as f64 / 1024.0,
            rss_empty / (1 << 20),
            rss_full / (1 << 20)
        );
        for s in &sessions {
            s.close().await;
        }
        (cpu > 0.0 && fwd > 0.0).then(|| 1e6 * cpu / fwd)
    });
    drop(server);
    if !o.janus || o.publishers != 1 {
        return;
    }
    if !Janus::installed() {
        println!("janus                        not installed (apt-get install janus to compare)");
        return;
    }
    eprintln!("media_forward: Janus VideoRoom, the same clients and load...");
    let run = runtime.block_on(janus_run(&o, &publishing));
    println!(
        "janus delivered/s            {:.0} ({:.2}% of expected)",
        run.delivered_per_s, run.delivered
    );
    println!("janus CPU                    {:.2}% of one core", run.cpu);
    println!("janus CPU per packet         {:.2} us", run.per_packet_us);
    if let Some(ours) = conclave_us {
        println!(
            "janus / conclave             {:.2}x the CPU per packet",
            run.per_packet_us / ours
        );
    }
}

/// What the Janus run measured.
struct JanusRun {
    per_packet_us: f64,
    delivered_per_s: f64,
    delivered: f64,
    cpu: f64,
}

/// One publisher and `o.subscribers` subscribers in a Janus VideoRoom, the
/// same clients as conclave's run; Janus's CPU per packet its subscribers
/// received.
async fn janus_run(o: &Options, publishing: &tokio::runtime::Runtime) -> JanusRun {
    use serde_json::json;
    let janus = Janus::start(free_tcp_port()).await;
    let url = janus.url.clone();
    let received = Arc::new(AtomicU64::new(0));
    let (go, go_rx) = tokio::sync::watch::channel(!o.yield_cpu);
    let mut sessions = Vec::new();
    let local = janus::local_ip();
    let options = move |audio| MediaOptions {
        audio,
        video: false,
        bind: std::net::SocketAddr::new(local, 0),
    };
    let (pps, publisher_url) = (o.pps, url.clone());
    let (publisher, media, feed) = publishing
        .spawn(async move {
            let mut s = Session::new(&publisher_url).await.expect("janus session");
            let created = s
                .request(
                    json!({"request": "create", "room": 4242, "publishers": 1, "audiocodec": "opus"}),
                    None,
                )
                .await;
            assert_eq!(created["plugindata"]["data"]["videoroom"], "created", "{created}");
            let media = Arc::new(MediaSession::new(options(true)).await.expect("session"));
            let offer = media.offer().await.expect("offer");
            s.request(
                json!({"request": "joinandconfigure", "room": 4242, "ptype": "publisher"}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await;
            let (joined, answer) = s.jsep().await;
            media.accept_answer(answer).await.expect("answer");
            s.candidates_done().await;
            media
                .connected(Duration::from_secs(20))
                .await
                .expect("publisher connected");
            publish(&media, pps, go_rx);
            let feed = joined["id"].as_u64().expect("feed id");
            (s, media, feed)
        })
        .await
        .expect("publisher");
    let (first_tx, _first_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..o.subscribers {
        let mut s = Session::new(&url).await.expect("janus session");
        s.request(
            json!({"request": "join", "room": 4242, "ptype": "subscriber", "streams": [{"feed": feed}]}),
            None,
        )
        .await;
        let (_, offer) = s.jsep().await;
        let session = Arc::new(MediaSession::new(options(false)).await.expect("session"));
        let answer = session.answer(offer).await.expect("answer");
        s.request(
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await;
        s.candidates_done().await;
        count_packets(&session, received.clone(), first_tx.clone(), Instant::now());
        session
            .connected(Duration::from_secs(20))
            .await
            .expect("subscriber connected");
        sessions.push((s, session));
    }
    let _ = go.send(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (pid, counted, secs) = (janus.pid(), received.clone(), o.secs);
    let (elapsed, cpu, rx) = publishing
        .spawn(async move {
            let cpu0 = cpu_seconds(pid);
            let rx0 = counted.load(Ordering::Relaxed);
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let elapsed = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid) - cpu0;
            (elapsed, cpu, (counted.load(Ordering::Relaxed) - rx0) as f64)
        })
        .await
        .expect("measuring");
    for (_, session) in &sessions {
        session.close().await;
    }
    media.close().await;
    drop(publisher);
    let expected = o.pps as f64 * elapsed * o.subscribers as f64;
    JanusRun {
        per_packet_us: 1e6 * cpu / rx.max(1.0),
        delivered_per_s: rx / elapsed,
        delivered: 100.0 * rx / expected.max(1.0),
        cpu: 100.0 * cpu / elapsed,
    }
}
