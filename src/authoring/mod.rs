//! The authoring toolkit: what policy and plugin authors run on their own
//! machine, with no server — `conclave policy check`, `policy test`,
//! `policy replay` and `plugin check`.
//!
//! Each runs the real parts: the same Lua host and limits, the same room
//! task, state machine and authorization pipeline, the same wasm engine.
//! Only the network and the wall clock are left out.

pub mod check;
pub mod plugin;
pub mod replay;
pub mod suite;

use std::path::PathBuf;
use std::time::Instant;

use crate::app::Config;

/// `conclave policy ...`
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Compile each script and run its chunk within the limits; list the
    /// hooks it defines and warn about what it probably does not mean.
    Check {
        /// Policy scripts (`.lua`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON report per line, for editors and CI.
        #[arg(long)]
        json: bool,
        /// Take the limits from this configuration file's `[policy]`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run Lua test files against simulated rooms, offline.
    Test {
        /// Test files, or directories searched for `*_test.lua`
        /// (default: scripts/tests).
        paths: Vec<PathBuf>,
        /// Where the policies the tests name live (default: the parent of
        /// the first test directory, or scripts/).
        #[arg(long)]
        scripts: Option<PathBuf>,
        /// Also write the results as JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Take the limits from this configuration file's `[policy]`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replay a room's recorded inputs against another policy version and
    /// print where the decisions differ.
    Replay {
        /// A recording (JSON lines) written by a room with recording on.
        recording: PathBuf,
        /// The policy version to replay against.
        #[arg(long)]
        policy: PathBuf,
        /// One JSON object per difference, for tools.
        #[arg(long)]
        json: bool,
        /// Take the limits from this configuration file's `[policy]`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// `conclave plugin ...`
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Load a plugin as the server would and say what it is: ABI version,
    /// exports, imports, and a sample check under the limits with its time.
    Check {
        /// A plugin: `.wasm` or `.wat`.
        file: PathBuf,
        /// The plugin's `[policy.plugins.<name>] config` as `key=value`;
        /// repeatable.
        #[arg(long = "config-line")]
        config: Vec<String>,
        /// The user the sample checks ask about.
        #[arg(long, default_value = "sample-user")]
        user: String,
        /// The room the sample checks ask about.
        #[arg(long, default_value = "sample")]
        room: String,
        /// One JSON report, for tools.
        #[arg(long)]
        json: bool,
    },
}

/// What the commands fail with before they can report anything.
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    #[error(transparent)]
    Config(#[from] crate::app::config::ConfigError),
    #[error("{0}")]
    Io(String),
}

fn policy_config(
    config: Option<&std::path::Path>,
) -> Result<crate::policy::catalog::PolicyConfig, AuthoringError> {
    Ok(load_config(config)?.policy)
}

/// The configuration file's settings, or the defaults without one.
fn load_config(config: Option<&std::path::Path>) -> Result<Config, AuthoringError> {
    Ok(match config {
        Some(path) => Config::load(Some(path))?,
        None => Config::default(),
    })
}

/// Runs a `policy` command; returns the process's exit status (1 when a
/// check found errors, a test failed or a replay differed).
pub fn run_policy(command: PolicyCommand) -> Result<i32, AuthoringError> {
    match command {
        PolicyCommand::Check {
            files,
            json,
            config,
        } => {
            let limits = policy_config(config.as_deref())?.lua;
            let mut failed = false;
            for file in &files {
                let report = check::check_file(file, &limits);
                failed |= !report.ok;
                if json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    print!("{}", check::render(&report));
                }
            }
            Ok(i32::from(failed))
        }
        PolicyCommand::Test {
            paths,
            scripts,
            junit,
            config,
        } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from("scripts/tests")]
            } else {
                paths
            };
            let scripts_dir = scripts.unwrap_or_else(|| {
                paths
                    .iter()
                    .find(|p| p.is_dir())
                    .and_then(|p| p.parent())
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("scripts"), PathBuf::from)
            });
            let config = load_config(config.as_deref())?;
            let options = suite::SuiteOptions {
                scripts_dir,
                policy: config.policy,
                rooms: config.rooms.settings(),
            };
            let files = suite::discover(&paths);
            if files.is_empty() {
                return Err(AuthoringError::Io(format!(
                    "no test files (*_test.lua) in {}",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let started = Instant::now();
            let mut outcomes = Vec::new();
            for file in &files {
                println!("{}", file.display());
                suite::run_file(file, &options, &mut |outcome| {
                    let ms = outcome.elapsed.as_secs_f64() * 1e3;
                    if outcome.passed {
                        println!("  ok    {} ({ms:.1} ms)", outcome.name);
                    } else {
                        println!("  FAIL  {}", outcome.name);
                        if let Some(message) = &outcome.message {
                            for line in message.lines() {
                                println!("        {line}");
                            }
                        }
                    }
                    outcomes.push(outcome.clone());
                });
            }
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            println!(
                "{} passed, {failed} failed ({:.2} s)",
                outcomes.len() - failed,
                started.elapsed().as_secs_f64()
            );
            if let Some(path) = junit {
                std::fs::write(&path, suite::junit(&outcomes)).map_err(|e| {
                    AuthoringError::Io(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            Ok(i32::from(failed > 0))
        }
        PolicyCommand::Replay {
            recording,
            policy,
            json,
            config,
        } => {
            let config = policy_config(config.as_deref())?;
            let report =
                replay::replay(&recording, &policy, &config).map_err(AuthoringError::Io)?;
            if json {
                for difference in &report.differences {
                    println!("{}", serde_json::to_string(difference).unwrap_or_default());
                }
            } else {
                print!("{}", replay::render(&report));
            }
            Ok(i32::from(!report.differences.is_empty()))
        }
    }
}

/// Runs a `plugin` command; returns the exit status (1 when the plugin
/// would not load or its sample check failed).
pub fn run_plugin(command: PluginCommand) -> Result<i32, AuthoringError> {
    match command {
        PluginCommand::Check {
            file,
            config,
            user,
            room,
            json,
        } => {
            let report = plugin::check(&file, &config.join("\n"), &user, &room);
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{}", plugin::render(&report));
            }
            Ok(i32::from(!report.ok))
        }
    }
}
