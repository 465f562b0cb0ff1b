//! Headless Chromium for the browser tests: one chromedriver per browser on
//! a free loopback port, a fresh profile each time, fake camera and
//! microphone, and helpers that read the page through `window.conclave`.
//!
//! Chromium and chromedriver come from Debian (`chromium`,
//! `chromium-driver`); tools/test installs them. Without them the tests fail
//! and say so: a skipped browser test would read as a passing one.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a browser may take to start, a page to load, or the page to
/// reach a state it should reach promptly. Only a broken setup reaches it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often conditions on the page are polled.
const POLL: Duration = Duration::from_millis(50);

/// The flags every test browser runs with: headless, no network beyond the
/// test's own, fake media devices that need no permission prompt, and
/// loopback ICE candidates (the server listens on 127.0.0.1 only).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
];

/// Fails the test, naming the fix, when Chromium or chromedriver is missing.
fn require_binaries() {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the browser tests need Debian's chromium and chromium-driver; \
             run tools/test, which installs them"
        );
    }
}

/// A chromedriver process of our own, killed with everything it started
/// when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        require_binaries();
        // Port 0: chromedriver binds a free port itself and says which, so
        // no other process can take it between our choosing and its binding.
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so Drop can end Chromium too even if the
            // session was never closed (a failed assertion, say).
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let port = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
                line.strip_prefix("ChromeDriver was started successfully on port ")?
                    .trim_end_matches('.')
                    .parse::<u16>()
                    .ok()
            });
            // Keep draining, so chromedriver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .expect("reading chromedriver's output")
        .expect("chromedriver says which port it took");
        let driver = Driver { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ready = match http.get(&status).send().await {
                Ok(resp) => resp
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return driver;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not become ready on port {port}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group id is the driver's pid (process_group(0) above); this
        // ends the driver and the Chromium processes it started, nothing else.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One headless Chromium showing one page.
pub struct Browser {
    pub client: Client,
    // Field order matters: the session goes first, then the driver (which
    // takes Chromium with it), then the profile directory.
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let driver = Driver::start().await;
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let caps = caps.as_object().expect("literal object").clone();
        let client = tokio::time::timeout(
            PATIENCE,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&driver.url()),
        )
        .await
        .expect("Chromium starts in time")
        .expect("a WebDriver session");
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Opens `url` and waits until the client script has set itself up.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
        self.ready().await;
    }

    /// Reloads the page and waits for the client script again.
    pub async fn reload(&self) {
        self.client.refresh().await.expect("reload");
        self.ready().await;
    }

    async fn ready(&self) {
        self.wait_for_js("the page to load", "return !!window.conclave")
            .await;
    }

    /// Clears the field `id` and types `text` into it.
    pub async fn fill(&self, id: &str, text: &str) {
        let field = self.client.find(Locator::Id(id)).await.expect(id);
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    pub async fn choose(&self, id: &str, value: &str) {
        let select = self.client.find(Locator::Id(id)).await.expect(id);
        select.select_by_value(value).await.expect("select");
    }

    pub async fn click(&self, css: &str) {
        let button = self.client.find(Locator::Css(css)).await.expect(css);
        button.click().await.expect("click");
    }

    /// The text of the element `css` matches.
    pub async fn text(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await.expect(css);
        element.text().await.expect("text")
    }

    /// Fills in the join form and presses Join.
    pub async fn join(&self, room: &str, token: &str, role: &str, mode: &str) {
        self.fill("room", room).await;
        self.fill("token", token).await;
        self.choose("role", role).await;
        self.choose("mode", mode).await;
        self.click("#join").await;
    }

    /// `window.conclave.state()`.
    pub async fn state(&self) -> Value {
        self.js("return window.conclave.state()").await
    }

    /// `window.conclave.stats()`: inbound media per remote user.
    pub async fn stats(&self) -> Value {
        self.js("return window.conclave.stats()").await
    }

    /// `window.conclave.outbound()`: packets sent per kind.
    pub async fn outbound(&self) -> Value {
        self.js("return window.conclave.outbound()").await
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script `{script}` failed: {e}"))
    }

    /// Polls the page's state until `check` holds; fails with `what` and the
    /// last state seen.
    pub async fn wait_for(&self, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let state = self.state().await;
            if check(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; the page's state: {state:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the page's media stats until `check` holds.
    pub async fn wait_for_stats(&self, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            if tokio::time::Instant::now() >= deadline {
                let state = self.state().await;
                panic!("timed out waiting for {what}; stats: {stats:#}; state: {state:#}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn wait_for_js(&self, what: &str, script: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.js(script).await != Value::Bool(true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the page is in `room` with `members` listed.
    pub async fn wait_joined(&self, room: &str, members: usize) -> Value {
        self.wait_for(&format!("joined {room} with {members} members"), |s| {
            s["joined"] == true
                && s["room"] == room
                && s["members"].as_array().map(Vec::len) == Some(members)
        })
        .await
    }

    pub async fn close(self) {
        let Browser {
            client,
            _driver,
            _profile,
        } = self;
        let _ = client.close().await;
    }
}

/// The member `user` from a page state, or Null.
pub fn member<'a>(state: &'a Value, user: &str) -> &'a Value {
    state["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["user"] == user))
        .unwrap_or(&Value::Null)
}

/// A number from a stats object, 0 when absent.
pub fn stat(stats: &Value, user: &str, kind: &str, field: &str) -> f64 {
    stats[user][kind][field].as_f64().unwrap_or(0.0)
}
