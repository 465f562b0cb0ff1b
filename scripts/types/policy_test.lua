---@meta
-- What a policy test file sees (`conclave policy test`, docs/scripting.md
-- "Testing a policy"): `sim`, the simulated rooms and members it makes, and
-- the assertions. For lua-language-server only; tests/authoring.rs checks
-- that every method and assertion the runner installs is declared here.

---The answer to a member's request.
---@class SimResult
---@field allowed boolean
---@field code? integer # the status of a refusal
---@field reason? string # what the member was told
---@field decision? string # the decision-log id of a refusal
---@field layer? "ban"|"grants"|"community"|"plugin"|"policy"|"rules"|"room" # who refused
---@field hook? string # the decide hook, when a policy refused
---@field plugin? string # the plugin, when one refused
---@field role? Role # after a join: the role it got
---@field audio_muted? boolean # after a join
---@field video_muted? boolean # after a join
---@field members? integer # after a join: members in the room
---@field resumed? boolean # after a join: it took over a membership

---How a member is made: who, what their token grants, its attrs.
---@class SimMemberSpec
---@field user string
---@field name? string # defaults to `user`
---@field grants? { create?: boolean, rooms?: string[], roles?: Role[], admin?: boolean } # default: any room, both roles
---@field attrs? table<string,any> # the token's attrs

---A member: a connection without a socket.
---@class SimMember
local SimMember = {}
---@param opts? { mode?: Mode, role?: Role }
---@return SimResult
function SimMember:join(opts) end
---@return SimResult
function SimMember:leave() end
---The connection drops; the membership waits out the reconnect grace.
function SimMember:disconnect() end
---@param opts { kind?: MediaKind, muted?: boolean, target?: string } # default: audio, muted
---@return SimResult
function SimMember:mute(opts) end
---@param opts { kind?: MediaKind, muted?: boolean }
---@return SimResult
function SimMember:mute_all(opts) end
---@param opts { role: Role, target?: string }
---@return SimResult
function SimMember:set_role(opts) end
---@param opts { on?: boolean, target?: string }
---@return SimResult
function SimMember:share(opts) end
---@param opts { payload: any, to?: string }
---@return SimResult
function SimMember:send(opts) end
---@param opts { target: string, ban?: { seconds?: integer, reason?: string } }
---@return SimResult
function SimMember:kick(opts) end
---Everything the room sent this member since the last call (only events of
---`type` when given), as protocol messages: `{type = "member_joined", ...}`.
---@param type? string
---@return table[]
function SimMember:events(type) end
---@return string
function SimMember:user() end

---A simulated room: the real room, policy runtime and limits, no network,
---a clock that moves only when the test moves it.
---@class SimRoom
local SimRoom = {}
---@param spec SimMemberSpec
---@return SimMember
function SimRoom:member(spec) end
---Moves the room's clock; timers and grace windows due on the way fire in order.
---@param seconds number
function SimRoom:advance(seconds) end
---Another version of the room's policy, as if saved over its file.
---@param file string # relative to the scripts directory, or absolute
function SimRoom:reload(file) end
---@return table<string,any>
function SimRoom:metadata() end
---@return MemberInfo[]
function SimRoom:members() end
---The room's policy status (version, errors, quarantined).
---@return table
function SimRoom:policy() end
---The policy's `room.state`, as JSON.
---@return table
function SimRoom:state() end
---A key of the policy's store.
---@param key string
---@return any
function SimRoom:store(key) end
---The room's decision log.
---@return table[]
function SimRoom:decisions() end
function SimRoom:close() end
---@return boolean
function SimRoom:is_open() end

---@class Sim
sim = {}
---Opens a room. With `creator`, `can_create` is asked: a refused create
---answers `nil` and the refusal.
---@param spec? { policy?: string, name?: string, custom_info?: string, creator?: SimMemberSpec }
---@return SimRoom|nil room
---@return SimResult result
function sim.room(spec) end

---@param actual any
---@param expected any
---@param what? string
function assert_eq(actual, expected, what) end
---@param value any
---@param what? string
function assert_true(value, what) end
---@param value any
---@param what? string
function assert_false(value, what) end
---@param text string
---@param pattern string # a Lua pattern
---@param what? string
function assert_match(text, pattern, what) end
---@param result SimResult
---@param what? string
function assert_allowed(result, what) end
---@param result SimResult
---@param code? integer
---@param reason? string # a Lua pattern
---@param what? string
function assert_refused(result, code, reason, what) end
---@param events table[]
---@param type string
---@param fields? table # a subset the event must match
---@return table|nil
function find_event(events, type, fields) end
---@param events table[]
---@param type string
---@param fields? table
---@param what? string
---@return table
function assert_event(events, type, fields, what) end
---@param events table[]
---@param type string
---@param fields? table
---@param what? string
function assert_no_event(events, type, fields, what) end
---A value as text, for messages.
---@param value any
---@return string
function show_value(value) end
