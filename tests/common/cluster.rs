//! A real cluster for a test: one Redis of its own (and, when asked, one
//! PostgreSQL), and conclave nodes as separate processes of the built
//! binary on loopback, so a node can be killed with SIGKILL or paused with
//! SIGSTOP like a real one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use conclave::client::{ClientOptions, SignalClient};
use serde_json::Value;

use super::redis::{RedisServer, free_port};
use super::{PATIENCE, eventually_within};

/// One conclave process.
pub struct Node {
    pub id: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

/// How the nodes of a test cluster are configured.
#[derive(Clone)]
pub struct NodeSetup {
    pub redis_url: String,
    pub postgres_url: Option<String>,
    /// Every node watches this scripts directory (a shared mount, as in
    /// docs/cluster.md).
    pub scripts_dir: PathBuf,
    pub lease: &'static str,
    pub reconnect_grace: &'static str,
    /// More TOML, appended to every node's file.
    pub extra: String,
}

impl Node {
    pub async fn start(id: &str, setup: &NodeSetup) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let postgres = setup
            .postgres_url
            .as_ref()
            .map(|url| format!("postgres_url = \"{url}\"\n"))
            .unwrap_or_default();
        let config = format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
data_dir = "{data}"
shutdown_grace = "5s"

[policy]
scripts_dir = "{scripts}"
plugins_dir = "{plugins}"

[media]
bind_ip = "127.0.0.1"
udp_port = 0

[rooms]
reconnect_grace = "{grace}"

[log]
level = "info,conclave=debug"

[cluster]
redis_url = "{redis}"
{postgres}node_id = "{id}"
lease = "{lease}"
drain_timeout = "30s"
{extra}
"#,
            data = dir.path().join("data").display(),
            scripts = setup.scripts_dir.display(),
            plugins = dir.path().join("plugins").display(),
            grace = setup.reconnect_grace,
            redis = setup.redis_url,
            lease = setup.lease,
            extra = setup.extra,
        );
        std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
        let file = dir.path().join("conclave.toml");
        std::fs::write(&file, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(["serve", "--dev", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("conclave starts");
        let node = Node {
            id: id.to_owned(),
            port,
            dir,
            child: Some(child),
            http: reqwest::Client::new(),
        };
        let http = node.http.clone();
        let health = node.url("/healthz");
        eventually_within(Duration::from_secs(30), &format!("{id} to serve"), || {
            let (http, health) = (http.clone(), health.clone());
            async move { http.get(&health).send().await.is_ok() }
        })
        .await;
        node
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the node logged so far, for a failing assertion's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("node running").id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal}");
    }

    /// SIGKILL: no shutdown, no goodbye, as a crashed machine.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("node running");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit; its log:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn client(&self, user: &str) -> SignalClient {
        let mut client = self.raw_client().await;
        client
            .hello(&user_token(user))
            .await
            .expect("hello accepted");
        client
    }

    pub async fn raw_client(&self) -> SignalClient {
        SignalClient::connect_with(&self.ws_url(), ClientOptions { heartbeat: true })
            .await
            .expect("connect")
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(admin_token());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("HTTP body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Opens `room` on this node: the admin API creates where it is asked
    /// (a create through the protocol goes where placement sends it).
    pub async fn create_room(&self, room: &str, custom_info: &str) {
        let body = serde_json::json!({ "room": room, "custom_info": custom_info });
        let (status, body) = self
            .request(reqwest::Method::POST, "/api/rooms", Some(body))
            .await;
        assert!(
            (200..300).contains(&status),
            "create {room}: {status} {body}"
        );
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    /// The users in `room`, as this node's admin API lists them.
    pub async fn members(&self, room: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/api/rooms/{room}/members")).await;
        assert_eq!(status, 200, "{body}");
        body["members"]
            .as_array()
            .expect("a member list")
            .iter()
            .map(|m| m["user"].as_str().expect("a user").to_owned())
            .collect()
    }

    /// The rooms this node itself holds (`/healthz` counts them).
    pub async fn local_rooms(&self) -> u64 {
        let Ok(resp) = self.http.get(self.url("/healthz")).send().await else {
            return 0;
        };
        let body: Value = resp.json().await.unwrap_or_default();
        body["rooms"].as_u64().unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused node ignores SIGKILL until it runs again.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A token (dev key, as the nodes run `--dev`) that may create and join any
/// room.
pub fn user_token(user: &str) -> String {
    super::dev_token(user, false)
}

/// An admin token for the operator `ops`.
pub fn admin_token() -> String {
    super::dev_token("ops", true)
}

/// Redis and `n` nodes (`node-a`, `node-b`, ...) that all see each other.
pub struct TestCluster {
    pub redis: RedisServer,
    pub nodes: Vec<Node>,
    pub setup: NodeSetup,
    pub scripts: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(n, None, "").await
    }

    pub async fn start_with(n: usize, postgres_url: Option<String>, extra: &str) -> TestCluster {
        let redis = RedisServer::start();
        let scripts = tempfile::tempdir().expect("temp dir");
        let setup = NodeSetup {
            redis_url: redis.url(),
            postgres_url,
            scripts_dir: scripts.path().to_path_buf(),
            lease: "1s",
            reconnect_grace: "15s",
            extra: extra.to_owned(),
        };
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = format!("node-{}", (b'a' + i as u8) as char);
            nodes.push(Node::start(&id, &setup).await);
        }
        let cluster = TestCluster {
            redis,
            nodes,
            setup,
            scripts,
        };
        cluster.all_see(n).await;
        cluster
    }

    /// Waits until every running node lists `n` live nodes.
    pub async fn all_see(&self, n: usize) {
        for node in &self.nodes {
            if node.child.is_none() {
                continue;
            }
            eventually_within(
                PATIENCE,
                &format!("{} to see {n} nodes", node.id),
                || async {
                    let (status, body) = node.get("/api/cluster/nodes").await;
                    status == 200 && body["nodes"].as_array().map_or(0, |a| a.len()) == n
                },
            )
            .await;
        }
    }

    /// The node id that owns `room`, read from Redis.
    pub fn owner(&self, room: &str) -> Option<String> {
        let mut conn = self.redis.connection();
        let claim: Option<String> = redis::cmd("GET")
            .arg(format!("conclave:{{room:{room}}}:owner"))
            .query(&mut conn)
            .expect("GET owner");
        claim.map(|c| c.rsplit_once('#').map_or(c.clone(), |(n, _)| n.to_owned()))
    }

    pub fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("a node of the cluster")
    }

    pub fn scripts_dir(&self) -> &Path {
        self.scripts.path()
    }
}
