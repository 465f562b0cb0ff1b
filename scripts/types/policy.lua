---@meta
-- What a room policy sees (docs/scripting.md): the globals `room`, `store`,
-- `log`, `array` and `null`, the tables its hooks receive, and what decide
-- hooks may answer. Shared types (Role, MemberInfo, os, ...) are in
-- shared.lua.
--
-- For lua-language-server only: conclave never runs this file.
-- tests/lua_types.rs checks it against the host: every global, every field
-- and function of `room`, `store` and `log`, every hook, and the fields of
-- every request and event table a real server hands a probe policy.
--
-- A policy is a chunk that returns a table of hooks. Hooks are read from
-- that table only (a global function named like a hook is never called), so
-- type the table to have every hook's argument typed:
--
--   ---@type Policy
--   local policy = {}
--
--   function policy.can_join(req)   -- req: CanJoinRequest
--     if room.count() >= 10 then return false, "the room is full" end
--   end
--
--   return policy
--
-- A name the class does not declare (a misspelt hook) is then reported as
-- an injected field. Without the annotation, `---@param req CanJoinRequest`
-- above a hook types its argument just as well.

---A member table: the member info plus the token's `attrs`.
---@class Member: MemberInfo
---@field attrs table<string,any> # the member's token `attrs` (an empty table if none)

---The room the policy runs in (docs/scripting.md §7). Reads come from a
---snapshot taken for the hook call; actions are queued and applied, in call
---order, after the hook returns, as the actor `policy:<name>`. At the chunk's
---top level the reads see the room (empty while a new room loads) and the
---actions raise an error.
---@class RoomApi
---@field name string # the room's name
---@field channel_id integer # this room instance's id
---@field custom_info string # the `custom_info` given at create: per-room options
---@field state table<any,any> # scratch space of this room; survives reloads, gone when the room closes
room = {}

---Every member, in join order (the cached array while the room is unchanged:
---do not modify it).
---@return Member[]
function room.members() end

---The member table of `user`, or nil.
---@param user string
---@return Member?
function room.member(user) end

---Number of members, including those in their reconnect grace window.
---@return integer
function room.count() end

---The room's metadata (key to value).
---@return table<string,any>
function room.metadata() end

---Removes `user` (`disconnected` with reason `kicked`); they may join again at once.
---@param user string
function room.kick(user) end

---Keeps `user` out of this room, for `seconds` (1 or more, kept across
---restarts) or, with nil, for as long as the room is open; removes them if
---they are in. Joins are refused with 403 and `reason`.
---@param user string
---@param seconds? number
---@param reason? string
function room.ban(user, seconds, reason) end

---Mutes (`muted` nil or true) or unmutes (false) `user`'s audio or video.
---@param user string
---@param kind MediaKind
---@param muted? boolean
function room.mute(user, kind, muted) end

---Mutes (`muted` nil or true) or unmutes (false) every member's audio or
---video; unmuting skips audience members and video of audio-mode members.
---@param kind MediaKind
---@param muted? boolean
function room.mute_all(kind, muted) end

---Sets `user`'s role, whatever their token's `roles`; audience also mutes.
---@param user string
---@param role Role
function room.set_role(user, role) end

---A `data` event from `policy:<name>` to member `to`, or to every member
---when `to` is nil. `payload` is any JSON-convertible value.
---@param to string?
---@param payload any
function room.send(to, payload) end

---Sets a metadata key (nil or `null` removes it); every member gets
---`metadata_changed`.
---@param key string
---@param value any
function room.set_metadata(key, value) end

---Closes the room: members get `disconnected` (`room_closed`), then
---`on_closing("closed_by_policy")` runs.
function room.close() end

---Calls `on_timer(name)` once, `ms` milliseconds from now (0 is allowed).
---Setting a name again replaces that timer.
---@param ms integer
---@param name string
function room.after(ms, name) end

---Calls `on_timer(name)` every `ms` milliseconds until cancelled; an
---interval under 10 ms runs every 10 ms.
---@param ms integer
---@param name string
function room.every(ms, name) end

---Cancels timer `name`, if any.
---@param name string
function room.cancel(name) end

---A persistent key-value store shared by every room running this policy
---(namespaced by policy name), in the server's database. Only inside hooks:
---at the chunk's top level it is not available while the file is validated.
---@class PolicyStore
store = {}

---The value stored under `key`, or nil. A stored JSON null reads as `null`.
---@param key string
---@return any
function store.get(key) end

---Stores any JSON-convertible value under `key`; nil deletes the key.
---Takes effect at once, even in a hook that later fails.
---@param key string
---@param value any
function store.set(key, value) end

---Lines in the server log, tagged with `script=<name>`. (`print` does not exist.)
---@class PolicyLog
log = {}

---@param msg string
function log.error(msg) end

---@param msg string
function log.warn(msg) end

---@param msg string
function log.info(msg) end

---@param msg string
function log.debug(msg) end

---Marks table `t` as a JSON array and returns it; `array()` returns a new
---empty one. Needed only for tables that may be empty, which otherwise go
---out as the JSON object `{}`.
---@generic T: table
---@param t? T
---@return T
function array(t) end

---JSON null as scripts see it: a sentinel that is not nil (it is truthy;
---test with `v == null`). A table field set to `null` goes out as JSON null.
---@class JsonNull

---@type JsonNull
null = nil

-- Decide hooks: what they receive ----------------------------------------

---Fields every decide hook's request has.
---@class DecideRequest
---@field user string # who acts (user id)
---@field admin boolean # the actor's token has the admin grant

---A request from a member (every decide hook but `can_create`).
---@class MemberRequest: DecideRequest
---@field community? CommunityStanding # the member's standing, in a community media channel's room only

---A member's standing in a community media channel.
---@class CommunityStanding
---@field server integer # the community server's id
---@field channel integer # the media channel's id
---@field owner boolean # owns the server
---@field visible boolean # may see the channel
---@field permissions string[] # the keys allowed, e.g. "RTCChannelConnect"
---@field roles CommunityRole[] # custom server roles held, highest rank first (the everyone role is not listed)

---@class CommunityRole
---@field id integer
---@field name string
---@field priority integer # lower is higher ranked

---`can_create(req)`: a `create` over the protocol (not `POST /api/rooms`).
---Runs in the new room's state, before the room exists; actions are dropped.
---@class CanCreateRequest: DecideRequest
---@field room string # the room being created
---@field custom_info string # the create request's `custom_info`
---@field attrs table<string,any> # the token's `attrs` (an empty table if none)

---`can_join(req)`: a join by a user who is not yet a member.
---@class CanJoinRequest: MemberRequest
---@field name string # display name from the token
---@field role? Role # the role asked for, else the first the token allows; nil if it allows none
---@field mode Mode
---@field attrs table<string,any> # the token's `attrs` (an empty table if none)

---`can_set_role(req)`: a `set_role`, on oneself or on another member.
---@class CanSetRoleRequest: MemberRequest
---@field target? string # the member the request names (nil when it named nobody)
---@field role Role # the role asked for

---`can_mute(req)`: muting or unmuting one's own or another member's media.
---@class CanMuteRequest: MemberRequest
---@field target? string # the member the request names (nil when it named nobody)
---@field kind MediaKind
---@field muted boolean # true to mute, false to unmute

---`can_mute_all(req)`: muting or unmuting everyone else's audio or video.
---@class CanMuteAllRequest: MemberRequest
---@field kind MediaKind
---@field muted boolean # true to mute, false to unmute

---`can_kick(req)`: removing a member.
---@class CanKickRequest: MemberRequest
---@field target string # the member to remove

---`can_share_screen(req)`: starting or stopping one's own share, or
---stopping another member's.
---@class CanShareScreenRequest: MemberRequest
---@field target? string # the member the request names (nil when it named nobody)
---@field on boolean # true to start sharing, false to stop

---`can_send(req)`: a `data` message from a member.
---@class CanSendRequest: MemberRequest
---@field target? string # the `to` member; nil for a message to everyone
---@field payload any # the message's payload, JSON as Lua values

-- Decide hooks: what they answer (docs/scripting.md §5) -------------------

---A status code a refusal may carry; any other code, or 200, becomes 403.
---@alias StatusCode 101|400|401|403|404|417|429|500|503|11001|11002|11003

---Refused, with a status code and message of the hook's choosing.
---@class Refusal
---@field allow false
---@field reason? string # default: refused by the room policy `<name>`
---@field code? StatusCode # default 403

---Allowed, explicitly: the same as `true` (`{ allow = true }`, `{}`).
---@class Allowance
---@field allow? true

---`can_join` only: join with this role and/or with audio and video muted.
---A role the policy chooses is not checked against the token's `roles`.
---@class JoinTerms
---@field role? Role
---@field muted? boolean

---`can_send` only: deliver `payload` instead of what was sent.
---@class Rewrite
---@field payload any

---`can_send` only: the script dealt with the message; the sender gets 200
---and nothing is delivered.
---@class Handled
---@field handled true

---What any decide hook may answer. A table is read in this order:
---`allow = false`, then `handled = true`, then `role`/`muted`, then
---`payload`, else it allows; a form that belongs to another hook counts as
---nil. A number, string or function is a script error.
---@alias Decision
---| nil # no objection: later steps decide
---| true # explicit allow; on an action aimed at another member it also grants it
---| false # refused with 403; a second return value is the message
---| Refusal
---| Allowance

---What `can_join` may answer.
---@alias JoinDecision Decision|JoinTerms

---What `can_send` may answer.
---@alias SendDecision Decision|Rewrite|Handled

---Every form a decide hook may return.
---@alias DecideResult Decision|JoinTerms|Rewrite|Handled

-- React hooks: what they receive (docs/scripting.md §6) -------------------

---`on_left(event)`: a member left (not called for the members of a room
---that closes).
---@class LeftEvent
---@field user string
---@field reason LeaveReason # "normal", "timeout", "kicked", ...

---`on_screen_share_changed(event)`: a member started or stopped sharing.
---@class ScreenShareChangedEvent
---@field user string
---@field sharing boolean
---@field operate_by string # who did it: a user id, an admin, or `policy:<name>`

---`on_speaking(event)`: the loudest level of a member who spoke in the last
---volume interval.
---@class SpeakingEvent
---@field user string
---@field level integer # RFC 6464: 0 (loudest) .. 127 (silent)

---Why a room closed.
---@alias CloseReason
---| "all_left"
---| "expired" # created, nobody joined in time
---| "closed" # the admin API
---| "closed_by_policy" # room.close()
---| "shutdown"

-- The hooks ---------------------------------------------------------------

---The table a policy's chunk returns. Every hook is optional. Decide hooks
---(`can_*`) run before a member's request is applied and may return a
---message as a second value after `false`; react hooks (`on_*`) run after
---something happened, and what they return is ignored.
---@class Policy
---@field can_create? fun(req: CanCreateRequest): Decision, string?
---@field can_join? fun(req: CanJoinRequest): JoinDecision, string?
---@field can_set_role? fun(req: CanSetRoleRequest): Decision, string?
---@field can_mute? fun(req: CanMuteRequest): Decision, string?
---@field can_mute_all? fun(req: CanMuteAllRequest): Decision, string?
---@field can_kick? fun(req: CanKickRequest): Decision, string?
---@field can_share_screen? fun(req: CanShareScreenRequest): Decision, string?
---@field can_send? fun(req: CanSendRequest): SendDecision, string?
---@field on_joined? fun(member: Member) # a new member joined (not on resume)
---@field on_left? fun(event: LeftEvent)
---@field on_mute_changed? fun(event: MuteChangedEvent)
---@field on_role_changed? fun(event: RoleChangedEvent)
---@field on_screen_share_changed? fun(event: ScreenShareChangedEvent)
---@field on_closing? fun(reason: CloseReason) # members are gone already
---@field on_timer? fun(name: string) # a timer set with room.after / room.every fired
---@field on_reload? fun(previous: string) # switched to a new version; `previous` is the old `name@hash`
---@field on_speaking? fun(event: SpeakingEvent)
