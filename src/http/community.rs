//! The community REST API under `/api/community`: servers, members, roles,
//! channels, overrides, black/white lists and media channel settings.
//!
//! Any valid token may call it. A caller holding the admin grant is an
//! operator and may do everything; anyone else is the member named by the
//! token's `sub`, and each change is authorized by
//! [`crate::community::Server::authorize`] (the manage key it needs, the
//! rank rule for roles, and nobody granting a key they do not hold). Reads
//! need membership, and channels a member cannot see are absent. A change
//! answers only once it is on disk. docs/community.md lists every route.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::admin::ApiError;
use crate::app::AppState;
use crate::auth::Identity;
use crate::community::hub::{CommunityHub, HubError};
use crate::community::snapshot::{ChannelSnapshot, RoleSnapshot, channel_snapshot};
use crate::community::{
    ChannelKind, CommunityChannelId, CommunityError, ListEntry, ListKind, Manage, MediaSettings,
    MediaSettingsUpdate, PermissionChanges, Permissions, RoleId, Server, ServerId, Visibility,
};
use crate::ids::UserId;
use crate::policy::authz;
use crate::status::{Failure, Status};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/servers", get(list_servers).post(create_server))
        .route(
            "/servers/{server}",
            get(get_server).patch(update_server).delete(delete_server),
        )
        .route(
            "/servers/{server}/members",
            get(list_members).post(add_member),
        )
        .route(
            "/servers/{server}/members/{user}",
            axum::routing::delete(remove_member),
        )
        .route(
            "/servers/{server}/members/{user}/roles/{role}",
            put(assign_role).delete(unassign_role),
        )
        .route(
            "/servers/{server}/permissions/{user}",
            get(server_permissions),
        )
        .route("/servers/{server}/roles", get(list_roles).post(create_role))
        .route(
            "/servers/{server}/roles/{role}",
            axum::routing::patch(update_role).delete(delete_role),
        )
        .route(
            "/servers/{server}/channels",
            get(list_channels).post(create_channel),
        )
        .route(
            "/servers/{server}/channels/{channel}",
            get(get_channel)
                .patch(update_channel)
                .delete(delete_channel),
        )
        .route(
            "/servers/{server}/channels/{channel}/settings",
            get(get_settings).patch(update_settings),
        )
        .route(
            "/servers/{server}/channels/{channel}/roles/{role}",
            axum::routing::patch(role_override),
        )
        .route(
            "/servers/{server}/channels/{channel}/members/{user}",
            axum::routing::patch(member_override),
        )
        .route(
            "/servers/{server}/channels/{channel}/permissions/{user}",
            get(channel_permissions),
        )
        .route(
            "/servers/{server}/channels/{channel}/lists/{list}",
            get(get_list),
        )
        .route(
            "/servers/{server}/channels/{channel}/lists/{list}/roles/{role}",
            put(list_add_role).delete(list_remove_role),
        )
        .route(
            "/servers/{server}/channels/{channel}/lists/{list}/members/{user}",
            put(list_add_member).delete(list_remove_member),
        )
}

type ApiResult<T> = Result<T, ApiError>;

/// Any caller with a valid token.
pub struct Caller(Identity);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(super::admin::bearer_identity(parts, state)?))
    }
}

impl Caller {
    fn admin(&self) -> bool {
        self.0.grants.admin
    }

    fn user(&self) -> &UserId {
        &self.0.user
    }

    /// May this caller make `action` on `server`? (`policy::authz`: an
    /// operator may do anything, anyone else by the community's rules.)
    fn authorize(&self, server: &Server, action: Manage) -> Result<(), HubError> {
        Ok(authz::authorize_management(&self.0, server, action)?)
    }

    /// May this caller read `server`? Members and operators may.
    fn may_read(&self, server: &Server) -> Result<(), HubError> {
        Ok(authz::authorize_read(&self.0, server)?)
    }

    /// Whether this caller sees `channel` (operators see all).
    fn sees(&self, hub: &CommunityHub, server: ServerId, channel: CommunityChannelId) -> bool {
        self.admin() || hub.effective(server, Some(channel), self.user()).visible
    }
}

fn hub(state: &AppState) -> &Arc<CommunityHub> {
    &state.community
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    Ok(body?.0)
}

fn parse_list(raw: &str) -> ApiResult<ListKind> {
    match raw {
        "black" => Ok(ListKind::Black),
        "white" => Ok(ListKind::White),
        other => Err(Failure::new(
            Status::BadRequest,
            format!("no list `{other}`: use `black` or `white`"),
        )
        .into()),
    }
}

/// Applies an edit and answers once it is stored.
async fn edit<R>(
    state: &AppState,
    server: ServerId,
    caller: &Caller,
    change: impl FnOnce(&mut Server) -> Result<R, HubError>,
) -> ApiResult<R> {
    let result = hub(state).edit(server, caller.user().as_str(), change)?;
    hub(state).flush().await;
    Ok(result)
}

fn ok() -> ApiResult<Response> {
    Ok(Json(json!({})).into_response())
}

/// A server as a caller sees it: channels hidden from them left out.
fn server_view(state: &AppState, caller: &Caller, id: ServerId) -> ApiResult<serde_json::Value> {
    let hub = hub(state);
    let snapshot = hub.read(|c| -> Result<_, HubError> {
        let server = c.server(id).ok_or(CommunityError::NoSuchServer(id))?;
        caller.may_read(server)?;
        Ok(server.snapshot())
    })?;
    let mut snapshot = snapshot;
    snapshot.channels.retain(|c| caller.sees(hub, id, c.id));
    Ok(
        serde_json::to_value(snapshot)
            .map_err(|e| Failure::new(Status::Internal, e.to_string()))?,
    )
}

// --- servers ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateServer {
    name: String,
    /// Operators only: whom the server belongs to (default: the caller).
    #[serde(default)]
    owner: Option<UserId>,
}

async fn create_server(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    raw: Result<Json<CreateServer>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(raw)?;
    let owner = match req.owner {
        Some(owner) if caller.admin() => owner,
        Some(owner) if owner != *caller.user() => {
            return Err(Failure::new(
                Status::Forbidden,
                "only an operator may create a server for someone else",
            )
            .into());
        }
        _ => caller.user().clone(),
    };
    let snapshot = hub(&state).create_server(owner, req.name, caller.user().as_str());
    hub(&state).flush().await;
    tracing::info!(server = %snapshot.id, by = %caller.user(), "community server created");
    Ok((StatusCode::CREATED, Json(snapshot)).into_response())
}

async fn list_servers(caller: Caller, State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let mut servers: Vec<serde_json::Value> = hub(&state).read(|c| {
        c.servers()
            .filter(|s| caller.admin() || s.is_member(caller.user()))
            .map(|s| {
                json!({
                    "id": s.id(), "name": s.name(), "owner": s.owner(),
                    "members": s.member_count(),
                })
            })
            .collect()
    });
    servers.sort_by_key(|s| s["id"].as_u64());
    Ok(Json(json!({ "servers": servers })).into_response())
}

async fn get_server(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
) -> ApiResult<Response> {
    Ok(Json(server_view(&state, &caller, ServerId(server))?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateServer {
    #[serde(default)]
    name: Option<String>,
    /// Hand the server to another member: the owner or an operator only.
    #[serde(default)]
    owner: Option<UserId>,
}

async fn update_server(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
    raw: Result<Json<UpdateServer>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(raw)?;
    let id = ServerId(server);
    edit(&state, id, &caller, |s| {
        caller.authorize(s, Manage::EditServer)?;
        if let Some(name) = req.name {
            s.set_name(name);
        }
        if let Some(owner) = req.owner {
            if !caller.admin() && s.owner() != caller.user() {
                return Err(HubError::Forbidden(
                    "only the owner may hand the server to someone else".into(),
                ));
            }
            s.transfer_owner(&owner)?;
        }
        Ok(())
    })
    .await?;
    Ok(Json(server_view(&state, &caller, id)?).into_response())
}

async fn delete_server(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
) -> ApiResult<Response> {
    let id = ServerId(server);
    hub(&state).read(|c| -> Result<(), HubError> {
        let server = c.server(id).ok_or(CommunityError::NoSuchServer(id))?;
        caller.authorize(server, Manage::EditServer)
    })?;
    hub(&state).delete_server(id, caller.user().as_str())?;
    hub(&state).flush().await;
    tracing::info!(server = %id, by = %caller.user(), "community server deleted");
    ok()
}

// --- members ---

async fn list_members(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
) -> ApiResult<Response> {
    let view = server_view(&state, &caller, ServerId(server))?;
    Ok(Json(json!({ "members": view["members"] })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    user: UserId,
}

async fn add_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
    raw: Result<Json<AddMember>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(raw)?;
    edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::EditServer)?;
        s.add_member(req.user);
        Ok(())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({}))).into_response())
}

/// A member leaves (themselves), or is removed (`manageServer`).
async fn remove_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, user)): Path<(u64, String)>,
) -> ApiResult<Response> {
    let user = UserId(user);
    edit(&state, ServerId(server), &caller, |s| {
        if user != *caller.user() {
            caller.authorize(s, Manage::EditServer)?;
        }
        s.remove_member(&user)?;
        Ok(())
    })
    .await?;
    ok()
}

async fn assign_role(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, user, role)): Path<(u64, String, u64)>,
) -> ApiResult<Response> {
    let (user, role) = (UserId(user), RoleId(role));
    edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::AssignRole(role))?;
        Ok(s.assign_role(&user, role)?)
    })
    .await?;
    ok()
}

async fn unassign_role(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, user, role)): Path<(u64, String, u64)>,
) -> ApiResult<Response> {
    let (user, role) = (UserId(user), RoleId(role));
    edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::UnassignRole(role))?;
        Ok(s.unassign_role(&user, role)?)
    })
    .await?;
    ok()
}

/// A member's effective permissions at server level. Members may read their
/// own; reading another's takes `manageRole` (or an operator).
async fn server_permissions(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, user)): Path<(u64, String)>,
) -> ApiResult<Response> {
    permissions_of(&state, &caller, ServerId(server), None, UserId(user))
}

async fn channel_permissions(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, user)): Path<(u64, u64, String)>,
) -> ApiResult<Response> {
    let channel = CommunityChannelId(channel);
    permissions_of(
        &state,
        &caller,
        ServerId(server),
        Some(channel),
        UserId(user),
    )
}

fn permissions_of(
    state: &AppState,
    caller: &Caller,
    id: ServerId,
    channel: Option<CommunityChannelId>,
    user: UserId,
) -> ApiResult<Response> {
    hub(state).read(|c| -> Result<(), HubError> {
        let server = c.server(id).ok_or(CommunityError::NoSuchServer(id))?;
        caller.may_read(server)?;
        if user != *caller.user()
            && !caller.admin()
            && !server.may_manage_roles(None, caller.user())
        {
            return Err(crate::community::Refusal::Missing(
                crate::community::PermissionKey::ManageRole,
            )
            .into());
        }
        Ok(())
    })?;
    if let Some(channel) = channel
        && !caller.sees(hub(state), id, channel)
    {
        return Err(CommunityError::NoSuchChannel(channel).into());
    }
    let effective = hub(state).effective(id, channel, &user);
    Ok(Json(json!({
        "user": user,
        "permissions": effective.permissions,
        "visible": effective.visible,
        "member": effective.member,
        "owner": effective.owner,
    }))
    .into_response())
}

// --- roles ---

async fn list_roles(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
) -> ApiResult<Response> {
    let view = server_view(&state, &caller, ServerId(server))?;
    Ok(Json(json!({ "everyone": view["everyone"], "roles": view["roles"] })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRole {
    name: String,
    priority: i64,
    #[serde(default)]
    permissions: Permissions,
}

async fn create_role(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
    raw: Result<Json<CreateRole>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(raw)?;
    let id = RoleId(hub(&state).allocate_id());
    let role = RoleSnapshot {
        id,
        name: req.name,
        priority: req.priority,
        permissions: req.permissions,
    };
    let created = role.clone();
    edit(&state, ServerId(server), &caller, |s| {
        let grants = role.permissions.allow();
        caller.authorize(
            s,
            Manage::CreateRole {
                priority: role.priority,
                grants,
            },
        )?;
        Ok(s.add_role(role.id, role.name, role.priority, role.permissions)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRole {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    /// Only the keys named change; `"inherit"` resets one.
    #[serde(default)]
    permissions: Option<PermissionChanges>,
}

async fn update_role(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, role)): Path<(u64, u64)>,
    raw: Result<Json<UpdateRole>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(raw)?;
    let role = RoleId(role);
    let updated = edit(&state, ServerId(server), &caller, |s| {
        let current = s
            .role(role)
            .ok_or(CommunityError::NoSuchRole(role))?
            .permissions();
        let changes = req.permissions.unwrap_or_default();
        caller.authorize(
            s,
            Manage::EditRole {
                role,
                grants: changes.allow() - current.allow(),
                priority: req.priority,
            },
        )?;
        if let Some(name) = req.name {
            s.rename_role(role, name)?;
        }
        if let Some(priority) = req.priority {
            s.set_role_priority(role, priority)?;
        }
        s.update_role_permissions(role, &changes)?;
        let r = s.role(role).ok_or(CommunityError::NoSuchRole(role))?;
        Ok(RoleSnapshot {
            id: r.id(),
            name: r.name().to_owned(),
            priority: r.priority(),
            permissions: r.permissions(),
        })
    })
    .await?;
    Ok(Json(updated).into_response())
}

async fn delete_role(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, role)): Path<(u64, u64)>,
) -> ApiResult<Response> {
    let role = RoleId(role);
    edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::DeleteRole(role))?;
        Ok(s.remove_role(role)?)
    })
    .await?;
    ok()
}

// --- channels ---

async fn list_channels(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
) -> ApiResult<Response> {
    let view = server_view(&state, &caller, ServerId(server))?;
    Ok(Json(json!({ "channels": view["channels"] })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateChannel {
    name: String,
    kind: ChannelKind,
    #[serde(default = "public")]
    visibility: Visibility,
    /// Media channels only; defaults otherwise.
    #[serde(default)]
    settings: Option<MediaSettingsUpdate>,
}

fn public() -> Visibility {
    Visibility::Public
}

async fn create_channel(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(server): Path<u64>,
    raw: Result<Json<CreateChannel>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(raw)?;
    let id = CommunityChannelId(hub(&state).allocate_id());
    let created = edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::CreateChannel)?;
        s.add_channel(id, req.kind, req.visibility)?;
        s.rename_channel(id, req.name)?;
        if let Some(update) = &req.settings {
            s.set_media_settings(id, MediaSettings::default().updated(update))?;
        }
        channel_of(s, id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

fn channel_of(server: &Server, id: CommunityChannelId) -> Result<ChannelSnapshot, HubError> {
    Ok(channel_snapshot(
        server
            .channel(id)
            .ok_or(CommunityError::NoSuchChannel(id))?,
    ))
}

/// A channel the caller can read and see; invisible ones are "not found".
fn read_channel(
    state: &AppState,
    caller: &Caller,
    server: ServerId,
    channel: CommunityChannelId,
) -> ApiResult<ChannelSnapshot> {
    let snapshot = hub(state).read(|c| -> Result<_, HubError> {
        let s = c
            .server(server)
            .ok_or(CommunityError::NoSuchServer(server))?;
        caller.may_read(s)?;
        channel_of(s, channel)
    })?;
    if !caller.sees(hub(state), server, channel) {
        return Err(CommunityError::NoSuchChannel(channel).into());
    }
    Ok(snapshot)
}

async fn get_channel(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel)): Path<(u64, u64)>,
) -> ApiResult<Response> {
    let snapshot = read_channel(
        &state,
        &caller,
        ServerId(server),
        CommunityChannelId(channel),
    )?;
    Ok(Json(snapshot).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateChannel {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    visibility: Option<Visibility>,
}

async fn update_channel(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel)): Path<(u64, u64)>,
    raw: Result<Json<UpdateChannel>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(raw)?;
    let channel = CommunityChannelId(channel);
    let updated = edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::EditChannel(channel))?;
        if let Some(name) = req.name {
            s.rename_channel(channel, name)?;
        }
        if let Some(visibility) = req.visibility {
            s.set_visibility(channel, visibility)?;
        }
        channel_of(s, channel)
    })
    .await?;
    Ok(Json(updated).into_response())
}

async fn delete_channel(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel)): Path<(u64, u64)>,
) -> ApiResult<Response> {
    let channel = CommunityChannelId(channel);
    edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::EditChannel(channel))?;
        Ok(s.remove_channel(channel)?)
    })
    .await?;
    ok()
}

async fn get_settings(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel)): Path<(u64, u64)>,
) -> ApiResult<Response> {
    let snapshot = read_channel(
        &state,
        &caller,
        ServerId(server),
        CommunityChannelId(channel),
    )?;
    if snapshot.kind != ChannelKind::Media {
        return Err(CommunityError::NotMedia(snapshot.id).into());
    }
    Ok(Json(snapshot.settings).into_response())
}

async fn update_settings(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel)): Path<(u64, u64)>,
    raw: Result<Json<MediaSettingsUpdate>, JsonRejection>,
) -> ApiResult<Response> {
    let update = body(raw)?;
    let channel = CommunityChannelId(channel);
    let settings = edit(&state, ServerId(server), &caller, |s| {
        caller.authorize(s, Manage::EditChannel(channel))?;
        let current = *s
            .channel(channel)
            .ok_or(CommunityError::NoSuchChannel(channel))?
            .settings();
        let settings = current.updated(&update);
        s.set_media_settings(channel, settings)?;
        Ok(settings)
    })
    .await?;
    Ok(Json(settings).into_response())
}

// --- overrides ---

async fn role_override(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, role)): Path<(u64, u64, u64)>,
    raw: Result<Json<PermissionChanges>, JsonRejection>,
) -> ApiResult<Response> {
    let changes = body(raw)?;
    let (channel, role) = (CommunityChannelId(channel), RoleId(role));
    let now = edit(&state, ServerId(server), &caller, |s| {
        let current = s
            .channel(channel)
            .ok_or(CommunityError::NoSuchChannel(channel))?
            .role_override(role);
        let grants = changes.allow() - current.allow();
        caller.authorize(
            s,
            Manage::RoleOverride {
                channel,
                role,
                grants,
            },
        )?;
        s.update_role_override(channel, role, &changes)?;
        Ok(s.channel(channel).map(|c| c.role_override(role)))
    })
    .await?;
    Ok(Json(json!({ "role": role, "permissions": now })).into_response())
}

async fn member_override(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, user)): Path<(u64, u64, String)>,
    raw: Result<Json<PermissionChanges>, JsonRejection>,
) -> ApiResult<Response> {
    let changes = body(raw)?;
    let (channel, user) = (CommunityChannelId(channel), UserId(user));
    let now = edit(&state, ServerId(server), &caller, |s| {
        let current = s
            .channel(channel)
            .ok_or(CommunityError::NoSuchChannel(channel))?
            .member_override(&user);
        let grants = changes.allow() - current.allow();
        caller.authorize(s, Manage::MemberOverride { channel, grants })?;
        s.update_member_override(channel, &user, &changes)?;
        Ok(s.channel(channel).map(|c| c.member_override(&user)))
    })
    .await?;
    Ok(Json(json!({ "user": user, "permissions": now })).into_response())
}

// --- black and white lists ---

async fn get_list(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, list)): Path<(u64, u64, String)>,
) -> ApiResult<Response> {
    let list = parse_list(&list)?;
    let snapshot = read_channel(
        &state,
        &caller,
        ServerId(server),
        CommunityChannelId(channel),
    )?;
    let entries = match list {
        ListKind::Black => snapshot.black_list,
        ListKind::White => snapshot.white_list,
    };
    Ok(Json(entries).into_response())
}

async fn change_list(
    state: &AppState,
    caller: &Caller,
    server: u64,
    channel: u64,
    list: &str,
    entry: ListEntry,
    add: bool,
) -> ApiResult<Response> {
    let list = parse_list(list)?;
    let channel = CommunityChannelId(channel);
    edit(state, ServerId(server), caller, |s| {
        caller.authorize(s, Manage::EditLists(channel))?;
        if add {
            s.list_add(channel, list, entry)?;
        } else {
            s.list_remove(channel, list, &entry)?;
        }
        Ok(())
    })
    .await?;
    ok()
}

async fn list_add_role(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, list, role)): Path<(u64, u64, String, u64)>,
) -> ApiResult<Response> {
    let entry = ListEntry::Role(RoleId(role));
    change_list(&state, &caller, server, channel, &list, entry, true).await
}

async fn list_remove_role(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, list, role)): Path<(u64, u64, String, u64)>,
) -> ApiResult<Response> {
    let entry = ListEntry::Role(RoleId(role));
    change_list(&state, &caller, server, channel, &list, entry, false).await
}

async fn list_add_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, list, user)): Path<(u64, u64, String, String)>,
) -> ApiResult<Response> {
    let entry = ListEntry::Member(UserId(user));
    change_list(&state, &caller, server, channel, &list, entry, true).await
}

async fn list_remove_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((server, channel, list, user)): Path<(u64, u64, String, String)>,
) -> ApiResult<Response> {
    let entry = ListEntry::Member(UserId(user));
    change_list(&state, &caller, server, channel, &list, entry, false).await
}
