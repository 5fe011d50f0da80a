-- The eight questions paths.sh answered once, in turn: every request is an L1 hit.
local n = 0
request = function()
  local body = string.format('{"query": "question %d: how does ragway degrade?"}', n % 8)
  n = n + 1
  return wrk.format("POST", "/v1/collections/bench/query", {["content-type"] = "application/json"}, body)
end
