//! One authorization pipeline for everything a member asks of a room.
//!
//! A request becomes one value, an [`Access`]: who asks (their token, their
//! standing in a community media channel), what room, and what ([`Ask`]).
//! [`RoomPolicy::authorize`] runs it through the documented order, in this
//! one place:
//!
//! 1. **grants**: the token's `create` grant and room patterns; its `admin`
//!    grant, which lets a member act on others;
//! 2. **community keys**, in a media channel's room: admission (visible,
//!    `RTCChannelConnect`, the member limit) and the key each action needs;
//!    holding the key for acting on others counts as the admin grant does;
//! 3. **plugins**: any deny wins;
//! 4. **the room policy's decide hook**: it may refuse, change the outcome
//!    (join as audience, deliver another payload) or, with an explicit
//!    `true`, let a member act on others.
//!
//! What is left then is decided: acting on others needs one of the three
//! grants of it, a role taken for oneself must be one the token allows
//! (unless the policy or the channel chose it). The answer is a
//! [`Granted`] with the terms the state machine applies, or a [`Denial`]
//! naming the status, the reason the client sees, and which step refused.
//!
//! Management of community servers (the REST API's rules) goes through
//! [`authorize_management`]: the same first two steps, since no room, plugin
//! or policy is involved.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lua::{Decision, Effect, RoomView};
use super::runtime::RoomPolicy;
use super::{Action, Check};
use crate::auth::Identity;
use crate::community::channel::{AdmitError, ChannelBinding};
use crate::community::hub::MemberContext;
use crate::community::{Manage, PermissionKey, Refusal, Server};
use crate::ids::UserId;
use crate::model::{MediaKind, Mode, Role};
use crate::status::Status;

/// Which step of the pipeline refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Decider {
    /// A ban of the user (from the room or the server) or of the token.
    Ban,
    /// The token's grants.
    Grants,
    /// The community's permission keys, in a media channel.
    Community,
    /// A permission plugin.
    Plugin { plugin: String },
    /// The room policy's decide hook (or its failure mode).
    Policy { script: String, hook: String },
    /// The rules that hold after every step (acting on others, roles).
    Rules,
    /// The room's own state machine, after the pipeline allowed the request
    /// (an audience member cannot unmute, say).
    Room,
}

/// A refusal: what the client is told, and who decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denial {
    pub status: Status,
    pub reason: String,
    pub by: Decider,
    /// The decision-log record of this refusal, once it is written down.
    pub decision: Option<String>,
}

impl Denial {
    pub fn new(status: Status, reason: impl Into<String>, by: Decider) -> Denial {
        Denial {
            status,
            reason: reason.into(),
            by,
            decision: None,
        }
    }
}

/// What is asked.
#[derive(Clone, Copy, Debug)]
pub enum Ask<'a> {
    /// Create the room.
    Create {
        custom_info: &'a str,
    },
    /// Join it; `members` is how many it holds now.
    Join {
        mode: Mode,
        role: Option<Role>,
        members: usize,
    },
    /// Change one's own role, or `target`'s; `current` is the target's role.
    SetRole {
        target: Option<&'a UserId>,
        role: Role,
        current: Role,
    },
    Mute {
        target: Option<&'a UserId>,
        kind: MediaKind,
        muted: bool,
    },
    MuteAll {
        kind: MediaKind,
        muted: bool,
    },
    Kick {
        target: &'a UserId,
    },
    ShareScreen {
        target: Option<&'a UserId>,
        on: bool,
    },
    Data {
        to: Option<&'a UserId>,
        payload: &'a Value,
    },
}

/// One request to authorize.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub room: &'a str,
    pub identity: &'a Identity,
    /// The actor's permissions in a media channel's room.
    pub community: Option<&'a MemberContext>,
    /// The actor's token attributes as plugins receive them.
    pub attr_lines: &'a str,
    pub ask: Ask<'a>,
}

/// How a join goes ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinTerms {
    pub role: Role,
    /// Start with audio and video muted.
    pub muted: bool,
}

/// What to do with a data message.
#[derive(Clone, Debug, PartialEq)]
pub enum DataTerms {
    /// Deliver it, as sent or as the policy rewrote it.
    Deliver(Value),
    /// The policy took care of it: nothing is delivered.
    Handled,
}

/// An allowed request and its terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Granted {
    /// The decision-log record of this decision.
    pub decision: String,
    /// The member may act on others for this request.
    pub elevated: bool,
    /// For joins.
    pub join: Option<JoinTerms>,
    /// For data messages.
    pub data: Option<DataTerms>,
}

impl Ask<'_> {
    /// Whether the request acts on someone other than `me` (mute-all and
    /// kick always do).
    pub fn on_others(&self, me: &UserId) -> bool {
        let other = |t: Option<&UserId>| t.is_some_and(|t| t != me);
        match self {
            Ask::Create { .. } | Ask::Join { .. } | Ask::Data { .. } => false,
            Ask::SetRole { target, .. }
            | Ask::Mute { target, .. }
            | Ask::ShareScreen { target, .. } => other(*target),
            Ask::MuteAll { .. } | Ask::Kick { .. } => true,
        }
    }

    /// The action's name in the decision log.
    pub fn name(&self) -> &'static str {
        match self {
            Ask::Create { .. } => "create",
            Ask::Join { .. } => "join",
            Ask::SetRole { .. } => "set_role",
            Ask::Mute { .. } => "mute",
            Ask::MuteAll { .. } => "mute_all",
            Ask::Kick { .. } => "kick",
            Ask::ShareScreen { .. } => "share_screen",
            Ask::Data { .. } => "send",
        }
    }

    /// Whom the request is aimed at, if anyone.
    pub fn target(&self) -> Option<&UserId> {
        match *self {
            Ask::SetRole { target, .. }
            | Ask::Mute { target, .. }
            | Ask::ShareScreen { target, .. } => target,
            Ask::Kick { target } => Some(target),
            Ask::Data { to, .. } => to,
            _ => None,
        }
    }

    /// The decide hook that answers it.
    pub fn hook(&self) -> &'static str {
        match self {
            Ask::Create { .. } => "can_create",
            Ask::Join { .. } => "can_join",
            Ask::SetRole { .. } => "can_set_role",
            Ask::Mute { .. } => "can_mute",
            Ask::MuteAll { .. } => "can_mute_all",
            Ask::Kick { .. } => "can_kick",
            Ask::ShareScreen { .. } => "can_share_screen",
            Ask::Data { .. } => "can_send",
        }
    }

    /// What plugins are asked, if anything: actions on others, publishing
    /// (unmuting oneself, starting a share), and the rest by their own code.
    /// Muting oneself and switching one's own role need no permission, but
    /// a role switch is still asked as `SetRole`.
    pub fn plugin_action(&self, on_others: bool) -> Option<Action> {
        Some(match *self {
            Ask::Create { .. } => Action::CreateRoom,
            Ask::Join { .. } => Action::Join,
            Ask::SetRole { .. } => Action::SetRole,
            Ask::Mute { .. } if on_others => Action::MuteOther,
            Ask::Mute {
                kind: MediaKind::Audio,
                muted: false,
                ..
            } => Action::PublishAudio,
            Ask::Mute {
                kind: MediaKind::Video,
                muted: false,
                ..
            } => Action::PublishVideo,
            Ask::Mute { .. } => return None,
            Ask::MuteAll { .. } => Action::MuteEveryone,
            Ask::Kick { .. } => Action::Kick,
            Ask::ShareScreen { .. } if on_others => Action::StopScreenShare,
            Ask::ShareScreen { on: true, .. } => Action::ShareScreen,
            Ask::ShareScreen { .. } => return None,
            Ask::Data { .. } => Action::SendData,
        })
    }

    fn kind(&self) -> Option<MediaKind> {
        match *self {
            Ask::Mute { kind, .. } | Ask::MuteAll { kind, .. } => Some(kind),
            Ask::Join { mode, .. } => Some(match mode {
                Mode::Audio => MediaKind::Audio,
                Mode::Video => MediaKind::Video,
            }),
            _ => None,
        }
    }
}

/// The community key an action needs in a media channel; `None` for actions
/// the QChat model does not govern (roles, data, muting oneself).
pub fn key_for(action: Action, kind: Option<MediaKind>) -> Option<PermissionKey> {
    use PermissionKey as K;
    Some(match (action, kind) {
        (Action::Join, _) => K::RtcChannelConnect,
        (Action::PublishAudio, _) => K::RtcChannelOpenMicrophone,
        (Action::PublishVideo, _) => K::RtcChannelOpenCamera,
        (Action::ShareScreen, _) => K::RtcChannelOpenShareScreen,
        (Action::MuteOther, Some(MediaKind::Audio)) => K::RtcChannelOpenCloseOtherMicrophone,
        (Action::MuteOther, Some(MediaKind::Video)) => K::RtcChannelOpenCloseOtherCamera,
        (Action::MuteEveryone, Some(MediaKind::Audio)) => K::RtcChannelOpenCloseEveryoneMicrophone,
        (Action::MuteEveryone, Some(MediaKind::Video)) => K::RtcChannelOpenCloseEveryoneCamera,
        (Action::Kick, _) => K::RtcChannelDisconnectOther,
        (Action::StopScreenShare, _) => K::RtcChannelCloseOtherShareScreen,
        _ => return None,
    })
}

/// Step 2 for a join (and for opening a channel's room): may this member
/// connect to the channel now?
pub fn admission(
    binding: &ChannelBinding,
    ctx: &MemberContext,
    admin: bool,
    members: usize,
) -> Result<(), Denial> {
    binding.admit(ctx, admin, members).map_err(community_denial)
}

fn community_denial(e: AdmitError) -> Denial {
    let status = match &e {
        AdmitError::NoSuchChannel { .. } => Status::NotFound,
        AdmitError::NotVisible { .. } | AdmitError::Missing { .. } => Status::Forbidden,
        AdmitError::Full { .. } => Status::ChannelFull,
    };
    Denial::new(status, e.to_string(), Decider::Community)
}

/// Step 1 alone: what the token's grants say about creating or joining
/// `room` (the create grant, the room patterns). [`RoomPolicy::authorize`]
/// runs it first; callers run it on its own where it must answer before
/// anything else (before a join looks the room up, so a token that does not
/// cover a name learns nothing about it; for a resume, which no hook
/// decides again). Media channels are the community's to admit: no pattern
/// is asked.
pub fn grants(access: &Access<'_>, channel: bool) -> Result<(), Denial> {
    match access.ask {
        Ask::Create { .. } => grants_for_room(access.identity, access.room, true),
        Ask::Join { .. } if !channel => grants_for_room(access.identity, access.room, false),
        _ => Ok(()),
    }
}

/// The token's grants for creating a room and for its name.
fn grants_for_room(identity: &Identity, room: &str, create: bool) -> Result<(), Denial> {
    if create && !identity.grants.create {
        return Err(Denial::new(
            Status::Forbidden,
            "this token may not create rooms",
            Decider::Grants,
        ));
    }
    if !identity.may_enter(room) {
        return Err(Denial::new(
            Status::Unauthorized,
            format!("this token does not cover room `{room}`"),
            Decider::Grants,
        ));
    }
    Ok(())
}

/// The request a decide hook receives, as a Lua table. Owned: it travels to
/// the script thread.
#[derive(Serialize)]
struct HookRequest {
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<MediaKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    muted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attrs: Option<Value>,
    admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    community: Option<MemberContext>,
}

impl RoomPolicy {
    /// Runs `access` through the pipeline (module docs) and writes the
    /// decision down in the room's decision log: the answer names its
    /// record. `channel` is set in a media channel's room; `view` is the
    /// room as hooks read it. Effects the decide hook queued are added to
    /// `effects`; the caller applies them only if the request then
    /// succeeds.
    pub async fn authorize(
        &mut self,
        access: &Access<'_>,
        channel: Option<&ChannelBinding>,
        view: &Arc<RoomView>,
        effects: &mut Vec<Effect>,
    ) -> Result<Granted, Denial> {
        let started = std::time::Instant::now();
        let answer = self.run_pipeline(access, channel, view, effects).await;
        let micros = started.elapsed().as_micros() as u64;
        let (allowed, code, reason, by) = match &answer {
            Ok((_, by)) => (true, Status::Ok.code(), None, by.clone()),
            Err(d) => (false, d.status.code(), Some(d.reason.clone()), d.by.clone()),
        };
        let id = self.record_decision(access, allowed, code, reason, by, micros);
        match answer {
            Ok((mut granted, _)) => {
                granted.decision = id;
                Ok(granted)
            }
            Err(mut denial) => {
                denial.decision = Some(id);
                Err(denial)
            }
        }
    }

    /// The pipeline itself; an allowed request also says who decided.
    async fn run_pipeline(
        &mut self,
        access: &Access<'_>,
        channel: Option<&ChannelBinding>,
        view: &Arc<RoomView>,
        effects: &mut Vec<Effect>,
    ) -> Result<(Granted, Decider), Denial> {
        let identity = access.identity;
        let me = &identity.user;
        let ask = access.ask;
        let on_others = ask.on_others(me);
        let admin = identity.grants.admin;
        let mut elevated = admin;

        // 1. Grants. In a media channel the community decides who connects,
        // not the token's room patterns.
        grants(access, channel.is_some())?;

        // 2. Community keys.
        let action = ask.plugin_action(on_others);
        let mut channel_role = None;
        if let (Some(binding), Some(ctx)) = (channel, access.community) {
            if let Ask::Join { members, role, .. } = ask {
                admission(binding, ctx, admin, members)?;
                // Members connect as interactors with microphone and camera
                // off, and open them with the keys they hold.
                channel_role = Some(role.unwrap_or(Role::Interactor));
            } else if let Some(key) = action.and_then(|a| key_for(a, ask.kind()))
                && !admin
            {
                if !ctx.permissions.contains(key) {
                    return Err(Denial::new(
                        Status::Forbidden,
                        format!("missing permission {key} in channel {}", ctx.channel),
                        Decider::Community,
                    ));
                }
                // The key for acting on others is that action's admin grant.
                elevated |= on_others;
            }
        }

        // 3. Plugins.
        let asked_role = match ask {
            Ask::Join { role, .. } => channel_role.or(role).or_else(|| identity.default_role()),
            Ask::SetRole { role, .. } => Some(role),
            _ => None,
        };
        let target = ask.target();
        if let Some(action) = action {
            let mut check = Check::new(action, access.room, me.as_str());
            check.target = target.map_or("", |t| t.as_str());
            check.role = asked_role;
            check.kind = ask.kind();
            check.muted = matches!(
                ask,
                Ask::Mute { muted: true, .. } | Ask::MuteAll { muted: true, .. }
            );
            check.admin = admin;
            check.permissions = access.community.map_or(0, MemberContext::bits);
            check.attrs = access.attr_lines;
            self.check_plugins(&check)?;
        }

        // 4. The room policy's decide hook.
        let mut join = None;
        let mut data = match ask {
            Ask::Data { payload, .. } => Some(DataTerms::Deliver(payload.clone())),
            _ => None,
        };
        let hook = ask.hook();
        let mut decided_by = Decider::Rules;
        if self.wants(hook) {
            let request = HookRequest {
                user: me.to_string(),
                name: matches!(ask, Ask::Join { .. }).then(|| identity.name.clone()),
                room: matches!(ask, Ask::Create { .. }).then(|| access.room.to_owned()),
                custom_info: match ask {
                    Ask::Create { custom_info } => Some(custom_info.to_owned()),
                    _ => None,
                },
                target: target.map(|t| t.to_string()),
                role: match ask {
                    Ask::Join { .. } | Ask::SetRole { .. } => asked_role,
                    _ => None,
                },
                mode: match ask {
                    Ask::Join { mode, .. } => Some(mode),
                    _ => None,
                },
                kind: match ask {
                    Ask::Mute { kind, .. } | Ask::MuteAll { kind, .. } => Some(kind),
                    _ => None,
                },
                muted: match ask {
                    Ask::Mute { muted, .. } | Ask::MuteAll { muted, .. } => Some(muted),
                    _ => None,
                },
                on: match ask {
                    Ask::ShareScreen { on, .. } => Some(on),
                    _ => None,
                },
                payload: match ask {
                    Ask::Data { payload, .. } => Some(payload.clone()),
                    _ => None,
                },
                attrs: matches!(ask, Ask::Join { .. } | Ask::Create { .. })
                    .then(|| identity.attrs.clone()),
                admin,
                community: match ask {
                    Ask::Create { .. } => None,
                    _ => access.community.cloned(),
                },
            };
            let decision = self.decide(hook, view, request, effects).await?;
            if decision != Decision::Pass {
                decided_by = Decider::Policy {
                    script: self.status().version.clone().unwrap_or_default(),
                    hook: hook.to_owned(),
                };
            }
            match decision {
                Decision::Pass => {}
                Decision::Allow => elevated |= on_others,
                Decision::Deny(refusal) => {
                    let script = self.status().version.clone().unwrap_or_default();
                    return Err(Denial::new(
                        refusal.status,
                        refusal.message,
                        Decider::Policy {
                            script,
                            hook: hook.to_owned(),
                        },
                    ));
                }
                Decision::Join { role, muted } if matches!(ask, Ask::Join { .. }) => {
                    join = Some((role, muted));
                }
                Decision::Payload(payload) if data.is_some() => {
                    data = Some(DataTerms::Deliver(payload));
                }
                Decision::Handled if data.is_some() => data = Some(DataTerms::Handled),
                // A form that belongs to another hook counts as nothing said.
                Decision::Join { .. } | Decision::Payload(_) | Decision::Handled => {}
            }
        }

        // What holds after every step.
        if on_others && !elevated {
            let reason = match ask {
                Ask::Kick { .. } => "kicking needs the admin grant; to go, send `leave`",
                _ => "acting on another member needs the admin grant",
            };
            return Err(Denial::new(Status::Forbidden, reason, Decider::Rules));
        }
        if let Ask::SetRole { role, current, .. } = ask
            && !on_others
            && role != current
            && !identity.may_take_role(role)
        {
            return Err(role_not_allowed(role));
        }
        let join = match ask {
            Ask::Join { role, .. } => Some(join_terms(identity, role, channel_role, join)?),
            _ => None,
        };
        Ok((
            Granted {
                decision: String::new(),
                elevated,
                join,
                data,
            },
            decided_by,
        ))
    }
}

fn role_not_allowed(role: Role) -> Denial {
    Denial::new(
        Status::Forbidden,
        format!("this token may not take the {} role", role.as_str()),
        Decider::Rules,
    )
}

/// The role and mute a join goes ahead with: what the policy decided, else
/// what the channel sets, else what was asked within the token's roles.
fn join_terms(
    identity: &Identity,
    asked: Option<Role>,
    channel_role: Option<Role>,
    decided: Option<(Option<Role>, bool)>,
) -> Result<JoinTerms, Denial> {
    let (policy_role, policy_muted) = decided.unwrap_or((None, false));
    let muted = policy_muted || channel_role.is_some();
    if let Some(role) = policy_role.or(channel_role) {
        return Ok(JoinTerms { role, muted });
    }
    let role = match asked {
        Some(role) if identity.may_take_role(role) => role,
        Some(role) => return Err(role_not_allowed(role)),
        None => identity.default_role().ok_or_else(|| {
            Denial::new(
                Status::Forbidden,
                "this token allows no role",
                Decider::Rules,
            )
        })?,
    };
    Ok(JoinTerms { role, muted })
}

/// Steps 1 and 2 for managing a community server over the REST API: an
/// operator (the admin grant) may do anything; anyone else needs what
/// `server.authorize` asks (the manage key, the rank rule for roles, and
/// granting only keys they hold). The refusal is the community's own
/// (`Refusal`): these changes happen inside the community's edit, which
/// speaks its errors.
pub fn authorize_management(
    identity: &Identity,
    server: &Server,
    action: Manage,
) -> Result<(), Refusal> {
    if identity.grants.admin {
        return Ok(());
    }
    server.authorize(&identity.user, action)
}

/// Whether `identity` may read `server`: members and operators may.
pub fn authorize_read(identity: &Identity, server: &Server) -> Result<(), Refusal> {
    if identity.grants.admin || server.is_member(&identity.user) {
        Ok(())
    } else {
        Err(Refusal::NotAMember)
    }
}

#[cfg(test)]
mod tests;
