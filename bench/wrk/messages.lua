-- wrk script: POST one small Anthropic Messages request and count answers that are not 2xx.
--
--   wrk -t2 -c64 -d10s --latency -s bench/wrk/messages.lua http://HOST:PORT/v1/messages [-- MODEL [stream]]
--
-- The same request as chat.lua in the Anthropic dialect: the same system prompt (top-level
-- "system") and user message, "max_tokens" 64, "temperature" 0, with the headers the Anthropic
-- SDK sends ("anthropic-version", "x-api-key"). "stream" after the model adds "stream":true.
-- As in chat.lua, the request is built once per thread and every answer is handed to Lua so
-- that non-2xx answers are counted exactly.

local system = "You are a concise assistant for an online bookshop. Answer in at most two sentences "
  .. "and never invent prices or stock levels."
local user = "A customer writes: 'I ordered The Left Hand of Darkness last Tuesday and the tracking "
  .. "page still says label created. Can you tell me what that means and when it will arrive?' "
  .. "Summarise what they want in one line."

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local model = args[1] or "auto"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["anthropic-version"] = "2023-06-01"
  wrk.headers["x-api-key"] = "bench-key"
  wrk.body = '{"model":' .. json_string(model)
    .. ',"system":' .. json_string(system)
    .. ',"messages":[{"role":"user","content":' .. json_string(user)
    .. '}],"max_tokens":64,"temperature":0'
    .. (args[2] == "stream" and ',"stream":true}' or '}')
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("non2xx") or 0)
  end
  io.write(string.format("non-2xx: %d\n", total))
end
