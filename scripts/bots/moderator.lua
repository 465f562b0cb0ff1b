-- moderator: mutes anyone who speaks longer than a limit without a pause,
-- after warning them first. Needs a token that may act on others (admin).
--
-- Options:
--   limit_ms  how long one may speak without a pause (default 60000)
--   warn_ms   how long before the limit the warning comes (default 10000,
--             at most half the limit)

local moderator = {}

local turns = {}   -- user -> { warn = timer, mute = timer }

local function limits()
  local limit = tonumber(bot.options.limit_ms) or 60000
  local warn = math.min(tonumber(bot.options.warn_ms) or 10000, limit // 2)
  return limit, warn
end

local function end_turn(user)
  local turn = turns[user]
  if turn then
    bot.cancel(turn.warn)
    bot.cancel(turn.mute)
    turns[user] = nil
  end
end

function moderator.on_speaking(event)
  local user = event.user
  if user == bot.me().user then
    return
  end
  if not event.speaking then
    end_turn(user)
    return
  end
  if turns[user] then
    return
  end
  local limit, warn = limits()
  turns[user] = {
    warn = bot.after(limit - warn, function()
      bot.send_data({
        kind = "warning",
        text = "You will be muted in " .. math.ceil(warn / 1000) .. " s unless you pause.",
      }, user)
    end),
    mute = bot.after(limit, function()
      turns[user] = nil
      bot.mute(user, "audio", true)
      bot.send_data({ kind = "muted", text = "You spoke past the limit and were muted." }, user)
    end),
  }
end

function moderator.on_member_left(event)
  end_turn(event.user)
end

function moderator.on_error(event)
  bot.log("moderator:", event.action, "failed:", event.message)
end

return moderator
