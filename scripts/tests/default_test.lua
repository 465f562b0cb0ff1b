-- Tests of scripts/default.lua, run by `conclave policy test`: the open
-- room, where the token alone decides.

local t = {}

function t.test_anyone_joins_as_the_role_they_ask()
  local room = sim.room { policy = "default" }
  local a = room:member { user = "a" }
  local joined = a:join { role = "audience" }
  assert_allowed(joined)
  assert_eq(joined.role, "audience")
  assert_allowed(a:set_role { role = "interactor" })
end

function t.test_only_admins_act_on_others()
  local room = sim.room { policy = "default" }
  local a = room:member { user = "a" }
  local b = room:member { user = "b" }
  local admin = room:member { user = "op", grants = { admin = true } }
  a:join()
  b:join()
  admin:join()
  local refused = a:mute { target = "b", kind = "audio", muted = true }
  assert_refused(refused, 403, "needs the admin grant")
  assert_eq(refused.layer, "rules")
  assert_allowed(admin:mute { target = "b", kind = "audio", muted = true })
end

function t.test_a_token_limited_to_a_role_is_held_to_it()
  local room = sim.room { policy = "default" }
  local listener = room:member { user = "l", grants = { roles = { "audience" } } }
  assert_refused(listener:join { role = "interactor" }, 403, "may not take the interactor role")
  assert_allowed(listener:join())
end

function t.test_an_empty_room_closes_after_five_minutes()
  local room = sim.room { policy = "default" }
  room:advance(299)
  assert_true(room:is_open())
  room:advance(2)
  assert_false(room:is_open(), "nobody joined in 300 s")
end

return t
