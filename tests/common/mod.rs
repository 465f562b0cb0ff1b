//! The integration harness: a real server on 127.0.0.1:0 with its own data
//! directory, real WebSocket clients, and helpers that wait on events (with a
//! generous deadline that only fires when something is broken).

#![allow(dead_code)] // each test file uses a different subset

pub mod cluster;
pub mod media;
pub mod postgres;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use conclave::app::config::Config;
use conclave::auth::{Auth, Grants, claims_for};
use conclave::client::{ClientOptions, SignalClient};
use conclave::protocol::ServerMessage;
use conclave::server::Server;
use serde_json::Value;

/// How long to wait for something that should happen promptly. Only a broken
/// server ever reaches it.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    server: Option<Server>,
    pub addr: std::net::SocketAddr,
    pub data_dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test defaults, adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_in_mode(adjust, true).await
    }

    /// Starts as a deployment does, not in dev mode: `adjust` must set
    /// `[auth] secret`.
    pub async fn start_for_real(adjust: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_in_mode(adjust, false).await
    }

    async fn start_in_mode(adjust: impl FnOnce(&mut Config), dev: bool) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temp dir");
        Self::start_on(data_dir, adjust, dev).await
    }

    /// Stops the server and starts a new one on the same data directory
    /// (its database, scripts and plugins), as a restart does.
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        let data_dir =
            std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("temp dir"));
        Self::start_on(data_dir, |_| {}, true).await
    }

    async fn start_on(
        data_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
        dev: bool,
    ) -> TestServer {
        let mut config = Config::default();
        config.server.bind = "127.0.0.1:0".parse().expect("literal address");
        config.server.data_dir = data_dir.path().to_path_buf();
        config.server.shutdown_grace = Duration::from_secs(5);
        // Each server gets empty script and plugin directories of its own;
        // tests that need policies write into them or point elsewhere.
        config.policy.scripts_dir = data_dir.path().join("scripts");
        config.policy.plugins_dir = data_dir.path().join("plugins");
        std::fs::create_dir_all(&config.policy.scripts_dir).expect("scripts dir");
        std::fs::create_dir_all(&config.policy.plugins_dir).expect("plugins dir");
        // Media on loopback, any free port: tests run side by side.
        config.media.bind_ip = std::net::Ipv4Addr::LOCALHOST.into();
        config.media.udp_port = "0".parse().expect("literal port");
        // Wall-clock budgets with room for two loaded cores: a hook or a
        // check that does its job never runs into them. Tests about the
        // budgets set their own (or meet the instruction budget, which
        // counts work, not time).
        config.policy.lua.time = Duration::from_secs(5);
        config.policy.wasm.time = Duration::from_secs(1);
        adjust(&mut config);
        let server = Server::start(config, dev).await.expect("server starts");
        TestServer {
            addr: server.addr(),
            server: Some(server),
            data_dir,
            http: reqwest::Client::new(),
        }
    }

    /// The running server's shared state (rooms, catalog, config).
    pub fn state(&self) -> &std::sync::Arc<conclave::app::AppState> {
        self.server.as_ref().expect("server running").state()
    }

    /// Writes a room policy script and waits until the catalog has loaded it.
    pub async fn script(&self, name: &str, source: &str) {
        save(
            &self.data_dir.path().join(format!("scripts/{name}.lua")),
            source,
        );
        let hash = conclave::policy::catalog::short_hash(source.as_bytes());
        eventually("the script to load", || async {
            self.state()
                .rooms
                .catalog()
                .script(name)
                .is_some_and(|s| s.hash == hash)
        })
        .await;
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A token signed with the dev key.
    pub fn token(&self, user: &str, grants: Grants) -> String {
        Auth::dev()
            .mint(&claims_for(user, "", grants, Duration::from_secs(600)))
            .expect("mint")
    }

    /// A token with `attrs` (for room policies), that may create and join any room.
    pub fn token_with_attrs(&self, user: &str, attrs: Value) -> String {
        let mut claims = anywhere(user);
        claims.attrs = attrs.as_object().cloned().unwrap_or_default();
        Auth::dev().mint(&claims).expect("mint")
    }

    /// A token that may create and join any room, with the id `jti`.
    pub fn token_with_jti(&self, user: &str, jti: &str) -> String {
        let mut claims = anywhere(user);
        claims.jti = Some(jti.to_owned());
        Auth::dev().mint(&claims).expect("mint")
    }

    /// A token that may create and join any room.
    pub fn user_token(&self, user: &str) -> String {
        Auth::dev().mint(&anywhere(user)).expect("mint")
    }

    pub fn admin_token(&self) -> String {
        self.admin_token_for("ops")
    }

    /// An admin token for another operator.
    pub fn admin_token_for(&self, user: &str) -> String {
        self.token(
            user,
            Grants {
                create: true,
                rooms: vec!["*".into()],
                admin: true,
                ..Grants::default()
            },
        )
    }

    /// A connected client that has said hello as `user`.
    pub async fn client(&self, user: &str) -> SignalClient {
        self.client_with_token(&self.user_token(user)).await
    }

    pub async fn client_with_token(&self, token: &str) -> SignalClient {
        let mut client = self.raw_client().await;
        client.hello(token).await.expect("hello accepted");
        client
    }

    /// A connected client that has not said hello yet.
    pub async fn raw_client(&self) -> SignalClient {
        SignalClient::connect_with(&self.ws_url(), ClientOptions { heartbeat: true })
            .await
            .expect("connect")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Self::send(req).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Self::send(req).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.patch(self.url(path)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Self::send(req).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.put(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Self::send(req).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.delete(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Self::send(req).await
    }

    async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("HTTP body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// A metric's value from `/metrics`, by its exposition name with labels
    /// as they are printed (`conclave_connections`,
    /// `conclave_policy_failures_total{hook="on_left",kind="error"}`); 0
    /// when it is absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics", None).await;
        let prefix = format!("{name} ");
        body.as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Call records as the admin API lists them.
    pub async fn records(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/api/records{query}"), Some(&self.admin_token()))
            .await;
        assert_eq!(status, 200, "{body}");
        body["records"].as_array().expect("records array").clone()
    }

    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    /// Shuts the server down but keeps the data directory for inspection.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// A child process (a `conclave bot`, say) killed when the test ends,
/// however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A token signed with the dev key that may create and join any room, and
/// with `admin` use the admin API, for ten minutes.
pub fn dev_token(user: &str, admin: bool) -> String {
    let mut claims = anywhere(user);
    claims.grants.admin = admin;
    Auth::dev().mint(&claims).expect("mint")
}

/// Claims for `user` that may create and join any room, for ten minutes.
fn anywhere(user: &str) -> conclave::auth::Claims {
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        ..Grants::default()
    };
    claims_for(user, "", grants, Duration::from_secs(600))
}

/// The next event or unmatched response, failing the test if none comes.
pub async fn next_event(client: &mut SignalClient) -> ServerMessage {
    tokio::time::timeout(PATIENCE, client.next_event())
        .await
        .expect("an event within the deadline")
        .expect("the connection is still open")
}

/// Waits until the server closes the connection, returning its close frame.
pub async fn closed(client: &mut SignalClient) -> Option<(u16, String)> {
    tokio::time::timeout(PATIENCE, async {
        while client.next_event().await.is_some() {}
    })
    .await
    .expect("the connection closes within the deadline");
    client.close_frame()
}

/// Polls `check` until it holds; for state that has no event to wait on
/// (a room with nobody in it expiring, say).
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(PATIENCE, what, check).await
}

/// [`eventually`] with a deadline of its own, for state that takes longer
/// than [`PATIENCE`] by design.
pub async fn eventually_within<F, Fut>(patience: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The repository's shipped room policies.
pub fn shipped_scripts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Waits for the next event that `pick` accepts, skipping others.
pub async fn event_where<T>(
    client: &mut SignalClient,
    mut pick: impl FnMut(&ServerMessage) -> Option<T>,
) -> T {
    loop {
        let event = next_event(client).await;
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

/// A Rust plugin built by tools/build-plugins.
pub fn built_plugin(name: &str) -> std::path::PathBuf {
    built("plugins/target/wasm32-unknown-unknown/release", name)
}

/// A C plugin built by tools/build-plugins.
pub fn built_c_plugin(name: &str) -> std::path::PathBuf {
    built("plugins/target/c", name)
}

fn built(dir: &str, name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run tools/build-plugins (tools/test does)",
        path.display()
    );
    path
}

/// Writes a file the way editors do: a temporary file renamed into place.
pub fn save(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("saving");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

pub mod community;
