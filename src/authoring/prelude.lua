-- Assertions for policy tests (`conclave policy test`). Each raises an
-- error located at the test's line, which the runner reports.

local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  if depth > 3 then return "{...}" end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    local key = type(k) == "number" and "" or (tostring(k) .. " = ")
    parts[#parts + 1] = key .. show(v[k], depth + 1)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- `fields` is a subset: every key it has must be equal in `v`.
local function has(v, fields)
  if type(v) ~= "table" then return false end
  for k, want in pairs(fields or {}) do
    local got = v[k]
    if type(want) == "table" then
      if not has(got, want) then return false end
    elseif got ~= want then
      return false
    end
  end
  return true
end

local function fail(message, what)
  error((what and (what .. ": ") or "") .. message, 3)
end

show_value = show

function assert_eq(actual, expected, what)
  if not same(actual, expected) then
    fail("expected " .. show(expected) .. ", got " .. show(actual), what)
  end
end

function assert_true(value, what)
  if not value then fail("expected a true value, got " .. show(value), what) end
end

function assert_false(value, what)
  if value then fail("expected false or nil, got " .. show(value), what) end
end

function assert_match(text, pattern, what)
  if type(text) ~= "string" or not string.find(text, pattern) then
    fail("expected text matching " .. show(pattern) .. ", got " .. show(text), what)
  end
end

function assert_allowed(result, what)
  if not result.allowed then
    fail(string.format("expected the request to be allowed; refused %s by %s: %s",
      tostring(result.code), tostring(result.layer), tostring(result.reason)), what)
  end
end

-- `code` and `reason` (a Lua pattern) are optional.
function assert_refused(result, code, reason, what)
  if result.allowed then fail("expected a refusal; the request was allowed", what) end
  if code and result.code ~= code then
    fail(string.format("expected code %d, got %d (%s)", code, result.code, tostring(result.reason)), what)
  end
  if reason and not string.find(result.reason or "", reason) then
    fail("expected a reason matching " .. show(reason) .. ", got " .. show(result.reason), what)
  end
end

-- The first event of `type` in `events` whose fields include `fields`.
function find_event(events, type_, fields)
  for _, e in ipairs(events) do
    if e.type == type_ and has(e, fields) then return e end
  end
  return nil
end

function assert_event(events, type_, fields, what)
  local e = find_event(events, type_, fields)
  if not e then
    local seen = {}
    for _, ev in ipairs(events) do seen[#seen + 1] = show(ev) end
    fail("expected a " .. type_ .. " event with " .. show(fields or {}) ..
      "; received " .. (#seen == 0 and "nothing" or table.concat(seen, "; ")), what)
  end
  return e
end

function assert_no_event(events, type_, fields, what)
  local e = find_event(events, type_, fields)
  if e then fail("expected no " .. type_ .. " event, got " .. show(e), what) end
end
