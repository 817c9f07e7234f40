-- wrk script: POST pre-generated, distinct proof bodies and check every answer.
--
-- Usage: wrk -t T -c C -d D -s proofs.lua URL -- BODIES_PREFIX MODE DELAY_MS BATCH_SIZE [CYCLE]
--   BODIES_PREFIX.<n> holds thread n's bodies, one JSON document per line (each used once:
--   replay protection answers a repeated proof with 409).
--   CYCLE "1": start again from the first body instead of stopping (only for an endpoint
--   without replay protection: the bare ASGI ceiling).
--   MODE "verify": an answer counts as good if it is a 200 containing "valid":true.
--   MODE "batch":  good if it is a 200 whose "accepted" equals BATCH_SIZE and "rejected" is 0.
--   DELAY_MS > 0 paces each connection (a steady, rate-limited load instead of closed loop),
--   with random pauses of that mean so the connections do not fire in step.
-- When a thread runs out of bodies (and CYCLE is not set) it stops itself and says so
-- ("exhausted"): its rate is then understated, and the report flags the run.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local bodies = {}
local batch_size = 1
local index = 0
local mode = "verify"
local delay_ms = 0
local cycle = false
good = 0
bad = 0
exhausted = 0
first_bad = ""

function init(args)
   local prefix = args[1]
   mode = args[2] or "verify"
   delay_ms = tonumber(args[3] or "0")
   batch_size = tonumber(args[4] or "1")
   cycle = args[5] == "1"
   math.randomseed(os.time() * 1000 + id)
   local f = assert(io.open(prefix .. "." .. id, "r"))
   for line in f:lines() do
      if #line > 0 then
         table.insert(bodies, line)
      end
   end
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

-- Each pause is drawn uniformly from [0.5, 1.5) x DELAY_MS (the same mean): with a fixed
-- pause all connections stay in step and send in bursts of C requests at once, which
-- measures the queue behind a burst, not a steady rate.
function delay()
   if delay_ms <= 0 then
      return 0
   end
   return math.floor(delay_ms * (0.5 + math.random()) + 0.5)
end

function request()
   index = index + 1
   if index > #bodies and cycle then
      index = 1
   elseif index > #bodies then
      exhausted = 1
      wrk.thread:stop()
      index = #bodies
   end
   return wrk.format(nil, nil, nil, bodies[index])
end

function response(status, headers, body)
   local ok = false
   if status == 200 then
      if mode == "batch" then
         local accepted = tonumber(string.match(body, '"accepted":(%d+)') or "-1")
         local rejected = tonumber(string.match(body, '"rejected":(%d+)') or "-1")
         ok = accepted == batch_size and rejected == 0
      else
         ok = string.find(body, '"valid":true', 1, true) ~= nil
      end
   end
   if ok then
      good = good + 1
   else
      bad = bad + 1
      if first_bad == "" then
         first_bad = status .. " " .. string.sub(body, 1, 300)
      end
   end
end

local function jstr(s)
   s = string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local g, b, ex, fb = 0, 0, 0, ""
   for _, t in ipairs(threads) do
      g = g + (t:get("good") or 0)
      b = b + (t:get("bad") or 0)
      ex = ex + (t:get("exhausted") or 0)
      local tb = t:get("first_bad") or ""
      if fb == "" then fb = tb end
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us":%d,"requests":%d,"good":%d,"bad":%d,"exhausted":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p95":%d,"p99":%d,"max":%d},"first_bad":%s}\n',
      summary.duration, summary.requests, g, b, ex,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(95),
      latency:percentile(99), latency.max, jstr(fb)))
end
