-- wrk script: chat.lua's chat completion, each connection waiting PACE milliseconds before each of
-- its requests, for latency at an offered load below saturation (a few connections, each paced):
--
--   wrk -t2 -c8 -d10s --latency -s bench/wrk/chat_paced.lua URL/v1/chat/completions -- MODEL PACE
--
-- The pause is wrk's delay() hook: the request goes out PACE ms after the previous answer on its
-- connection, so the rate is about connections / (PACE + latency) and latency is measured from the
-- moment the request is sent.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "chat.lua")

local chat_init = init
local pace = 0

function init(args)
  pace = tonumber(args[2]) or 0
  chat_init({ args[1] })
end

function delay()
  return pace
end
