-- player: plays an Ogg Opus file in a loop, and falls silent while anyone
-- else speaks; it starts again once the room has been quiet for a moment.
--
-- Options:
--   file      the Ogg Opus file, inside the bot's media directory
--             (default "music.ogg")
--   tone      play a sine tone of this many Hz instead of a file
--   quiet_ms  how long the room must be quiet before playing again
--             (default 1000)
--   yield     false to keep playing whoever speaks (default true); two
--             players that both yield silence each other

local player = {}

local talking = {}    -- users other than the bot who speak now
local resume = nil    -- the timer that starts playing again

local function play()
  if bot.options.tone then
    bot.play({ tone = tonumber(bot.options.tone) })
  else
    bot.play(bot.options.file or "music.ogg", { loop = true })
  end
end

local function anyone_talking()
  return next(talking) ~= nil
end

function player.on_joined()
  play()
end

function player.on_speaking(event)
  local user = event.user
  if user == bot.me().user or bot.options.yield == false then
    return
  end
  talking[user] = event.speaking or nil
  if anyone_talking() then
    bot.cancel(resume)
    resume = nil
    bot.stop()
  elseif resume == nil and not bot.playing() then
    resume = bot.after(bot.options.quiet_ms or 1000, function()
      resume = nil
      if not anyone_talking() then
        play()
      end
    end)
  end
end

function player.on_member_left(event)
  player.on_speaking({ user = event.user, speaking = false })
end

function player.on_error(event)
  bot.log("player:", event.action, "failed:", event.message)
end

return player
