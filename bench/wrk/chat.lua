-- wrk script: POST one small, realistic chat completion and count answers that are not 2xx.
--
--   wrk -t2 -c64 -d10s --latency -s bench/wrk/chat.lua http://HOST:PORT/v1/chat/completions [-- MODEL [stream]]
--
-- MODEL defaults to "auto" (tiermux picks the tier). Point wrk straight at a backend with the
-- backend's own model name instead, so that it receives the same bytes a proxy would forward.
-- "stream" after the model adds "stream":true (the answer is read to its end as an SSE stream).
-- The request is built once per thread (no request() function), which keeps wrk's own cost low.
-- Defining response() makes wrk hand every answer to Lua; that costs wrk some CPU, equally for
-- every target, and buys an exact count of non-2xx answers (wrk itself only counts >= 400).

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

-- For the scripts that load this one (dofile) and post the same request in another shape.
chat_request = { system = system, user = user, json_string = json_string }

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local model = args[1] or "auto"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer bench-key"
  wrk.body = '{"model":' .. json_string(model)
    .. ',"messages":[{"role":"system","content":' .. json_string(system)
    .. '},{"role":"user","content":' .. json_string(user)
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
