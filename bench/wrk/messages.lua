-- wrk script: POST one small Anthropic Messages request and count answers that are not 2xx.
--
--   wrk -t2 -c64 -d10s --latency -s bench/wrk/messages.lua http://HOST:PORT/v1/messages [-- MODEL [stream]]
--
-- The same request as chat.lua in the Anthropic dialect: the same system prompt (top-level
-- "system") and user message, "max_tokens" 64, "temperature" 0, with the headers the Anthropic
-- SDK sends ("anthropic-version", "x-api-key"). "stream" after the model adds "stream":true.
-- Everything but the request is chat.lua's (loaded first): the request is built once per thread
-- and every answer is handed to Lua so that non-2xx answers are counted exactly.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "chat.lua")

local request = chat_request

function init(args)
  local model = args[1] or "auto"
  local json_string = request.json_string
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["anthropic-version"] = "2023-06-01"
  wrk.headers["x-api-key"] = "bench-key"
  wrk.body = '{"model":' .. json_string(model)
    .. ',"system":' .. json_string(request.system)
    .. ',"messages":[{"role":"user","content":' .. json_string(request.user)
    .. '}],"max_tokens":64,"temperature":0'
    .. (args[2] == "stream" and ',"stream":true}' or '}')
  non2xx = 0
end
