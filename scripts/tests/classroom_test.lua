-- Tests of scripts/classroom.lua, run by `conclave policy test`.

local t = {}

local function classroom(custom_info)
  local room = sim.room { policy = "classroom", name = "math", custom_info = custom_info }
  local teacher = room:member { user = "tina", attrs = { teacher = true } }
  assert_allowed(teacher:join())
  return room, teacher
end

function t.test_teachers_speak_and_students_listen()
  local room, teacher = classroom()
  local student = room:member { user = "sam" }
  local joined = student:join { role = "interactor" }
  assert_allowed(joined)
  assert_eq(joined.role, "audience", "a student asking to speak joins as audience")
  assert_event(teacher:events(), "member_joined", { member = { user = "sam", role = "audience" } })
end

function t.test_students_cannot_promote_themselves()
  local room = classroom()
  local student = room:member { user = "sam" }
  student:join()
  local asked = student:set_role { role = "interactor" }
  assert_refused(asked, 403, "raise your hand")
  assert_eq(asked.layer, "policy")
  assert_eq(asked.hook, "can_set_role")
end

function t.test_a_raised_hand_reaches_only_teachers_and_the_metadata()
  local room, teacher = classroom()
  local sam = room:member { user = "sam" }
  local ann = room:member { user = "ann" }
  sam:join()
  ann:join()
  teacher:events()
  ann:events()
  assert_allowed(sam:send { payload = { type = "raise_hand" } })
  local told = assert_event(teacher:events(), "data", { payload = { type = "hand_raised", user = "sam" } })
  assert_eq(told.from, "policy:classroom")
  assert_no_event(ann:events(), "data", nil, "another student is not told")
  assert_eq(room:metadata().hands, { "sam" })
  assert_true(room:state().hands.sam, "room.state remembers the hand")
end

function t.test_promotion_lowers_the_hand_and_respects_max_speakers()
  local room, teacher = classroom("max_speakers=1")
  local sam = room:member { user = "sam" }
  local ann = room:member { user = "ann" }
  sam:join()
  ann:join()
  sam:send { payload = { type = "raise_hand" } }
  assert_allowed(teacher:set_role { target = "sam", role = "interactor" })
  assert_eq(room:metadata().hands, {}, "promoting sam lowered the hand")
  local second = teacher:set_role { target = "ann", role = "interactor" }
  assert_refused(second, 403, "at most 1 students may speak")
  local changed = assert_event(sam:events("role_changed"), "role_changed", { user = "sam" })
  assert_eq(changed.operate_by, "tina")
end

function t.test_only_teachers_mute_others_and_kick()
  local room, teacher = classroom()
  local sam = room:member { user = "sam" }
  local ann = room:member { user = "ann" }
  sam:join()
  ann:join()
  assert_refused(sam:mute { target = "ann", kind = "audio", muted = true }, 403, "only a teacher mutes others")
  assert_refused(sam:kick { target = "ann" }, 403, "only a teacher removes students")
  assert_allowed(teacher:kick { target = "ann" })
  assert_event(sam:events(), "member_left", { user = "ann", reason = "kicked" })
end

function t.test_a_hand_is_lowered_when_the_student_leaves()
  local room = classroom()
  local sam = room:member { user = "sam" }
  sam:join()
  sam:send { payload = { type = "raise_hand" } }
  assert_eq(room:metadata().hands, { "sam" })
  sam:leave()
  assert_eq(room:metadata().hands, {})
end

return t
