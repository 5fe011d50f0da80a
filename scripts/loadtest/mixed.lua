-- wrk: a mixed workload against one collection (`COLLECTION`, set by loadtest.py), per 20
-- requests: `INGESTS` ingests of one new small document (set by loadtest.py), one `/query`
-- (a grounded answer from the local model, 3 passages), the rest `/search`.
-- Questions cycle through `queries` (filled in by loadtest.py), so repeats can hit the caches.
-- Every response's status, `x-ragway-mode` and whether a cache answered are counted per thread
-- and summed in done() as one JSON line.

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  modes = {}
  statuses = {}
  cache_hits = 0
  answers = 0
end

local function post(path, body)
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

function request()
  counter = counter + 1
  local slot = counter % 20
  local question = queries[(counter + id * 7) % #queries + 1]
  local base = "/v1/collections/" .. COLLECTION
  if slot < 19 - INGESTS then
    return post(base .. "/search", '{"query": "' .. question .. '", "top_k": 5}')
  elseif slot < 20 - INGESTS then
    return post(base .. "/query", '{"query": "' .. question .. '", "top_k": 3, "deadline_ms": 5000}')
  end
  local doc = "w" .. id .. "-" .. counter
  return post(base .. "/documents", '{"documents": [{"id": "' .. doc .. '", "text": "Note ' .. doc
    .. ' written under load about ' .. question .. '."}]}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local mode = headers["x-ragway-mode"]
  if mode then
    modes[mode] = (modes[mode] or 0) + 1
    answers = answers + 1
    if string.find(body, '"cache":{', 1, true) then
      cache_hits = cache_hits + 1
    end
  end
end

local function add(into, from)
  for key, count in pairs(from) do
    into[tostring(key)] = (into[tostring(key)] or 0) + count
  end
end

local function json_object(map)
  local parts = {}
  for key, count in pairs(map) do
    table.insert(parts, string.format('"%s": %d', key, count))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all_modes, all_statuses, hits, answered = {}, {}, 0, 0
  for _, thread in ipairs(threads) do
    add(all_modes, thread:get("modes"))
    add(all_statuses, thread:get("statuses"))
    hits = hits + thread:get("cache_hits")
    answered = answered + thread:get("answers")
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, '
      .. '"statuses": %s, "modes": %s, "cache_hits": %d, "answers": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, json_object(all_statuses), json_object(all_modes),
    hits, answered))
end
