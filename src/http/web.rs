//! The browser client at `/` and, in dev mode only, `/dev/token`.
//!
//! The page is three static files from `web/`, compiled into the binary so a
//! deployment is still one file and needs no build step. It talks to the
//! server only through the public protocol at `/ws`; nothing here is a
//! private channel.
//!
//! `/dev/token` mints tokens with the built-in dev key for whoever asks, so it
//! exists only under `serve --dev` (which binds to loopback). Otherwise it
//! answers 404 exactly as a route that does not exist.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{Grants, claims_for};
use crate::http::admin::ApiError;
use crate::status::{Failure, Status};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const CLIENT_JS: &str = include_str!("../../web/conclave.js");
const STYLE_CSS: &str = include_str!("../../web/conclave.css");

/// The marker in index.html the server flips in dev mode, so the page shows
/// its dev-token button only where `/dev/token` exists.
const DEV_MARKER: &str = r#"data-dev="false""#;

/// How long a dev token is valid: a working day, like `conclave token`'s default.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Longest user id or display name `/dev/token` accepts, in bytes.
const MAX_DEV_FIELD: usize = 128;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/conclave.js", get(client_js))
        .route("/conclave.css", get(style_css))
        .route("/dev/token", get(dev_token))
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    let html = if state.dev {
        INDEX_HTML.replacen(DEV_MARKER, r#"data-dev="true""#, 1)
    } else {
        INDEX_HTML.to_owned()
    };
    // In a cluster the page may move to another node's /ws when this one
    // goes (see web/conclave.js): those are the only other places it may
    // connect to. Nodes that join after the page loaded are not among them.
    let others = state
        .cluster
        .as_ref()
        .map(|c| c.signaling_urls())
        .unwrap_or_default();
    asset("text/html; charset=utf-8", html, &others)
}

async fn client_js() -> Response {
    asset("text/javascript; charset=utf-8", CLIENT_JS.to_owned(), &[])
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS.to_owned(), &[])
}

fn asset(content_type: &'static str, body: String, connect: &[String]) -> Response {
    let policy = content_policy(connect);
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change with the binary; always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        [(header::CONTENT_SECURITY_POLICY, policy)],
        body,
    )
        .into_response()
}

/// The page's Content-Security-Policy: its own origin only, and for
/// `connect`, these URLs too. A URL that could break out of the header (a
/// space, a quote, a semicolon) is left out.
fn content_policy(connect: &[String]) -> String {
    let mut sources = String::from("'self'");
    for url in connect {
        if url
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, ';' | ',' | '\'' | '"'))
        {
            sources.push(' ');
            sources.push_str(url);
        }
    }
    format!("default-src 'self'; connect-src {sources}; object-src 'none'; base-uri 'none'")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenQuery {
    user: String,
    #[serde(default)]
    name: String,
}

/// `GET /dev/token?user=alice[&name=Alice]`: a token that may create and join
/// any room in either role, without the admin grant.
async fn dev_token(
    State(state): State<Arc<AppState>>,
    query: Result<Query<DevTokenQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if !state.dev {
        return Ok(StatusCode::NOT_FOUND.into_response());
    }
    let Query(query) = query.map_err(|r| Failure::new(Status::BadRequest, r.body_text()))?;
    check_field("user", &query.user, false)?;
    check_field("name", &query.name, true)?;
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        admin: false,
        ..Grants::default()
    };
    let claims = claims_for(&query.user, &query.name, grants, DEV_TOKEN_TTL);
    let token = state.auth.mint(&claims).map_err(Failure::from)?;
    Ok(axum::Json(serde_json::json!({
        "user": query.user,
        "token": token,
        "expires_at": claims.exp,
    }))
    .into_response())
}

fn check_field(field: &str, value: &str, may_be_empty: bool) -> Result<(), Failure> {
    let bad = |why: String| Failure::new(Status::BadRequest, format!("`{field}` {why}"));
    if value.is_empty() && !may_be_empty {
        return Err(bad("is empty".into()));
    }
    if value.len() > MAX_DEV_FIELD {
        return Err(bad(format!(
            "is {} bytes long; the limit is {MAX_DEV_FIELD}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("contains a control character".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::content_policy;

    #[test]
    fn the_page_may_connect_to_its_own_origin_and_the_clusters_nodes_only() {
        assert_eq!(
            content_policy(&[]),
            "default-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'"
        );
        let policy = content_policy(&[
            "ws://10.0.0.2:7880/ws".into(),
            "wss://b.example/ws; script-src *".into(),
        ]);
        assert!(
            policy.contains("connect-src 'self' ws://10.0.0.2:7880/ws;"),
            "{policy}"
        );
        assert!(!policy.contains("script-src"), "{policy}");
    }
}
