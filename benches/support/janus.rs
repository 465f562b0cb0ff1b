//! Janus 1.1's VideoRoom, for `media_forward`'s side-by-side runs: the
//! server started as a child process from Debian's `janus` package with a
//! configuration of our own (only the VideoRoom plugin and the HTTP
//! transport, ICE on loopback), and the few requests of its HTTP API that a
//! publisher and a subscriber make. The WebRTC clients are the same
//! `MediaSession`s the conclave run uses.
//!
//! Janus skips the loopback interface when it gathers candidates unless
//! told otherwise: `ice_enforce_list = "lo"` tells it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The address Janus gathers its host candidate on, and its clients bind:
/// libnice leaves the loopback interface out of its gathering, so the
/// machine's own outward address stands in (a datagram to it never leaves
/// the machine). Loopback where there is no other.
pub fn local_ip() -> std::net::IpAddr {
    let probe = || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        // TEST-NET-1 (RFC 5737): `connect` picks a route and sends nothing.
        socket.connect("192.0.2.1:9").ok()?;
        Some(socket.local_addr().ok()?.ip())
    };
    probe().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The Janus process, killed on drop.
pub struct Janus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where Debian's package puts the plugins and transports.
const LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";

impl Janus {
    /// Whether Janus is installed (`apt-get install janus`): the binary on
    /// PATH and the VideoRoom plugin where the package puts it. (`janus -V`
    /// cannot tell: it exits 1 when its output is not a terminal.)
    pub fn installed() -> bool {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("janus").is_file()));
        on_path && std::path::Path::new(&format!("{LIB}/plugins/libjanus_videoroom.so")).exists()
    }

    /// Starts Janus with HTTP on `http_port` and answers once its API does.
    pub async fn start(http_port: u16) -> Janus {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        for (folder, file) in [
            ("plugins", "libjanus_videoroom.so"),
            ("transports", "libjanus_http.so"),
        ] {
            std::fs::create_dir_all(path(folder)).unwrap();
            std::os::unix::fs::symlink(format!("{LIB}/{folder}/{file}"), path(folder).join(file))
                .expect("link a Janus module");
        }
        std::fs::create_dir_all(path("none")).unwrap();
        let root = dir.path().display();
        let config = format!(
            "general: {{\n  configs_folder = \"{root}\"\n  plugins_folder = \"{root}/plugins\"\n  \
             transports_folder = \"{root}/transports\"\n  events_folder = \"{root}/none\"\n  \
             loggers_folder = \"{root}/none\"\n  debug_level = 3\n}}\n\
             media: {{\n  rtp_port_range = \"40000-60000\"\n}}\n\
             nat: {{\n  ice_enforce_list = \"lo\"\n}}\n"
        );
        std::fs::write(path("janus.jcfg"), config).unwrap();
        std::fs::write(
            path("janus.transport.http.jcfg"),
            format!(
                "general: {{\n  base_path = \"/janus\"\n  http = true\n  port = {http_port}\n  \
                 ip = \"127.0.0.1\"\n  https = false\n}}\nadmin: {{\n  admin_http = false\n}}\n"
            ),
        )
        .unwrap();
        std::fs::write(path("janus.plugin.videoroom.jcfg"), "general: {\n}\n").unwrap();
        let child = Command::new("janus")
            .arg("-F")
            .arg(dir.path())
            .arg("-C")
            .arg(path("janus.jcfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start janus");
        let janus = Janus {
            child,
            url: format!("http://127.0.0.1:{http_port}/janus"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Session::new(&janus.url).await.is_none() {
            assert!(Instant::now() < deadline, "janus did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        janus
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// One Janus session with one VideoRoom handle, and its events.
pub struct Session {
    http: reqwest::Client,
    handle: String,
    events: mpsc::UnboundedReceiver<Value>,
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Option<Value> {
    http.post(url)
        .json(&body)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

impl Session {
    /// Creates a session and attaches the VideoRoom plugin; a long poll
    /// (which also keeps the session alive) brings its events.
    pub async fn new(url: &str) -> Option<Session> {
        let http = reqwest::Client::new();
        let created = post(&http, url, json!({"janus": "create", "transaction": "c"})).await?;
        let session = format!("{url}/{}", created["data"]["id"].as_u64()?);
        let attached = post(
            &http,
            &session,
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": "a"}),
        )
        .await?;
        let handle = format!("{session}/{}", attached["data"]["id"].as_u64()?);
        let (tx, events) = mpsc::unbounded_channel();
        let poll = http.clone();
        tokio::spawn(async move {
            loop {
                let Ok(response) = poll.get(format!("{session}?maxev=10")).send().await else {
                    return;
                };
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                let list = match body {
                    Value::Array(list) => list,
                    one => vec![one],
                };
                for event in list {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Some(Session {
            http,
            handle,
            events,
        })
    }

    /// A plugin request; what Janus answers at once (`success`, or `ack`
    /// with the result to come as an event).
    pub async fn request(&self, body: Value, jsep: Option<Value>) -> Value {
        let mut message = json!({"janus": "message", "transaction": "m", "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        post(&self.http, &self.handle, message)
            .await
            .expect("janus request")
    }

    /// Says this side has no more candidates to trickle.
    pub async fn candidates_done(&self) {
        let _ = post(
            &self.http,
            &self.handle,
            json!({"janus": "trickle", "transaction": "t", "candidate": {"completed": true}}),
        )
        .await;
    }

    /// The next plugin event that carries a JSEP, as (plugin data, sdp).
    pub async fn jsep(&mut self) -> (Value, String) {
        let deadline = Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout(deadline, self.events.recv())
                .await
                .expect("no answer from janus")
                .expect("janus session ended");
            if let Some(sdp) = event["jsep"]["sdp"].as_str() {
                return (event["plugindata"]["data"].clone(), sdp.to_owned());
            }
            if event["plugindata"]["data"]["error"].is_string() {
                panic!("janus: {}", event["plugindata"]["data"]);
            }
        }
    }
}
