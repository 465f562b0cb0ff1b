-- default: the open room of a NIM multi-person call.
--
-- Anyone whose token covers the room joins, as the role they ask for (or
-- the first their token allows); members switch roles and mute themselves
-- freely; only admins act on others. Everything here is what conclave does
-- without a policy too: this script only adds a log line per join and leave,
-- and is the place to start a policy of your own.

local policy = {}

function policy.on_joined(member)
  log.info(member.user .. " joined " .. room.name .. " as " .. member.role)
end

function policy.on_left(event)
  log.info(event.user .. " left " .. room.name .. " (" .. event.reason .. ")")
end

return policy
