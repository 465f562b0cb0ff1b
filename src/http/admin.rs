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
use crate::policy::bans::Until;
use crate::policy::decisions::DecisionQuery;
use crate::policy::shadow::ShadowStatus;
use crate::protocol::CreateOk;
use crate::room::{Act, By, CloseReason, RecordingOp, RoomHandle, ShadowOp};
use crate::status::{Failure, Status};
use crate::store::{BanKind, RecordQuery};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{room}", get(get_room).delete(close_room))
        .route("/rooms/{room}/members", get(list_members))
        .route("/rooms/{room}/members/{user}", axum::routing::delete(kick))
        .route("/rooms/{room}/members/{user}/mute", post(mute))
        .route("/rooms/{room}/members/{user}/role", post(set_role))
        .route(
            "/rooms/{room}/bans",
            get(list_room_bans).post(ban_from_room),
        )
        .route(
            "/rooms/{room}/bans/{user}",
            axum::routing::delete(lift_room_ban),
        )
        .route("/bans", get(list_bans).post(ban_from_server))
        .route("/bans/{user}", axum::routing::delete(lift_server_ban))
        .route("/revocations", get(list_revocations).post(revoke))
        .route("/revocations/{jti}", axum::routing::delete(unrevoke))
        .route("/records", get(records))
        .route("/rooms/{room}/decisions", get(room_decisions))
        .route(
            "/rooms/{room}/shadow",
            get(get_shadow).post(set_shadow).delete(clear_shadow),
        )
        .route(
            "/rooms/{room}/recording",
            get(get_recording)
                .post(start_recording)
                .delete(stop_recording),
        )
        .route("/decisions", get(outside_decisions))
        .route("/decisions/{id}", get(decision))
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
        let mut body = json!({ "code": status.code(), "message": self.0.message });
        if let Some(decision) = self.0.decision {
            body["decision"] = json!(decision);
        }
        (super::http_status(status), Json(body)).into_response()
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
                ban: None,
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

/// A room's decision log, oldest first (`?user=`, `?refused=true`,
/// `?limit=`).
async fn room_decisions(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    query: Result<Query<DecisionQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let decisions = find(&state, room)?.decisions(query).await?;
    Ok(Json(json!({ "decisions": decisions })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowBody {
    policy: String,
}

fn shadow_answer(answer: Result<Option<ShadowStatus>, String>) -> ApiResult<Response> {
    match answer {
        Ok(status) => Ok(Json(json!({ "shadow": status })).into_response()),
        Err(e) => Err(Failure::new(Status::BadRequest, e).into()),
    }
}

/// The room's shadow policy: version, counts, the newest disagreements.
async fn get_shadow(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    shadow_answer(find(&state, room)?.shadow(ShadowOp::Status).await?)
}

/// Runs `{"policy": NAME}` as the room's shadow from now on.
async fn set_shadow(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    body: Result<Json<ShadowBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    shadow_answer(
        find(&state, room)?
            .shadow(ShadowOp::Set(body.policy))
            .await?,
    )
}

/// Stops the room's shadow; answers its final status.
async fn clear_shadow(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    shadow_answer(find(&state, room)?.shadow(ShadowOp::Clear).await?)
}

fn recording_answer(answer: Result<Option<std::path::PathBuf>, String>) -> ApiResult<Response> {
    match answer {
        Ok(file) => Ok(Json(json!({ "file": file })).into_response()),
        Err(e) => Err(Failure::new(Status::Internal, e).into()),
    }
}

async fn get_recording(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    recording_answer(find(&state, room)?.recording(RecordingOp::Status).await?)
}

/// Starts recording the room's policy inputs under `[policy]
/// recordings_dir`; answers the file.
async fn start_recording(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    recording_answer(find(&state, room)?.recording(RecordingOp::Start).await?)
}

async fn stop_recording(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    recording_answer(find(&state, room)?.recording(RecordingOp::Stop).await?)
}

/// Decisions made where no room exists yet.
async fn outside_decisions(
    _: Admin,
    State(state): State<Arc<AppState>>,
    query: Result<Query<DecisionQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let decisions = state.rooms.outside_decisions(&query);
    Ok(Json(json!({ "decisions": decisions })).into_response())
}

/// The record a refused request's `decision` id names, wherever it was
/// made: its prefix is the room instance's channel id (or `s`, outside
/// any room).
async fn decision(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let gone = || {
        Failure::new(
            Status::NotFound,
            format!(
                "no decision `{id}` is kept: the room closed or the record aged out of its log"
            ),
        )
    };
    if let Some(record) = state.rooms.outside_decision(&id) {
        return Ok(Json(record).into_response());
    }
    let channel = id
        .split_once('-')
        .and_then(|(prefix, _)| prefix.parse::<i64>().ok())
        .ok_or_else(gone)?;
    let handle = state
        .rooms
        .by_channel(crate::ids::ChannelId(channel))
        .ok_or_else(gone)?;
    let found = handle
        .decisions(DecisionQuery::default())
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(gone)?;
    Ok(Json(found).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    user: UserId,
    /// For how long; without, for the room's life (a room ban) or until
    /// lifted (a server ban).
    #[serde(default)]
    seconds: Option<u64>,
    #[serde(default)]
    reason: String,
}

/// Bans a user from a room, removing them if they are in it. A ban for the
/// room's life needs the room open; a timed one may be set ahead.
async fn ban_from_room(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    body: Result<Json<BanBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let name = room_name(room)?;
    let open = state.rooms.find(&name).ok();
    let now_ms = state.clock.unix_ms();
    let until = match (body.seconds, &open) {
        (Some(0), _) => {
            return Err(Failure::new(Status::BadRequest, "`seconds` must be 1 or more").into());
        }
        (Some(seconds), _) => Until::after(now_ms, seconds),
        (None, Some(handle)) => Until::RoomLife(handle.channel_id()),
        (None, None) => {
            return Err(Failure::new(
                Status::NotFound,
                format!(
                    "room `{name}` is not open: a ban for its life needs it open; give `seconds`"
                ),
            )
            .into());
        }
    };
    let ban = state.rooms.bans().ban_user(
        Some(name.as_str()),
        &body.user,
        until,
        &body.reason,
        admin.user.as_str(),
        now_ms,
    );
    tracing::info!(room = %name, user = %body.user, by = %admin.user, "banned from the room by admin");
    if let Some(handle) = open
        && handle.members().await?.iter().any(|m| m.user == body.user)
    {
        let kick = Act::Kick {
            target: body.user,
            ban: None,
        };
        handle.act(By::Admin(admin.user), kick).await?;
    }
    Ok(Json(json!({ "ban": ban })).into_response())
}

async fn list_room_bans(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    let name = room_name(room)?;
    let bans = state
        .rooms
        .bans()
        .list(Some(name.as_str()), state.clock.unix_ms());
    Ok(Json(json!({ "bans": bans })).into_response())
}

fn lifted(found: bool, what: String) -> ApiResult<Response> {
    if found {
        Ok(Json(json!({})).into_response())
    } else {
        Err(Failure::new(Status::NotFound, what).into())
    }
}

async fn lift_room_ban(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path((room, user)): Path<(String, String)>,
) -> ApiResult<Response> {
    let name = room_name(room)?;
    let found = state
        .rooms
        .bans()
        .lift(BanKind::User, Some(name.as_str()), &user);
    tracing::info!(room = %name, user, by = %admin.user, found, "room ban lifted by admin");
    lifted(found, format!("`{user}` is not banned from room `{name}`"))
}

/// Bans a user from the whole server: their sessions end at once, and no
/// hello of theirs is accepted until the ban ends.
async fn ban_from_server(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    body: Result<Json<BanBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let now_ms = state.clock.unix_ms();
    let until = match body.seconds {
        Some(0) => {
            return Err(Failure::new(Status::BadRequest, "`seconds` must be 1 or more").into());
        }
        Some(seconds) => Until::after(now_ms, seconds),
        None => Until::Lifted,
    };
    let ban = state.rooms.bans().ban_user(
        None,
        &body.user,
        until,
        &body.reason,
        admin.user.as_str(),
        now_ms,
    );
    tracing::info!(user = %body.user, by = %admin.user, "banned from the server by admin");
    Ok(Json(json!({ "ban": ban })).into_response())
}

/// Every ban in force, the server's and every room's (revocations are
/// listed by `/api/revocations`).
async fn list_bans(_: Admin, State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let bans: Vec<_> = state
        .rooms
        .bans()
        .list(None, state.clock.unix_ms())
        .into_iter()
        .filter(|b| b.kind == BanKind::User)
        .collect();
    Ok(Json(json!({ "bans": bans })).into_response())
}

async fn lift_server_ban(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> ApiResult<Response> {
    let found = state.rooms.bans().lift(BanKind::User, None, &user);
    tracing::info!(user, by = %admin.user, found, "server ban lifted by admin");
    lifted(found, format!("`{user}` is not banned from the server"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    jti: String,
    #[serde(default)]
    reason: String,
    /// Unix seconds the entry may be forgotten at: the token's `exp`, past
    /// which it is refused anyway. Without, kept until lifted.
    #[serde(default)]
    expires_at: Option<u64>,
}

/// Revokes one token by its `jti`: sessions using it end at once, and it is
/// refused from then on however valid its signature.
async fn revoke(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    if body.jti.is_empty() {
        return Err(Failure::new(Status::BadRequest, "`jti` is empty").into());
    }
    let until = match body.expires_at {
        Some(secs) => Until::at_unix_secs(secs),
        None => Until::Lifted,
    };
    let now_ms = state.clock.unix_ms();
    let ban =
        state
            .rooms
            .bans()
            .revoke(&body.jti, until, &body.reason, admin.user.as_str(), now_ms);
    tracing::info!(jti = %body.jti, by = %admin.user, "token revoked by admin");
    Ok(Json(json!({ "revocation": ban })).into_response())
}

async fn list_revocations(_: Admin, State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let revoked: Vec<_> = state
        .rooms
        .bans()
        .list(None, state.clock.unix_ms())
        .into_iter()
        .filter(|b| b.kind == BanKind::Token)
        .collect();
    Ok(Json(json!({ "revocations": revoked })).into_response())
}

async fn unrevoke(
    Admin(admin): Admin,
    State(state): State<Arc<AppState>>,
    Path(jti): Path<String>,
) -> ApiResult<Response> {
    let found = state.rooms.bans().lift(BanKind::Token, None, &jti);
    tracing::info!(jti, by = %admin.user, found, "revocation lifted by admin");
    lifted(found, format!("no revocation of token `{jti}`"))
}
