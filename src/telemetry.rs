//! What every layer's metrics and logs share: the label types, the
//! Prometheus standard process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, read from `/proc/self` at encode time, on
//! Linux only; the load tester reads them to report the server's CPU and
//! memory) and log set-up.
//!
//! Each subsystem keeps its own counters (plain atomics behind
//! `prometheus-client`, updated directly, no lock on the hot path) and
//! registers them; `app::metrics` gathers them into the one registry
//! `/metrics` encodes.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
    pub code: u16,
}

/// CPU time (user + system) this process has used, in seconds; `None`
/// where `/proc/self/stat` cannot be read (anywhere but Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat)
}

/// The process's resident set size in bytes; `None` off Linux.
pub fn process_resident_bytes() -> Option<u64> {
    // `/proc/self/status` gives kB; `statm` would need the page size, which
    // takes `sysconf` (unsafe FFI) to learn.
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_resident_bytes(&status)
}

/// utime + stime from a `/proc/<pid>/stat` line. The fields after the
/// command name (which may hold spaces and parentheses, hence the last `)`)
/// start with the state; utime and stime are the 12th and 13th of them, in
/// USER_HZ ticks, which Linux fixes at 100 for everything in `/proc`.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn parse_resident_bytes(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Encodes the process metrics on each scrape; encodes nothing where they
/// cannot be read.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = process_cpu_seconds() {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Some(rss) = process_resident_bytes() {
            let gauge = ConstGauge::new(rss as i64);
            let metric = encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(&Unit::Bytes),
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// What is logged unless told otherwise: conclave's own lines from `info`,
/// everyone else's (the WebRTC stack logs every ICE and DTLS state change of
/// every peer at `info`) from `warn`.
pub const DEFAULT_LOG_FILTER: &str = "warn,conclave=info";

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    // Already installed (a test harness, say): keep the first.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_command_name_with_spaces() {
        // Two spaces and a `)` in the name; utime 250, stime 50 ticks.
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn reads_resident_memory_in_bytes() {
        let status = "Name:\tconclave\nVmRSS:\t   2048 kB\nThreads:\t4\n";
        assert_eq!(parse_resident_bytes(status), Some(2 * 1024 * 1024));
    }
}
