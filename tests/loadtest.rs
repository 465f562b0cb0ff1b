//! The load tester against a real server on real sockets: what it reports
//! when everything works, how it names what does not, and the binary's
//! JSON report.

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestServer;
use conclave::auth::Auth;
use conclave::loadtest::report::Phase;
use conclave::loadtest::{Config, Report, run};

fn small(url: &str, duration: Duration) -> Config {
    let mut config = Config::new(url);
    config.rooms = 2;
    config.publishers = 1;
    config.subscribers = 2;
    config.duration = duration;
    config
}

/// A signaling URL with nothing listening behind it: a port this test holds
/// bound but never listens on, so connecting is refused and no other test
/// can take the port meanwhile. Keep the socket alive while the URL is used.
fn dead_url() -> (String, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (format!("ws://127.0.0.1:{port}/ws"), socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_deliver_what_their_publishers_send() {
    let server = TestServer::start().await;
    let report = run(small(&server.ws_url(), Duration::from_secs(3)))
        .await
        .unwrap();

    assert_eq!((report.joins.attempted, report.joins.succeeded), (6, 6));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.joins.latency_ms.p50 > 0.0);

    let audio = &report.audio;
    // Each room: one publisher heard by two subscribers.
    assert_eq!((audio.tracks_expected, audio.tracks_received), (4, 4));
    assert!(audio.packets_sent > 0);
    assert_eq!(audio.packets_expected, 2 * audio.packets_sent);
    assert!(
        audio.packets_received * 100 >= audio.packets_expected * 97,
        "received {} of {}",
        audio.packets_received,
        audio.packets_expected
    );
    assert!(audio.loss_percent < 3.0, "{audio:?}");
    assert!(audio.undelivered_percent < 3.0, "{audio:?}");
    assert!(audio.jitter_mean_ms >= 0.0 && audio.jitter_max_ms >= audio.jitter_mean_ms);
    assert!(report.video.is_none());

    // The server is this process here; its metrics were read all the same.
    let s = &report.server;
    assert_eq!(s.error, None);
    assert!(s.cpu_seconds.is_some_and(|c| c > 0.0), "{s:?}");
    assert!(s.rss_peak_bytes.is_some_and(|r| r > 0), "{s:?}");
    assert!(s.forwarded_packets.is_some_and(|n| n > 0), "{s:?}");
    assert!(report.load_tester.cpu_seconds.is_some_and(|c| c > 0.0));

    let back: Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back.joins.succeeded, 6);
    assert_eq!(back.audio.packets_received, audio.packets_received);
    assert_eq!(back.settings, report.settings);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_is_forwarded_alongside_audio() {
    let server = TestServer::start().await;
    let mut config = small(&server.ws_url(), Duration::from_secs(2));
    config.rooms = 1;
    config.video = true;
    let report = run(config).await.unwrap();

    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let video = report.video.as_ref().expect("a video section");
    assert_eq!((video.tracks_expected, video.tracks_received), (2, 2));
    assert!(
        video.packets_sent > 0 && video.packets_received > 0,
        "{video:?}"
    );
    assert_eq!(report.audio.tracks_received, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_joins_are_counted_and_name_the_participant_and_the_cause() {
    // Nothing listening: every participant fails to connect, and the run
    // still ends with a report.
    let (url, _held) = dead_url();
    let report = run(small(&url, Duration::from_millis(100))).await.unwrap();
    assert_eq!((report.joins.attempted, report.joins.failed), (6, 6));
    let first = &report.errors[0];
    assert_eq!(
        (first.room.as_str(), first.user.as_str(), first.phase),
        ("lt-r0", "lt-r0-p0", Phase::Join)
    );
    assert!(first.cause.contains("cannot connect"), "{first}");
    assert!(report.server.error.is_some(), "metrics could not be read");
    assert_eq!(report.audio.tracks_expected, 0);

    // A token the server does not accept: refused at hello, with its reason.
    let server = TestServer::start().await;
    let mut config = small(&server.ws_url(), Duration::from_millis(100));
    config.auth = Auth::new(&"not-the-server-key-".repeat(2)).unwrap();
    let report = run(config).await.unwrap();
    assert_eq!(report.joins.failed, 6);
    let message = report.errors[0].to_string();
    assert!(
        message.starts_with("lt-r0-p0 in room lt-r0 could not join: the server refused"),
        "{message}"
    );
    assert!(message.contains("signature"), "{message}");
    server.shutdown().await;
}

fn conclave() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
    // Keep the test's own environment (a secret, say) from steering it.
    for (key, _) in std::env::vars() {
        if key.starts_with("CONCLAVE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_a_summary_and_writes_a_json_report() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let mut cmd = conclave();
    cmd.args(["loadtest", "--url", &server.ws_url()])
        .args(["--rooms", "1", "--publishers", "1", "--subscribers", "1"])
        .args(["--duration", "1s", "--json"])
        .arg(&path);
    // The server runs on this test's runtime: wait for the child elsewhere.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("joins       2 of 2 (0 failed)"), "{stdout}");
    assert!(stderr.contains(" joined "), "a progress line: {stderr}");

    let report: Report = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(report.joins.succeeded, 2);
    assert_eq!(report.audio.tracks_received, 1);
    assert_eq!(report.settings.url, server.ws_url());
    server.shutdown().await;
}

#[test]
fn the_binary_fails_when_nobody_could_join_and_says_who_and_why() {
    // A runtime for the socket that holds the port.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _held) = rt.block_on(async { dead_url() });
    let out = conclave()
        .args(["loadtest", "--url", &url, "--subscribers", "0"])
        .args(["--duration", "100ms"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no participant joined; the first failure: lt-r0-p0 in room lt-r0"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot connect"), "{stderr}");
}
