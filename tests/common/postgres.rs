//! A real PostgreSQL for a test: a fresh cluster in a temporary directory,
//! listening on a free loopback port, that a test can stop and start again
//! (an outage) and that is killed and removed when dropped.
//!
//! The server binaries must be installed (Debian's `postgresql`; tools/test
//! installs it). Without them a test fails, loudly: skipping would report
//! the cluster code as tested when it was not.
//!
//! Usable from async tests: the few calls that block on the synchronous
//! client run on a thread of their own ([`off_runtime`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// How long a fresh or restarted server may take to accept connections.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// The database, and the superuser, every test server has.
const NAME: &str = "conclave";

pub struct TestPostgres {
    /// The cluster's data (`data/`), its socket and its log.
    dir: tempfile::TempDir,
    /// Where initdb and postgres are.
    bin: PathBuf,
    port: u16,
    /// The uid and gid the server runs as: PostgreSQL refuses to run as
    /// root, so when the tests are root it runs as the `postgres` user.
    run_as: Option<(u32, u32)>,
    /// The running postmaster; `None` while stopped.
    server: Option<Child>,
}

impl TestPostgres {
    /// Initialises a cluster (superuser `conclave`, trusted on loopback),
    /// starts it and creates the database `conclave`.
    pub fn new() -> TestPostgres {
        let bin = server_binaries();
        let dir = tempfile::Builder::new()
            .prefix("conclave-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        let run_as = unprivileged_user();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the cluster's directory to the postgres user");
        }
        let mut pg = TestPostgres {
            dir,
            bin,
            port: free_port(),
            run_as,
            server: None,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data_dir())
            .args([
                "-A",
                "trust",
                "-U",
                NAME,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start();
        let admin = format!(
            "host=127.0.0.1 port={} user={NAME} dbname=postgres",
            pg.port
        );
        off_runtime(|| {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)
                .expect("connect to the fresh server");
            client
                .batch_execute(&format!("CREATE DATABASE {NAME}"))
                .expect("create the test database");
        });
        pg
    }

    /// The database's URL, for `PgStore::connect` and `PgKv::connect`.
    pub fn url(&self) -> String {
        format!("postgres://{NAME}@127.0.0.1:{}/{NAME}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client of the database, to look at it directly. Blocks: from async
    /// code, call it inside [`off_runtime`].
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls)
            .expect("connect to the test database")
    }

    /// Stops the server (a fast shutdown: clients are disconnected at once)
    /// and waits until it has exited. Nothing listens on the port until
    /// [`TestPostgres::start`].
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        signal(&server, libc::SIGINT);
        let status = server.wait().expect("wait for PostgreSQL to stop");
        assert!(
            status.success(),
            "PostgreSQL stopped badly ({status}):\n{}",
            self.log()
        );
    }

    /// Starts the server on its directory and port (again, after
    /// [`TestPostgres::stop`]), and returns once it accepts connections.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "PostgreSQL is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server's log");
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(self.dir.path())
            // A test database survives nothing anyway; fsync only costs time.
            .args(["-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        self.wait_ready();
    }

    /// Polls with a connection until one succeeds; fails at once if the
    /// server exits, and after [`READY_PATIENCE`] if it never answers.
    fn wait_ready(&mut self) {
        let probe = format!(
            "host=127.0.0.1 port={} user={NAME} dbname=postgres connect_timeout=2",
            self.port
        );
        let server = self.server.as_mut().expect("started above");
        let outcome = off_runtime(|| {
            let deadline = Instant::now() + READY_PATIENCE;
            loop {
                let error = match postgres::Client::connect(&probe, postgres::NoTls) {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                };
                if let Some(status) = server.try_wait().expect("poll postgres") {
                    return Err(format!("PostgreSQL exited ({status})"));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "PostgreSQL accepts no connection after {READY_PATIENCE:?} ({error})"
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        if let Err(why) = outcome {
            panic!("{why}; its log:\n{}", self.log());
        }
    }

    /// One of the server binaries, run as the user the cluster belongs to.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log, for a failure's message.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // An immediate shutdown: nothing in a test database is worth
            // waiting for, and the directory goes next.
            signal(&server, libc::SIGQUIT);
            let _ = server.wait();
        }
    }
}

/// Runs `f` on a thread of its own and returns what it returns. For the
/// synchronous PostgreSQL client inside an async test: it drives a runtime
/// of its own, and blocking on one inside another panics.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The directory holding initdb and postgres: found on PATH, or in Debian's
/// place for them (which is not on PATH).
fn server_binaries() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .collect();
    // The newest version first: "15" before "13".
    debian.sort_by_key(|dir| {
        let version = dir.parent().and_then(Path::file_name);
        std::cmp::Reverse(version.and_then(|v| v.to_str()?.parse::<u32>().ok()))
    });
    on_path
        .into_iter()
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server (initdb and postgres) is not installed, neither on PATH \
                 nor in /usr/lib/postgresql/*/bin: `apt-get install postgresql` (tools/test \
                 installs it)"
            )
        })
}

/// The `postgres` user's uid and gid when the tests run as root (which
/// PostgreSQL refuses); `None` otherwise.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root, PostgreSQL must run as the `postgres` user, which does not \
             exist (the postgresql package creates it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("id prints a number")
    };
    Some((id("-u"), id("-g")))
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

fn signal(server: &Child, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is our child's,
    // not yet waited for, so it cannot have been reused.
    let sent = unsafe { libc::kill(server.id() as libc::pid_t, signal) };
    assert_eq!(
        sent,
        0,
        "signal PostgreSQL: {}",
        std::io::Error::last_os_error()
    );
}
