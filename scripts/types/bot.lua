---@meta
-- What a bot script sees (docs/bots.md): the global `bot` and the event
-- tables its hooks receive. Shared types (Role, MemberInfo, os, ...) are in
-- shared.lua. A bot has no `room`, `store`, `log`, `array` or `null`: those
-- are room policies'.
--
-- For lua-language-server only: conclave never runs this file.
-- tests/lua_types.rs checks it against the host: every field and function
-- of `bot`, every hook, and the fields of every event a real bot receives.
--
-- A bot script returns a table of hooks; type it to have every hook's
-- argument typed:
--
--   ---@type BotScript
--   local greeter = {}
--
--   function greeter.on_member_joined(member)   -- member: MemberInfo
--     bot.send_data({ text = "Welcome, " .. member.name }, member.user)
--   end
--
--   return greeter

---The bot's view of the room and its hands. Reads see the bot's view as of
---the event being handled. Actions are queued and carried out in order
---after the hook returns; a failure calls `on_error`.
---@class BotApi
---@field options table<string,any> # `--set KEY=VALUE`, or `options` in `[[bots]]`
bot = {}

---A data message with any JSON-convertible `payload`, to everyone else or
---to user `to`.
---@param payload any
---@param to? string
function bot.send_data(payload, to) end

---Mutes (`muted` nil or true) or unmutes `user`'s audio or video; nil
---`user` for the bot itself. Others need an admin token.
---@param user string?
---@param kind MediaKind
---@param muted? boolean
function bot.mute(user, kind, muted) end

---Removes `user` (needs an admin token).
---@param user string
function bot.kick(user) end

---Sets the role of the bot itself (`user` nil) or of another member (admin token).
---@param role Role
---@param user? string
function bot.set_role(role, user) end

---A sine tone for `bot.play`.
---@class ToneSource
---@field tone number # frequency in Hz, 20 to 20000
---@field amplitude? number # 0 to 1, default 0.3

---@class PlayOptions
---@field loop? boolean # play a file again and again (default false)

---Plays an Ogg Opus file from the media directory, or a tone until stopped,
---replacing whatever was playing.
---@param source string|ToneSource
---@param opts? PlayOptions
function bot.play(source, opts) end

---Sends back what it hears from `user` (everyone but itself when nil)
---`delay_ms` later (at most 60000).
---@param delay_ms integer
---@param user? string
function bot.echo(delay_ms, user) end

---Stops playing or echoing.
function bot.stop() end

---Records `target` (a user id, or "mix" for everyone heard, mixed) to
---`file` in the record directory.
---@param target string
---@param file string
function bot.record(target, file) end

---Stops recording `target`, or everything when nil; the file is complete
---from then on.
---@param target? string
function bot.stop_recording(target) end

---Leaves the room; the bot ends.
function bot.leave() end

---Every member (the bot included), in join order.
---@return MemberInfo[]
function bot.members() end

---One member, or nil.
---@param user string
---@return MemberInfo?
function bot.member(user) end

---@class BotMe
---@field user string
---@field name string
---@field room string
---@field role? Role # nil until the bot knows it

---Who the bot is.
---@return BotMe
function bot.me() end

---Whether the bot is sending audio (a file, a tone or an echo).
---@return boolean
function bot.playing() end

---What is being recorded: user ids, and "mix".
---@return string[]
function bot.recording() end

---Calls `f()` once after `ms`; returns the timer's id.
---@param ms integer
---@param f fun()
---@return integer
function bot.after(ms, f) end

---Calls `f()` every `ms` (at least every 10 ms); returns the timer's id.
---@param ms integer
---@param f fun()
---@return integer
function bot.every(ms, f) end

---Stops a timer; nil is ignored.
---@param id integer?
function bot.cancel(id) end

---Milliseconds since the script loaded.
---@return integer
function bot.now() end

---Writes a log line (target `conclave::bot::script`): the values, as
---strings, separated by spaces.
---@param ... any
function bot.log(...) end

-- What the hooks receive (docs/bots.md, "Hooks") --------------------------

---`on_joined(event)`: the bot has joined and its media is up.
---@class BotJoinedEvent
---@field room string

---`on_member_left(event)`: someone left.
---@class MemberLeftEvent
---@field user string
---@field reason LeaveReason

---`on_speaking(event)`: a member (the bot included) started or stopped speaking.
---@class BotSpeakingEvent
---@field user string
---@field speaking boolean
---@field level integer # RFC 6464: 0 (loudest) .. 127 (silent)

---`on_data(event)`: a data message reached the bot.
---@class DataEvent
---@field from string # the sender: a user id, `policy:<name>` or an admin
---@field payload any # the JSON payload as Lua values

---`on_play_ended(event)`: a file played without `loop` reached its end.
---@class PlayEndedEvent

---The API function whose queued action failed.
---@alias BotActionName
---| "send_data"
---| "mute"
---| "kick"
---| "set_role"
---| "play"
---| "echo"
---| "stop"
---| "record"
---| "stop_recording"
---| "leave"

---`on_error(event)`: an action the script queued failed.
---@class BotErrorEvent
---@field action BotActionName
---@field message string # e.g. "the server refused: 403 ..."

---Why the bot is leaving.
---@alias BotLeftReason
---| LeaveReason # the server's reason (kicked, room_closed, ...), or "shutdown" when the bot is stopped
---| "connection_lost"

---`on_left(event)`: the bot is leaving or was removed.
---@class BotLeftEvent
---@field reason BotLeftReason

---The table a bot script returns. Every hook is optional and takes one
---event table.
---@class BotScript
---@field on_joined? fun(event: BotJoinedEvent)
---@field on_member_joined? fun(member: MemberInfo)
---@field on_member_left? fun(event: MemberLeftEvent)
---@field on_role_changed? fun(event: RoleChangedEvent) # the bot's own role too
---@field on_mute_changed? fun(event: MuteChangedEvent)
---@field on_speaking? fun(event: BotSpeakingEvent)
---@field on_data? fun(event: DataEvent)
---@field on_play_ended? fun(event: PlayEndedEvent)
---@field on_error? fun(event: BotErrorEvent)
---@field on_left? fun(event: BotLeftEvent)
