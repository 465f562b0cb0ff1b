-- capacity: a room with a member limit.
--
-- Options, in the room's custom_info:
--   `seats=N` (default 10): members who may be interactors;
--   `max_members=N` (default 100): members in all;
--   `overflow=audience|deny` (default audience): what happens to a joiner
--   once the seats are taken: join as audience, or be refused.
--
-- The count is of members now in the room, so a seat frees up as soon as
-- its holder leaves or steps down to audience.

local policy = {}

local function option(name, default)
  return tonumber(room.custom_info:match(name .. "=(%d+)")) or default
end

local function overflow()
  return room.custom_info:match("overflow=(%a+)") or "audience"
end

local function interactors()
  local n = 0
  for _, m in ipairs(room.members()) do
    if m.role == "interactor" then n = n + 1 end
  end
  return n
end

function policy.can_join(req)
  local max_members = option("max_members", 100)
  if room.count() >= max_members then
    return { allow = false, code = 403,
             reason = "the room is full (" .. max_members .. " members)" }
  end
  if req.role == "interactor" and interactors() >= option("seats", 10) then
    if overflow() == "deny" then
      return false, "all " .. option("seats", 10) .. " seats are taken"
    end
    return { role = "audience" }
  end
end

function policy.can_set_role(req)
  local target = req.target or req.user
  local member = room.member(target)
  if req.role == "interactor" and member and member.role ~= "interactor"
      and interactors() >= option("seats", 10) then
    return false, "all " .. option("seats", 10) .. " seats are taken"
  end
end

return policy
