//! The admin API in a cluster: `GET /api/cluster/nodes`,
//! `POST /api/cluster/drain`, and the layer that makes every other admin
//! route act on rooms wherever they live.
//!
//! A request under `/api/rooms/NAME` for a room that is not here goes to
//! the node that owns it, as it came, and its answer comes back unchanged
//! (the owner checks the token, as for any request). `GET /api/rooms` lists
//! the rooms of every live node, each with its `node`. Everything else is
//! answered here: bans and revocations reach every node over the bus, and
//! records and the community live in the shared store.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::admin::Admin;
use crate::app::AppState;
use crate::cluster::claims::Route;
use crate::cluster::forward::{FORWARDED, Forward};
use crate::ids::RoomName;
use crate::status::{Failure, Status};

/// Largest admin request body forwarded (the admin API's bodies are small).
const FORWARD_BODY_LIMIT: usize = 1 << 20;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/cluster/nodes", get(nodes))
        .route("/cluster/drain", post(drain))
}

fn not_clustered() -> Response {
    let failure = Failure::new(Status::NotFound, "this server is not part of a cluster");
    super::admin::ApiError::from(failure).into_response()
}

async fn nodes(_: Admin, State(state): State<Arc<AppState>>) -> Response {
    let Some(cluster) = &state.cluster else {
        return not_clustered();
    };
    match cluster.read_nodes().await {
        Ok(nodes) => Json(json!({ "node": cluster.id(), "nodes": nodes })).into_response(),
        Err(e) => {
            super::admin::ApiError::from(Failure::new(Status::Unavailable, format!("redis: {e}")))
                .into_response()
        }
    }
}

async fn drain(_: Admin, State(state): State<Arc<AppState>>) -> Response {
    let Some(cluster) = &state.cluster else {
        return not_clustered();
    };
    crate::cluster::drain::start(cluster, &state.rooms);
    (
        StatusCode::ACCEPTED,
        Json(json!({ "node": cluster.id(), "state": "draining" })),
    )
        .into_response()
}

/// The room a path under the admin API names, decoded (`/rooms/a%20b/x`).
fn room_of(path: &str) -> Option<RoomName> {
    let raw = path.strip_prefix("/rooms/")?.split('/').next()?;
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    RoomName::new(name.into_owned()).ok()
}

/// Sends a request about a room on another node to that node; merges room
/// lists. Requests one node forwarded to another are answered where they
/// land.
pub async fn across_cluster(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    if request.headers().contains_key(FORWARDED) {
        return next.run(request).await;
    }
    // This layer sits inside `/api` (see `http::router`), which the
    // nesting strips from the path; the node it is sent to needs it back.
    let path = request.uri().path().to_owned();
    let path_and_query = match request.uri().path_and_query() {
        Some(pq) => format!("/api{}", pq.as_str()),
        None => format!("/api{path}"),
    };

    if let Some(room) = room_of(&path) {
        if state.rooms.get(&room).is_some() {
            return next.run(request).await;
        }
        if let Ok(Route::Remote(node)) = cluster.route_join(&room).await {
            let (parts, body) = request.into_parts();
            let body = match axum::body::to_bytes(body, FORWARD_BODY_LIMIT).await {
                Ok(body) => body,
                Err(e) => {
                    let failure = Failure::new(Status::BadRequest, e.to_string());
                    return super::admin::ApiError::from(failure).into_response();
                }
            };
            let forward = Forward {
                method: parts.method,
                path_and_query: &path_and_query,
                headers: &parts.headers,
                body,
            };
            return cluster.forward(&node, forward).await;
        }
        return next.run(request).await;
    }

    if path == "/rooms" && request.method() == Method::GET {
        let headers = request.headers().clone();
        let local = next.run(request).await;
        // Only a caller the local node let in is worth asking the others for.
        if !local.status().is_success() {
            return local;
        }
        let (parts, body) = local.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let mut rooms = tag_rooms(serde_json::from_slice(&bytes).ok(), cluster.id());
        let (others, unreachable) = cluster.gather(&path_and_query, &headers).await;
        for (node, answer) in others {
            rooms.extend(tag_rooms(Some(answer), &node.id));
        }
        rooms.sort_by(|a, b| a["room"].as_str().cmp(&b["room"].as_str()));
        let body = json!({ "rooms": rooms, "unreachable": unreachable });
        return (parts.status, Json(body)).into_response();
    }
    next.run(request).await
}

/// The `rooms` of a room list, each marked with the node it lives on.
fn tag_rooms(list: Option<Value>, node: &str) -> Vec<Value> {
    let Some(Value::Array(rooms)) = list.and_then(|mut v| v.get_mut("rooms").map(Value::take))
    else {
        return Vec::new();
    };
    rooms
        .into_iter()
        .map(|mut room| {
            if let Some(object) = room.as_object_mut() {
                object.insert("node".into(), Value::String(node.to_owned()));
            }
            room
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_path_names_its_room_decoded() {
        assert_eq!(
            room_of("/rooms/a%20b/members").map(|r| r.as_str().to_owned()),
            Some("a b".to_owned())
        );
        assert_eq!(
            room_of("/rooms/channel:1:2").map(|r| r.as_str().to_owned()),
            Some("channel:1:2".to_owned())
        );
        assert_eq!(room_of("/rooms"), None);
        assert_eq!(room_of("/records"), None);
    }
}
