-- classroom: a teacher speaks; students listen, raise hands, and speak when
-- the teacher lets them.
--
-- Who is a teacher: a token with `attrs.teacher = true`.
-- Options, in the room's custom_info: `max_speakers=N` (default 3), the most
-- students who may be interactors at once.
--
--   * Teachers join as interactors; students always join as audience.
--   * A student raises a hand by sending the data message
--     {"type": "raise_hand"}; it goes to the teachers only, and the room's
--     metadata `hands` lists every raised hand for all to see.
--   * A teacher promotes a student with `set_role` (user = the student,
--     role = "interactor"), up to max_speakers; that lowers the hand.
--     Students cannot promote themselves.
--   * Teachers may mute, unmute-all and demote anyone, and mute everyone.

local policy = {}

local function is_teacher(user)
  local member = room.member(user)
  return member ~= nil and member.attrs.teacher == true
end

local function max_speakers()
  return tonumber(room.custom_info:match("max_speakers=(%d+)")) or 3
end

local function student_speakers()
  local n = 0
  for _, m in ipairs(room.members()) do
    if m.role == "interactor" and m.attrs.teacher ~= true then n = n + 1 end
  end
  return n
end

local function publish_hands()
  local hands = {}
  for user in pairs(room.state.hands or {}) do table.insert(hands, user) end
  table.sort(hands)
  room.set_metadata("hands", array(hands))
end

function policy.can_join(req)
  if req.attrs.teacher == true then
    return { role = "interactor" }
  end
  return { role = "audience" }
end

function policy.can_set_role(req)
  if is_teacher(req.user) then
    if req.role == "interactor" and req.target and not is_teacher(req.target)
        and student_speakers() >= max_speakers() then
      return false, "at most " .. max_speakers() .. " students may speak at once"
    end
    return true
  end
  if req.role == "interactor" then
    return false, "raise your hand; the teacher decides who speaks"
  end
  -- A student may step back to audience on their own.
  return req.target == nil or req.target == req.user
end

function policy.can_mute(req)
  if req.target and req.target ~= req.user then
    return is_teacher(req.user) or false, "only a teacher mutes others"
  end
end

function policy.can_mute_all(req)
  return is_teacher(req.user) or false, "only a teacher mutes everyone"
end

function policy.can_kick(req)
  return is_teacher(req.user) or false, "only a teacher removes students"
end

function policy.can_send(req)
  local payload = req.payload
  if type(payload) == "table" and payload.type == "raise_hand" then
    room.state.hands = room.state.hands or {}
    room.state.hands[req.user] = true
    publish_hands()
    for _, m in ipairs(room.members()) do
      if m.attrs.teacher == true then
        room.send(m.user, { type = "hand_raised", user = req.user })
      end
    end
    return { handled = true }
  end
end

function policy.on_role_changed(event)
  if event.role == "interactor" and room.state.hands and room.state.hands[event.user] then
    room.state.hands[event.user] = nil
    publish_hands()
  end
end

function policy.on_left(event)
  if room.state.hands and room.state.hands[event.user] then
    room.state.hands[event.user] = nil
    publish_hands()
  end
end

return policy
