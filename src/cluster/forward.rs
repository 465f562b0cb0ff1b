//! The admin API across nodes: a request about a room that lives on another
//! node is sent on to that node as it came (method, path, query, body, the
//! caller's `Authorization`), and its answer comes back unchanged. A room
//! list asks every node for its own rooms and merges them.
//!
//! Forwarded requests carry [`FORWARDED`]; a node never forwards such a
//! request again, so a stale view can cost one hop but never a loop.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Cluster, NodeInfo};

/// Marks a request one node sent another; its value is the sender's id.
pub const FORWARDED: &str = "x-conclave-forwarded";

/// How long a forwarded request may take before the caller hears 504.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub(crate) fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

/// A request as it is forwarded.
pub struct Forward<'a> {
    pub method: Method,
    /// Path and query, as the caller sent them (`/api/rooms/a%20b/members`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

impl Cluster {
    /// Sends `request` to `node` and returns its answer (or 502/504 saying
    /// why there is none).
    pub async fn forward(&self, node: &NodeInfo, request: Forward<'_>) -> Response<Body> {
        self.metrics.admin_forwarded.inc();
        match self.send(node, request).await {
            Ok(response) => response,
            Err((status, why)) => {
                let body = serde_json::json!({
                    "code": status.as_u16(),
                    "message": format!("node {} did not answer: {why}", node.id),
                });
                let mut response = Response::new(Body::from(body.to_string()));
                *response.status_mut() = status;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
        }
    }

    async fn send(
        &self,
        node: &NodeInfo,
        request: Forward<'_>,
    ) -> Result<Response<Body>, (StatusCode, String)> {
        let uri = format!("{}{}", node.url, request.path_and_query);
        let mut builder = axum::http::Request::builder()
            .method(request.method)
            .uri(&uri)
            .header(FORWARDED, self.id.as_str());
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(value) = request.headers.get(&name) {
                builder = builder.header(name, value);
            }
        }
        let outgoing = builder
            .body(Full::new(request.body))
            .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
        tokio::time::timeout(FORWARD_TIMEOUT, async {
            let response = self
                .http
                .client
                .request(outgoing)
                .await
                .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?
                .to_bytes();
            Ok::<_, (StatusCode, String)>(Response::from_parts(parts, Body::from(bytes)))
        })
        .await
        .map_err(|_| {
            (
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer in {FORWARD_TIMEOUT:?}"),
            )
        })?
    }

    /// `GET path` on every other live node, as JSON; nodes that fail are
    /// left out and named in the second list.
    pub async fn gather(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> (Vec<(NodeInfo, serde_json::Value)>, Vec<String>) {
        let others: Vec<NodeInfo> = self
            .nodes()
            .into_iter()
            .filter(|n| n.id != self.id)
            .collect();
        let asks = others.iter().map(|node| async move {
            let request = Forward {
                method: Method::GET,
                path_and_query,
                headers,
                body: Bytes::new(),
            };
            let response = self.send(node, request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let bytes = response.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).ok()
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut got = Vec::new();
        let mut failed = Vec::new();
        for (node, answer) in others.into_iter().zip(answers) {
            match answer {
                Some(value) => got.push((node, value)),
                None => failed.push(node.id),
            }
        }
        (got, failed)
    }
}
