//! The admin REST API. Every route needs `Authorization: Bearer <token>` whose
//! grants include `admin`. Errors are `{"code": <protocol status>, "message": ...}`
//! with the matching HTTP status.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Identity;
use crate::ids::{RoomName, UserId};
use crate::model::{MediaKind, Role};
use crate::protocol::CreateOk;
use crate::room::{Act, By, CloseReason, RoomHandle};
use crate::status::{Failure, Status};
use crate::store::RecordQuery;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{room}", get(get_room).delete(close_room))
        .route("/rooms/{room}/members", get(list_members))
        .route("/rooms/{room}/members/{user}", axum::routing::delete(kick))
        .route("/rooms/{room}/members/{user}/mute", post(mute))
        .route("/rooms/{room}/members/{user}/role", post(set_role))
        .route("/records", get(records))
        .route("/policies", get(policies))
        .route("/plugins/{name}", axum::routing::delete(unload_plugin))
}

/// Unloads a plugin whose file was deleted (see `Catalog::unload_plugin`).
async fn unload_plugin(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    state
        .rooms
        .catalog()
        .unload_plugin(&name)
        .map_err(Failure::from)?;
    tracing::info!(plugin = %name, by = %admin.user, "plugin unloaded by admin");
    Ok(Json(json!({})).into_response())
}

/// An API error: protocol status plus message.
pub struct ApiError(Failure);

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        ApiError(f)
    }
}

/// Every typed error a handler may return, through its status mapping
/// (`app::errors`).
macro_rules! api_errors {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for ApiError {
            fn from(e: $error) -> Self {
                ApiError(Failure::from(e))
            }
        }
    )*};
}

api_errors!(
    crate::room::Error,
    crate::policy::authz::Denial,
    crate::auth::AuthError,
    crate::store::StoreError,
    crate::policy::catalog::UnloadError,
    crate::community::hub::HubError,
    crate::community::CommunityError,
);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError(Failure::new(Status::BadRequest, r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(Failure::new(Status::BadRequest, r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status;
        (
            super::http_status(status),
            Json(json!({ "code": status.code(), "message": self.0.message })),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The identity of the request's `Authorization: Bearer <token>`; a missing
/// or bad token is 401.
pub(crate) fn bearer_identity(parts: &Parts, state: &AppState) -> Result<Identity, Failure> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let token = match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => "",
    };
    Ok(state.auth.verify(token)?)
}

/// A caller holding the admin grant.
pub struct Admin(pub Identity);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let identity = bearer_identity(parts, state)?;
        if !identity.grants.admin {
            return Err(Failure::new(Status::Forbidden, "this token has no admin grant").into());
        }
        Ok(Admin(identity))
    }
}

fn room_name(raw: String) -> ApiResult<RoomName> {
    RoomName::new(raw).map_err(|e| Failure::new(Status::BadRequest, e.to_string()).into())
}

fn find(state: &AppState, raw: String) -> ApiResult<RoomHandle> {
    Ok(state.rooms.find(&room_name(raw)?)?)
}

async fn list_rooms(_: Admin, State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(Json(json!({ "rooms": state.rooms.list() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    room: RoomName,
    #[serde(default)]
    custom_info: String,
    #[serde(default)]
    policy: Option<String>,
}

async fn create_room(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    body: Result<Json<CreateRoom>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let handle = state
        .rooms
        .create(
            body.room.clone(),
            body.custom_info,
            body.policy.as_deref(),
            None,
        )
        .await?;
    tracing::info!(room = %body.room, channel_id = %handle.channel_id(), by = %admin.user, "room created by admin");
    let created = CreateOk {
        room: body.room,
        channel_id: handle.channel_id(),
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn get_room(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    let info = find(&state, room)?.info().await?;
    Ok(Json(info).into_response())
}

/// Every script and plugin with its current version, load time and last
/// error, and which rooms run which script version.
async fn policies(_: Admin, State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let status = state.rooms.catalog().status();
    let mut rooms = Vec::new();
    for handle in state.rooms.handles() {
        // A room that closed meanwhile is simply not listed.
        if let Ok(info) = handle.info().await {
            rooms.push(json!({
                "room": info.summary.room,
                "channel_id": info.summary.channel_id,
                "policy": info.policy.policy,
                "version": info.policy.version,
                "plugins": info.policy.plugins,
                "errors": info.policy.errors,
                "last_error": info.policy.last_error,
            }));
        }
    }
    rooms.sort_by(|a, b| a["room"].as_str().cmp(&b["room"].as_str()));
    Ok(Json(json!({
        "scripts": status.scripts,
        "plugins": status.plugins,
        "rooms": rooms,
    }))
    .into_response())
}

async fn close_room(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    let handle = find(&state, room)?;
    handle.close(CloseReason::ClosedByAdmin).await?;
    tracing::info!(room = %handle.name(), by = %admin.user, "room closed by admin");
    Ok(Json(json!({})).into_response())
}

async fn list_members(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    let members = find(&state, room)?.members().await?;
    Ok(Json(json!({ "members": members })).into_response())
}

async fn kick(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path((room, user)): Path<(String, String)>,
) -> ApiResult<Response> {
    let handle = find(&state, room)?;
    handle
        .act(
            By::Admin(admin.user),
            Act::Kick {
                target: UserId(user),
            },
        )
        .await?;
    Ok(Json(json!({})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    kind: MediaKind,
    muted: bool,
}

async fn mute(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path((room, user)): Path<(String, String)>,
    body: Result<Json<MuteBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let handle = find(&state, room)?;
    let act = Act::Mute {
        target: Some(UserId(user)),
        kind: body.kind,
        muted: body.muted,
    };
    handle.act(By::Admin(admin.user), act).await?;
    Ok(Json(json!({})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: Role,
}

async fn set_role(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path((room, user)): Path<(String, String)>,
    body: Result<Json<RoleBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let handle = find(&state, room)?;
    let act = Act::SetRole {
        target: Some(UserId(user)),
        role: body.role,
    };
    handle.act(By::Admin(admin.user), act).await?;
    Ok(Json(json!({})).into_response())
}

async fn records(
    _: Admin,
    State(state): State<Arc<AppState>>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let records = state.store.records(query).await?;
    Ok(Json(json!({ "records": records })).into_response())
}
