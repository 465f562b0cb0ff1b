//! Reads the server's `/metrics`: its CPU time and memory (the standard
//! process metrics) and how many packets it forwarded. A run over several
//! nodes of a cluster reads every node's and adds them up ([`Scrapers`]).
//!
//! A plain HTTP/1.1 GET through hyper-util's client, already in the tree
//! through axum; the few values needed are picked from the text exposition.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::LoadtestError;

/// A scrape that takes longer than this is reported as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// One reading of the server's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub forwarded: Option<u64>,
    pub received: Option<u64>,
}

/// Scrapes one server's metrics endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Scraper {
    uri: Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Scraper {
    /// `metrics_url` when given, else `http://<host:port of the signaling URL>/metrics`.
    pub(crate) fn new(ws_url: &str, metrics_url: Option<&str>) -> Result<Scraper, LoadtestError> {
        let text = match metrics_url {
            Some(url) => url.to_owned(),
            None => metrics_url_for(ws_url)?,
        };
        let uri: Uri = text.parse().map_err(|e| LoadtestError::InvalidUrl {
            url: text.clone(),
            reason: format!("{e}"),
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(LoadtestError::InvalidUrl {
                url: text,
                reason: "the metrics URL must be http:// (give --metrics-url)".into(),
            });
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Scraper { uri, client })
    }

    pub(crate) fn url(&self) -> String {
        self.uri.to_string()
    }

    /// Fetches and reads the metrics; the error is a sentence for the report.
    pub(crate) async fn scrape(&self) -> Result<Sample, String> {
        let fetch = async {
            let response = self
                .client
                .get(self.uri.clone())
                .await
                .map_err(|e| format!("GET {}: {e}", self.uri))?;
            if !response.status().is_success() {
                return Err(format!("GET {}: HTTP {}", self.uri, response.status()));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("GET {}: {e}", self.uri))?
                .to_bytes();
            Ok(parse(&String::from_utf8_lossy(&body)))
        };
        tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| Err(format!("GET {}: no answer in {SCRAPE_TIMEOUT:?}", self.uri)))
    }
}

/// One scraper per node, in the order of the signaling URLs.
#[derive(Clone, Debug)]
pub(crate) struct Scrapers(Vec<Scraper>);

impl Scrapers {
    /// A scraper for each of `ws_urls`: at `metrics_urls[i]` when those are
    /// given (one per signaling URL), else derived from the signaling URL.
    pub(crate) fn new(
        ws_urls: &[String],
        metrics_urls: &[String],
    ) -> Result<Scrapers, LoadtestError> {
        if !metrics_urls.is_empty() && metrics_urls.len() != ws_urls.len() {
            return Err(LoadtestError::Invalid(format!(
                "{} metrics URL(s) for {} signaling URL(s): give one per --url, or none",
                metrics_urls.len(),
                ws_urls.len()
            )));
        }
        ws_urls
            .iter()
            .enumerate()
            .map(|(i, url)| Scraper::new(url, metrics_urls.get(i).map(String::as_str)))
            .collect::<Result<Vec<_>, _>>()
            .map(Scrapers)
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.0.iter().map(Scraper::url).collect()
    }

    /// Every node at once; one reading per node, in order.
    pub(crate) async fn scrape(&self) -> Vec<Result<Sample, String>> {
        futures_util::future::join_all(self.0.iter().map(Scraper::scrape)).await
    }
}

/// The nodes' readings added up. A figure is known only when every node
/// gave it (a total over some nodes would read as the cluster's); the
/// first failure is the error.
pub(crate) fn total(readings: &[Result<Sample, String>]) -> Result<Sample, String> {
    let mut sum = Sample {
        cpu_seconds: Some(0.0),
        rss_bytes: Some(0),
        forwarded: Some(0),
        received: Some(0),
    };
    for reading in readings {
        let s = reading.as_ref().map_err(Clone::clone)?;
        sum.cpu_seconds = sum.cpu_seconds.zip(s.cpu_seconds).map(|(a, b)| a + b);
        sum.rss_bytes = sum.rss_bytes.zip(s.rss_bytes).map(|(a, b)| a + b);
        sum.forwarded = sum.forwarded.zip(s.forwarded).map(|(a, b)| a + b);
        sum.received = sum.received.zip(s.received).map(|(a, b)| a + b);
    }
    Ok(sum)
}

/// `ws://host:port/anything` → `http://host:port/metrics`.
fn metrics_url_for(ws_url: &str) -> Result<String, LoadtestError> {
    let invalid = |reason: &str| LoadtestError::InvalidUrl {
        url: ws_url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = ws_url.parse().map_err(|_| invalid("not a URL"))?;
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    match uri.scheme_str() {
        Some("ws") => Ok(format!("http://{authority}/metrics")),
        Some("wss") => Err(invalid(
            "wss:// is not scraped (no TLS client here); give --metrics-url http://...",
        )),
        _ => Err(invalid("the signaling URL must start with ws://")),
    }
}

/// Picks the values the report needs from the OpenMetrics text.
fn parse(text: &str) -> Sample {
    let mut sample = Sample::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "process_cpu_seconds_total" => sample.cpu_seconds = Some(value),
            "process_resident_memory_bytes" => sample.rss_bytes = Some(value as u64),
            "conclave_media_forwarded_packets_total" => sample.forwarded = Some(value as u64),
            "conclave_media_received_packets_total" => sample.received = Some(value as u64),
            _ => {}
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_metrics_url_from_the_signaling_url() {
        assert_eq!(
            metrics_url_for("ws://127.0.0.1:7880/ws").unwrap(),
            "http://127.0.0.1:7880/metrics"
        );
        assert_eq!(
            metrics_url_for("ws://example.com/ws").unwrap(),
            "http://example.com/metrics"
        );
        assert!(metrics_url_for("wss://example.com/ws").is_err());
        assert!(metrics_url_for("http://example.com/ws").is_err());
        assert!(metrics_url_for("no url").is_err());
    }

    #[test]
    fn reads_the_values_it_needs_and_nothing_else() {
        let text = "# HELP process_cpu_seconds Total user and system CPU time.\n\
                    # TYPE process_cpu_seconds counter\n\
                    process_cpu_seconds_total 12.5\n\
                    process_resident_memory_bytes 1048576\n\
                    conclave_media_forwarded_packets_total 5000\n\
                    conclave_media_received_packets_total 100\n\
                    conclave_media_dropped_packets_total{reason=\"malformed\"} 3\n\
                    # EOF\n";
        let sample = parse(text);
        assert_eq!(
            sample,
            Sample {
                cpu_seconds: Some(12.5),
                rss_bytes: Some(1_048_576),
                forwarded: Some(5000),
                received: Some(100),
            }
        );
        assert_eq!(parse("garbage"), Sample::default());
    }

    #[test]
    fn a_total_adds_every_node_and_knows_a_figure_only_when_all_do() {
        let node = |cpu, rss| Sample {
            cpu_seconds: cpu,
            rss_bytes: Some(rss),
            forwarded: Some(10),
            received: Some(1),
        };
        let sum = total(&[Ok(node(Some(1.5), 100)), Ok(node(Some(2.0), 50))]).unwrap();
        assert_eq!(sum.cpu_seconds, Some(3.5));
        assert_eq!(sum.rss_bytes, Some(150));
        assert_eq!(sum.forwarded, Some(20));
        let partial = total(&[Ok(node(Some(1.0), 1)), Ok(node(None, 1))]).unwrap();
        assert_eq!(partial.cpu_seconds, None);
        assert_eq!(
            total(&[Ok(node(None, 1)), Err("GET x: refused".into())]),
            Err("GET x: refused".into())
        );
    }

    #[test]
    fn metrics_urls_are_one_per_signaling_url_or_none() {
        let ws = [
            "ws://127.0.0.1:1/ws".to_owned(),
            "ws://127.0.0.1:2/ws".to_owned(),
        ];
        let derived = Scrapers::new(&ws, &[]).unwrap();
        assert_eq!(
            derived.urls(),
            ["http://127.0.0.1:1/metrics", "http://127.0.0.1:2/metrics"]
        );
        assert!(Scrapers::new(&ws, &["http://127.0.0.1:9/metrics".to_owned()]).is_err());
    }
}
