---@meta
-- Types that room policies (policy.lua) and bots (bot.lua) share: the values
-- the host hands both kinds of script, and the sandbox's own `os`.
--
-- For lua-language-server only: conclave never runs this file. Room
-- policies are the `*.lua` files directly inside the scripts directory, so
-- nothing under scripts/types/ is ever loaded as one. tests/lua_types.rs
-- checks every name here against what the host really installs.
--
-- The sandbox (docs/scripting.md §9) has `string`, `table`, `math` and
-- `utf8` as lua-language-server describes them; .luarc.json switches off
-- the libraries it does not have (`io`, `debug`, `package`, `coroutine`)
-- and the standard `os`, which the host replaces with the two functions
-- below. These base functions are missing too, although the language
-- server still offers them (its "basic" library cannot be trimmed); calling
-- one fails with "attempt to call a nil value":
--   absent: collectgarbage dofile load loadfile print require xpcall

---A member's role.
---@alias Role
---| "interactor" # may speak, show video and share a screen
---| "audience" # listens and watches; always muted

---The call type a member chose at join.
---@alias Mode
---| "audio" # audio only
---| "video" # audio and video

---Which of a member's media a mute applies to.
---@alias MediaKind
---| "audio"
---| "video"

---Why a member is no longer in a room.
---@alias LeaveReason
---| "normal" # asked to leave
---| "timeout" # connection lost, not back within the grace window
---| "kicked" # removed by an admin, a moderator or a policy
---| "room_closed" # the room closed with the member in it
---| "shutdown" # the server is shutting down
---| "replaced" # the same user joined again elsewhere (never a `member_left`)
---| "permission_revoked" # lost the right to be in a community media channel

---A member as every member sees it (the protocol's member info).
---@class MemberInfo
---@field user string # user id
---@field name string # display name
---@field role Role
---@field mode Mode
---@field audio_muted boolean
---@field video_muted boolean
---@field screen_sharing boolean # sharing a screen now
---@field joined_at integer # Unix milliseconds

---`on_role_changed(event)`: a member's role changed.
---@class RoleChangedEvent
---@field user string
---@field role Role # the new role
---@field operate_by string # who did it: a user id, an admin, or `policy:<name>`

---`on_mute_changed(event)`: a member's audio or video mute state changed.
---@class MuteChangedEvent
---@field user string
---@field kind MediaKind
---@field muted boolean # the new state
---@field operate_by string # who did it: a user id, an admin, or `policy:<name>`

---The sandbox's `os`: these two functions and nothing else.
---@class SandboxOs
os = {}

---Unix time now, in whole seconds. Takes no arguments: unlike the standard
---`os.time`, it does not convert a date table.
---@return integer
function os.time() end

---Seconds since this script's Lua state was created, by the wall clock (not
---the processor time the standard `os.clock` measures).
---@return number
function os.clock() end
