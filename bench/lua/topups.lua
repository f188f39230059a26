-- POST /v1/topups for distinct phones, each with its own Idempotency-Key, as a client would.
-- Requests go round a list of API keys of the same account (one wallet): the API limits each
-- key's writes per second, a limit a client spreading load over several keys does not meet.
-- args: <api keys, comma-separated> <run number 10..99> <requests per thread, 0 = unbounded> <delay ms, 0 = none>
local counter, limit, pause, done_here = 0, 0, 0, 0

local next_tid = 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
end

function init(args)
  keys = {}
  for k in string.gmatch(args[1], "[^,]+") do table.insert(keys, k) end
  run = tonumber(args[2] or "10")
  limit = tonumber(args[3] or "0")
  pause = tonumber(args[4] or "0")
end

function request()
  counter = counter + 1
  -- 2547 RR T NNNNN: never the simulator's magic 25470000/01/02 ranges (RR >= 10)
  local phone = string.format("2547%02d%d%05d", run, tid % 10, counter % 100000)
  local body = string.format('{"provider":"mpesa","amount":%d,"phone":"%s","reference":"B%d"}',
                             10 + counter % 990, phone, counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                  ["Authorization"] = "Bearer " .. keys[counter % #keys + 1],
                                  ["Idempotency-Key"] = "bench-" .. phone}, body)
end

function delay()
  return pause
end

function response(status, headers, body)
  done_here = done_here + 1
  if limit > 0 and done_here >= limit then wrk.thread:stop() end
end
