-- recorder: records every interactor to its own Ogg Opus file,
-- `<user>.ogg` in the bot's record directory (`--record-dir`), from the
-- moment they are an interactor until they leave or become audience.
-- The bot joins as audience: it listens and is never heard.
--
-- Options:
--   mix  also record everyone heard, mixed, into `mix.ogg` (default false)

local recorder = {}

local function me()
  return bot.me().user
end

local function start(member)
  if member.user ~= me() and member.role == "interactor" then
    bot.record(member.user, member.user .. ".ogg")
  end
end

function recorder.on_joined()
  for _, member in ipairs(bot.members()) do
    start(member)
  end
  if bot.options.mix then
    bot.record("mix", "mix.ogg")
  end
end

recorder.on_member_joined = start

function recorder.on_role_changed(event)
  if event.role == "interactor" then
    start(bot.member(event.user))
  else
    bot.stop_recording(event.user)
  end
end

function recorder.on_member_left(event)
  bot.stop_recording(event.user)
end

function recorder.on_error(event)
  bot.log("recorder:", event.action, "failed:", event.message)
end

return recorder
