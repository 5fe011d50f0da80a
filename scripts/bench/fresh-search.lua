-- A new question on every request (a thread id, a run id and a counter in its text): L1, L2 and
-- L3 all miss.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local n = 0
local run = tostring(os.time())
local path = "/v1/collections/" .. (os.getenv("COLLECTION") or "bench") .. "/search"
request = function()
  n = n + 1
  local body = string.format('{"query": "how are collections %s-%s-%d kept durable", "top_k": 5}', run, tid, n)
  return wrk.format("POST", path, {["content-type"] = "application/json"}, body)
end
