//! The `conclave` binary as a newcomer runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use conclave::auth::Auth;

fn conclave() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
    // Keep the test's own environment from steering the binary.
    for (key, _) in std::env::vars() {
        if key.starts_with("CONCLAVE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn serve_without_a_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = conclave()
        .args(["serve"])
        .env("CONCLAVE_SERVER__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no auth secret"), "{err}");

    let out = conclave()
        .args(["serve"])
        .env("CONCLAVE_SERVER__DATA_DIR", dir.path())
        .env("CONCLAVE_SERVER__BIND", "127.0.0.1:0")
        .env("CONCLAVE_AUTH__SECRET", "too-short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32"), "{err}");
}

#[test]
fn unknown_config_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conclave.toml");
    std::fs::write(&path, "[rooms]\nreconect_grace = \"5s\"\n").unwrap();
    let out = conclave()
        .args(["serve", "--dev", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reconect_grace"), "{err}");
}

#[test]
fn environment_variables_that_are_no_config_keys_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    // A real config key with a typo is still refused, and named.
    let out = conclave()
        .args(["serve", "--dev"])
        .env("CONCLAVE_SERVER__DATA_DIR", dir.path())
        .env("CONCLAVE_ROOMS__EMPTY_TIMOUT", "5s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty_timout"), "{err}");
}

#[test]
fn token_mints_what_it_is_told() {
    let out = conclave()
        .args([
            "token", "--dev", "--user", "alice", "--name", "Alice", "--create",
        ])
        .args(["--room", "class-*", "--role", "audience", "--ttl", "1h"])
        .args([
            "--attr",
            "teacher=true",
            "--attr",
            "grade=7",
            "--attr",
            "nick=Al",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let id = Auth::dev().verify(token.trim()).unwrap();
    assert_eq!((id.user.as_str(), id.name.as_str()), ("alice", "Alice"));
    assert!(id.grants.create && !id.grants.admin);
    assert_eq!(id.grants.rooms, ["class-*"]);
    assert_eq!(id.grants.roles, [conclave::protocol::Role::Audience]);

    let secret = "s".repeat(32);
    let out = conclave()
        .args(["token", "--user", "bob"])
        .env("CONCLAVE_AUTH__SECRET", &secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(Auth::new(&secret).unwrap().verify(token.trim()).is_ok());
    assert!(
        Auth::dev().verify(token.trim()).is_err(),
        "signed with the configured secret"
    );
}

#[tokio::test]
async fn serve_dev_prints_a_working_token_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = conclave()
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .env("CONCLAVE_SERVER__BIND", "0.0.0.0:0")
        .env("CONCLAVE_SERVER__DATA_DIR", dir.path())
        .env("CONCLAVE_MEDIA__UDP_PORT", "0")
        // Read by `conclave bot`, not by the server: must not stop it.
        .env("CONCLAVE_BOT_TOKEN", "not-a-config-key")
        // A config key with one underscore too few: warned about.
        .env("CONCLAVE_SERVER_BIND", "127.0.0.1:1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.trim().strip_prefix("signaling") {
                url = Some(rest.trim().to_owned());
            }
            if line.starts_with("eyJ") {
                // Keep reading in the background, as a terminal would.
                std::thread::spawn(move || lines.for_each(drop));
                return (url.expect("the URL comes before the token"), line);
            }
        }
        panic!("no token printed");
    })
    .await
    .unwrap();
    let (url, token) = banner;
    assert!(
        url.starts_with("ws://127.0.0.1:"),
        "dev binds loopback: {url}"
    );

    let mut client = conclave::client::SignalClient::connect(&url).await.unwrap();
    let hello = client.hello(&token).await.unwrap();
    assert_eq!(hello.user.as_str(), "dev");
    client.create("from-cli-test", "").await.unwrap();
    client
        .join("from-cli-test", conclave::protocol::Mode::Audio, None)
        .await
        .unwrap();
    client.leave().await.unwrap();

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    assert!(dir.path().join("conclave.db").exists());

    let log = std::fs::read_to_string(&log).unwrap();
    // Started somewhere without scripts/: said so, with where it looked.
    assert!(log.contains("no scripts directory at scripts"), "{log}");
    assert!(log.contains("ignoring CONCLAVE_SERVER_BIND"), "{log}");
    assert!(!log.contains("CONCLAVE_BOT_TOKEN"), "{log}");
    // A file gets plain text, not terminal colours.
    assert!(!log.contains('\x1b'), "{log}");
    // The room's own lines are not filed under the connection that created it.
    let closing = log
        .lines()
        .find(|l| l.contains("room closing"))
        .expect("the room logged its closing");
    assert!(closing.contains("room{room=from-cli-test"), "{closing}");
    assert!(!closing.contains("conn{"), "{closing}");
}
