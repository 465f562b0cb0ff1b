-- moderated: a host runs the meeting; everyone else joins muted and speaks
-- for a limited time per turn.
--
-- Who is a host: a token with `attrs.host = true`.
-- Options, in the room's custom_info: `talk_limit_ms=N` (default 120000),
-- how long a member may stay unmuted in one turn; a warning is sent
-- `warn_ms` (default 10000, at most half the limit) before the end.
--
--   * Members other than hosts join with audio and video muted.
--   * Only a host mutes, unmutes or removes others.
--   * When a member unmutes, a timer starts; at the limit the member is
--     muted by the policy and told why. Muting oneself ends the turn.

local policy = {}

local function is_host(user)
  local member = room.member(user)
  return member ~= nil and member.attrs.host == true
end

local function option(name, default)
  return tonumber(room.custom_info:match(name .. "=(%d+)")) or default
end

local function limits()
  local limit = option("talk_limit_ms", 120000)
  local warn = math.min(option("warn_ms", 10000), limit // 2)
  return limit, warn
end

function policy.can_join(req)
  if req.attrs.host ~= true then
    return { muted = true }
  end
end

function policy.can_mute(req)
  if req.target and req.target ~= req.user then
    return is_host(req.user) or false, "only the host mutes or unmutes others"
  end
end

function policy.can_mute_all(req)
  return is_host(req.user) or false, "only the host mutes everyone"
end

function policy.can_kick(req)
  return is_host(req.user) or false, "only the host removes members"
end

function policy.on_mute_changed(event)
  if event.kind ~= "audio" or is_host(event.user) then return end
  if event.muted then
    room.cancel("warn:" .. event.user)
    room.cancel("end:" .. event.user)
  else
    local limit, warn = limits()
    room.after(limit - warn, "warn:" .. event.user)
    room.after(limit, "end:" .. event.user)
  end
end

function policy.on_timer(name)
  local kind, user = name:match("^(%a+):(.+)$")
  if kind == "warn" then
    local _, warn = limits()
    room.send(user, { type = "talk_time_warning", seconds_left = warn / 1000 })
  elseif kind == "end" then
    room.mute(user, "audio")
    room.send(user, { type = "talk_time_over" })
  end
end

function policy.on_left(event)
  room.cancel("warn:" .. event.user)
  room.cancel("end:" .. event.user)
end

return policy
