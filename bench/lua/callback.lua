-- Daraja STK callbacks (a paid one, as the simulator and Safaricom send it), each with its
-- own CheckoutRequestID, MerchantRequestID and receipt.
-- args: <run tag: 2 letters or digits> [<requests per thread, 0 = unbounded>]
local counter, limit, done_here = 0, 0, 0

local template = '{"Body":{"stkCallback":{"MerchantRequestID":"29115-34620561-%s",' ..
  '"CheckoutRequestID":"ws_CO_%s","ResultCode":0,' ..
  '"ResultDesc":"The service request is processed successfully.",' ..
  '"CallbackMetadata":{"Item":[{"Name":"Amount","Value":%s},' ..
  '{"Name":"MpesaReceiptNumber","Value":"%s"},{"Name":"Balance"},' ..
  '{"Name":"TransactionDate","Value":20261128100512},' ..
  '{"Name":"PhoneNumber","Value":2547%08d}]}}}}'

local next_tid = 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
end

function init(args)
  tag = args[1] or "BN"
  limit = tonumber(args[2] or "0")
end

function request()
  counter = counter + 1
  local unique = string.format("%s%02d%07d", tag, tid, counter)
  local amount = (counter % 2 == 0) and "1000.00" or "1000"
  local receipt = string.format("%s%d%07d", tag, tid % 10, counter % 10000000)
  local body = string.format(template, unique, "2026112810" .. unique, amount, receipt,
                             (tid * 1000000 + counter) % 100000000)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  done_here = done_here + 1
  if limit > 0 and done_here >= limit then wrk.thread:stop() end
end
