//! HTTP: the WebSocket upgrade at `/ws`, the admin REST API under `/api`,
//! the community API under `/api/community`, `/healthz`, Prometheus
//! `/metrics`, and the browser client at `/`.

pub mod admin;
pub mod cluster;
pub mod community;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::status::Status;

/// The HTTP status the admin and community APIs answer with for a protocol
/// status.
pub fn http_status(status: Status) -> StatusCode {
    match status {
        Status::Ok => StatusCode::OK,
        Status::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Status::BadRequest | Status::VersionUnsupported => StatusCode::BAD_REQUEST,
        Status::Unauthorized => StatusCode::UNAUTHORIZED,
        Status::Forbidden => StatusCode::FORBIDDEN,
        Status::NotFound => StatusCode::NOT_FOUND,
        Status::Conflict | Status::ChannelFull => StatusCode::CONFLICT,
        Status::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Status::Internal | Status::Disconnected => StatusCode::INTERNAL_SERVER_ERROR,
        Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/community", community::routes())
        .nest(
            "/api",
            admin::routes()
                .merge(cluster::routes())
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    cluster::across_cluster,
                )),
        )
        .merge(web::routes())
        .with_state(state)
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A relay from another node of the cluster (see `cluster::relay`):
    // its requests are served here, never placed or relayed again.
    let relayed =
        state.cluster.is_some() && headers.contains_key(crate::cluster::forward::FORWARDED);
    if state.connections_closing.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down").into_response();
    }
    let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "server at its connection limit",
        )
            .into_response();
    };
    let limit = state.config.signal.max_frame_bytes;
    let tasks = state.connection_tasks.clone();
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(crate::protocol::WS_READ_BUFFER)
        .on_upgrade(move |socket| {
            tasks.track_future(crate::signal::connection::serve(
                socket, state, permit, relayed,
            ))
        })
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "rooms": state.rooms.len(),
        "connections": state.metrics.connections.get(),
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
