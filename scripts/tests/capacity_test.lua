-- Tests of scripts/capacity.lua, run by `conclave policy test`.

local t = {}

local function fill(room, n, role)
  local members = {}
  for i = 1, n do
    local m = room:member { user = "u" .. i }
    assert_allowed(m:join { role = role })
    members[i] = m
  end
  return members
end

function t.test_joiners_past_the_seats_become_audience()
  local room = sim.room { policy = "capacity", custom_info = "seats=2" }
  fill(room, 2, "interactor")
  local late = room:member { user = "late" }
  local joined = late:join { role = "interactor" }
  assert_allowed(joined)
  assert_eq(joined.role, "audience")
end

function t.test_overflow_deny_refuses_instead()
  local room = sim.room { policy = "capacity", custom_info = "seats=1 overflow=deny" }
  fill(room, 1, "interactor")
  local refused = room:member { user = "late" }:join { role = "interactor" }
  assert_refused(refused, 403, "all 1 seats are taken")
  assert_eq(refused.hook, "can_join")
  -- Asking for audience is fine.
  assert_allowed(room:member { user = "listener" }:join { role = "audience" })
end

function t.test_a_full_room_refuses_everyone()
  local room = sim.room { policy = "capacity", custom_info = "max_members=2" }
  fill(room, 2, "audience")
  assert_refused(room:member { user = "third" }:join(), 403, "the room is full %(2 members%)")
end

function t.test_a_seat_frees_when_its_holder_steps_down()
  local room = sim.room { policy = "capacity", custom_info = "seats=1" }
  local holder = fill(room, 1, "interactor")[1]
  local waiting = room:member { user = "waiting" }
  waiting:join { role = "audience" }
  assert_refused(waiting:set_role { role = "interactor" }, 403, "seats are taken")
  assert_allowed(holder:set_role { role = "audience" })
  assert_allowed(waiting:set_role { role = "interactor" })
end

return t
