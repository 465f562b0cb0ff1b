//! Community media channels over the signaling protocol: connecting (the
//! channel's room is opened on the first connect) and who is connected.
//!
//! Admission is the authorization pipeline's step 2
//! (`policy::authz::admission`), asked here before a room is opened, so that
//! a refused member opens nothing, and asked again by the room at the join
//! (the community may change in between); only the room's answer admits.

use std::sync::Arc;

use crate::auth::Identity;
use crate::community::channel::{ChannelBinding, room_name};
use crate::community::hub::CommunityHub;
use crate::community::{ChannelKind, CommunityChannelId, MediaSettings, ServerId};
use crate::ids::{ConnId, UserId};
use crate::model::{MemberInfo, Mode};
use crate::policy::authz::{self, Decider, Denial};
use crate::protocol::ConnectOk;
use crate::room::{Error, RoomHandle, Rooms, Sink};
use crate::status::Status;

/// The room of a media channel, opened if nobody is connected yet.
async fn open_room(
    rooms: &Rooms,
    hub: &Arc<CommunityHub>,
    server: ServerId,
    channel: CommunityChannelId,
    identity: &Identity,
    mode: Mode,
) -> Result<(RoomHandle, MediaSettings), Error> {
    let binding = ChannelBinding {
        hub: hub.clone(),
        server,
        channel,
    };
    let ctx = binding.member(&identity.user);
    let name = room_name(server, channel);
    // The member limit is the room's to check: it knows how many are in.
    // A refusal here is made before any room exists: it goes to the
    // registry's decision log.
    authz::admission(&binding, &ctx, identity.grants.admin, 0).map_err(|denial| {
        let access = authz::Access {
            room: name.as_str(),
            identity,
            community: Some(&ctx),
            attr_lines: "",
            ask: authz::Ask::Join {
                mode,
                role: None,
                members: 0,
            },
        };
        rooms.refused_outside(&access, denial)
    })?;
    let settings = binding
        .settings()
        .ok_or_else(|| no_channel(server, channel))?;
    if let Some(handle) = rooms.get(&name) {
        return Ok((handle, settings));
    }
    match rooms.create_for_channel(name.clone(), binding).await {
        Ok(handle) => Ok((handle, settings)),
        // Another connect opened it meanwhile.
        Err(Error::Taken(_)) => Ok((rooms.find(&name)?, settings)),
        Err(e) => Err(e),
    }
}

fn no_channel(server: ServerId, channel: CommunityChannelId) -> Error {
    Error::Denied(Denial::new(
        Status::NotFound,
        format!("no media channel {channel} in server {server}"),
        Decider::Community,
    ))
}

/// Connects `identity` to a media channel: opens its room if needed and
/// joins it. A room that closes between the lookup and the join (its last
/// member just left) is opened again, once.
pub async fn connect(
    rooms: &Rooms,
    hub: &Arc<CommunityHub>,
    (server, channel): (ServerId, CommunityChannelId),
    conn: ConnId,
    identity: Arc<Identity>,
    mode: Mode,
    sink: Sink,
) -> Result<(RoomHandle, ConnectOk), Error> {
    let mut attempts = 2;
    loop {
        attempts -= 1;
        let (handle, settings) = open_room(rooms, hub, server, channel, &identity, mode).await?;
        match handle
            .join(conn, identity.clone(), mode, None, sink.clone())
            .await
        {
            Ok(join) => {
                let ok = ConnectOk {
                    server,
                    channel,
                    settings,
                    join,
                };
                return Ok((handle, ok));
            }
            Err(Error::Closed(_)) if attempts > 0 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Who is connected to a channel the requester can see.
pub async fn online_members(
    rooms: &Rooms,
    hub: &Arc<CommunityHub>,
    server: ServerId,
    channel: CommunityChannelId,
    user: &UserId,
    admin: bool,
) -> Result<Vec<MemberInfo>, Error> {
    let visible = hub.effective(server, Some(channel), user).visible;
    let exists = hub.read(|c| {
        c.server(server)
            .and_then(|s| s.channel(channel))
            .is_some_and(|c| c.kind() == ChannelKind::Media)
    });
    if !exists || !(visible || admin) {
        return Err(no_channel(server, channel));
    }
    match rooms.get(&room_name(server, channel)) {
        Some(handle) => match handle.members().await {
            Ok(members) => Ok(members),
            // Closed between the lookup and the question: nobody is in it.
            Err(Error::Closed(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        },
        None => Ok(Vec::new()),
    }
}
