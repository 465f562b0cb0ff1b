//! Every command the documentation shows, run the way a reader pastes it:
//! each `curl` against a real dev server, each `conclave token` with the
//! built binary, each `conclave policy check|test` and `plugin check` from
//! the repository's root (where the paths they name are). A command that the server cannot read (a missing header, a
//! wrong path, no token) or that exits with an error fails the test with the
//! file and line it came from.
//!
//! Long-running commands (`serve`, `bot`, `loadtest`) are left to the tests
//! of what they do; this one checks that what the docs tell people to type is
//! well formed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;

/// One command from the docs, continuation lines joined.
struct Documented {
    file: String,
    line: usize,
    text: String,
}

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Shell commands in fenced blocks (```sh, ```bash or a bare ```) that
/// start with `curl`, `conclave token` or `cargo run --release -- token`.
fn documented_commands() -> Vec<Documented> {
    let mut found = Vec::new();
    for path in doc_files() {
        let text = std::fs::read_to_string(&path).expect("readable doc");
        let file = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&path)
            .display()
            .to_string();
        let mut in_block = false;
        let mut shell = false;
        let mut pending: Option<Documented> = None;
        for (i, line) in text.lines().enumerate() {
            if let Some(info) = line.trim_start().strip_prefix("```") {
                in_block = !in_block;
                shell = in_block && matches!(info.trim(), "" | "sh" | "bash" | "shell");
                continue;
            }
            if !(in_block && shell) {
                continue;
            }
            if let Some(command) = pending.as_mut() {
                command.text.push(' ');
                command.text.push_str(line.trim().trim_end_matches('\\'));
                if !line.trim_end().ends_with('\\') {
                    found.extend(pending.take());
                }
                continue;
            }
            let trimmed = line.trim();
            let runnable = [
                "curl ",
                "conclave token ",
                "cargo run --release -- token ",
                "conclave policy check ",
                "conclave policy test",
                "conclave plugin check ",
                "cargo run --release -- policy check ",
                "cargo run --release -- policy test",
                "cargo run --release -- plugin check ",
            ]
            .iter()
            .any(|p| trimmed.starts_with(p));
            if !runnable {
                continue;
            }
            let command = Documented {
                file: file.clone(),
                line: i + 1,
                text: trimmed.trim_end_matches('\\').to_owned(),
            };
            if trimmed.ends_with('\\') {
                pending = Some(command);
            } else {
                found.push(command);
            }
        }
    }
    found
}

#[tokio::test]
async fn every_documented_command_works() {
    let srv = TestServer::start_with(|c| {
        c.policy.scripts_dir = common::shipped_scripts();
    })
    .await;
    let commands = documented_commands();
    assert!(
        commands.len() >= 20,
        "expected the docs' commands, found {}",
        commands.len()
    );
    // Where `--config conclave.toml` finds a secret, as a reader's would.
    let work = tempfile::tempdir().unwrap();
    let secret = "documentation-checks-need-a-secret-of-32+bytes";
    std::fs::write(
        work.path().join("conclave.toml"),
        format!("[auth]\nsecret = \"{secret}\"\n"),
    )
    .unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_conclave"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let body = work.path().join("body");
    // `curl` prints the status code alone; the body goes to a file.
    let prelude = format!(
        "curl() {{ command curl -sS -o '{}' -w '%{{http_code}}' \"$@\"; }}\n",
        body.display()
    );
    let mut failures = Vec::new();
    for command in &commands {
        let text = command
            .text
            .replace("127.0.0.1:7880", &srv.addr.to_string())
            .replace("cargo run --release -- ", "conclave ");
        let out = tokio::task::spawn_blocking({
            let script = format!("{prelude}{text}");
            // The authoring commands name files of the repository.
            let authoring =
                text.starts_with("conclave policy") || text.starts_with("conclave plugin");
            let work = if authoring {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            } else {
                work.path().to_owned()
            };
            let (path, token) = (path.clone(), srv.admin_token());
            move || {
                Command::new("bash")
                    .args(["-c", &script])
                    .current_dir(work)
                    .env("PATH", path)
                    .env("TOKEN", &token)
                    .env("ADMIN", &token)
                    .env("CONCLAVE_AUTH__SECRET", secret)
                    .env_remove("RUST_LOG")
                    .output()
                    .expect("bash runs")
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let place = format!("{}:{}: {}", command.file, command.line, command.text);
        if !out.status.success() {
            failures.push(format!("{place}\n  exited {}: {stderr}", out.status));
            continue;
        }
        if text.starts_with("curl ") {
            let answer = std::fs::read_to_string(&body).unwrap_or_default();
            let code: u16 = stdout.parse().unwrap_or(0);
            // 404 and 409 depend on what exists at the time (a member that
            // is not there): fine, as long as they are our answers and not
            // a route that does not exist.
            let ours = answer.contains("\"code\"");
            let fine = (200..300).contains(&code) || (matches!(code, 404 | 409) && ours);
            if !fine {
                failures.push(format!("{place}\n  HTTP {code}: {answer}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} documented commands failed:\n{}",
        failures.len(),
        commands.len(),
        failures.join("\n")
    );
    srv.shutdown().await;
}
