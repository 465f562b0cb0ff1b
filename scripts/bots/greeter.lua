-- greeter: welcomes each member who joins, by name, with a data message
-- sent to that member alone.
--
-- Options (`--set key=value`):
--   greeting  the words before the name (default "Welcome")

local greeter = {}

function greeter.on_member_joined(member)
  local greeting = bot.options.greeting or "Welcome"
  bot.send_data({ kind = "greeting", text = greeting .. ", " .. member.name .. "!" }, member.user)
end

return greeter
