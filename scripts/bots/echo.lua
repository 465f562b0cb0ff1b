-- echo: plays back what it hears after a delay, as a sound check. With
-- `user` set it echoes only that member; otherwise everyone it hears.
--
-- Options:
--   delay_ms  how long after hearing it plays back (default 1000)
--   user      echo only this member

local echo = {}

function echo.on_joined()
  bot.echo(tonumber(bot.options.delay_ms) or 1000, bot.options.user)
end

-- A member can ask for silence and for the echo again with data messages
-- {"echo": false} and {"echo": true}.
function echo.on_data(event)
  local payload = event.payload
  if type(payload) == "table" and payload.echo == false then
    bot.stop()
  elseif type(payload) == "table" and payload.echo == true then
    echo.on_joined()
  end
end

return echo
