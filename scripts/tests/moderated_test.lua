-- Tests of scripts/moderated.lua, run by `conclave policy test`.

local t = {}

local function meeting(custom_info)
  local room = sim.room { policy = "moderated", custom_info = custom_info }
  local host = room:member { user = "hana", attrs = { host = true } }
  assert_allowed(host:join())
  local guest = room:member { user = "gus" }
  local joined = guest:join()
  assert_allowed(joined)
  return room, host, guest, joined
end

function t.test_guests_join_muted_and_the_host_does_not()
  local room, host, guest, joined = meeting()
  assert_eq(joined.audio_muted, true)
  assert_eq(joined.video_muted, true)
  local members = room:members()
  assert_eq(members[1].user, "hana")
  assert_eq(members[1].audio_muted, false)
end

function t.test_only_the_host_mutes_others()
  local room, host, guest = meeting()
  assert_refused(guest:mute { target = "hana", kind = "audio", muted = true }, 403, "only the host")
  assert_allowed(host:mute { target = "gus", kind = "audio", muted = false })
  local changed = assert_event(guest:events(), "mute_changed", { user = "gus", muted = false })
  assert_eq(changed.operate_by, "hana")
end

function t.test_a_turn_is_warned_then_ended_on_time()
  local room, host, guest = meeting("talk_limit_ms=60000 warn_ms=10000")
  assert_allowed(guest:mute { kind = "audio", muted = false })
  guest:events()
  room:advance(49)
  assert_no_event(guest:events(), "data", nil, "no warning before 50 s")
  room:advance(1)
  assert_event(guest:events(), "data", { payload = { type = "talk_time_warning", seconds_left = 10 } })
  room:advance(10)
  local events = guest:events()
  assert_event(events, "mute_changed", { user = "gus", kind = "audio", muted = true, operate_by = "policy:moderated" })
  assert_event(events, "data", { payload = { type = "talk_time_over" } })
end

function t.test_muting_oneself_ends_the_turn_and_its_timers()
  local room, host, guest = meeting("talk_limit_ms=60000")
  guest:mute { kind = "audio", muted = false }
  room:advance(30)
  guest:mute { kind = "audio", muted = true }
  guest:events()
  room:advance(120)
  assert_no_event(guest:events(), "data", nil, "no warning after the turn ended")
  assert_eq(room:members()[2].audio_muted, true)
end

return t
