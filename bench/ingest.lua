-- wrk script for bench/ingest.py: POST /v1/events with fresh events (a counter makes each event_id unique).
-- Environment: BENCH_TOKEN (bearer key), BENCH_BATCH (1 posts one event alone, N > 1 a batch with sent_at),
-- BENCH_NONCE (makes ids unique across runs). Prints one line "BENCH {json}" that bench/ingest.py reads.

local token = os.getenv("BENCH_TOKEN") or ""
local batch = tonumber(os.getenv("BENCH_BATCH") or "1")
local nonce = os.getenv("BENCH_NONCE") or "n"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local counter = 0
local templates  -- request bodies, each split where the event ids' unique part goes
accepted = 0
bad = 0
first_error = nil

-- A realistic mix: what an app sends around one reply. "@@" is replaced per request.
local function event(n, ts)
  local id = "@@-" .. n
  local user = "u" .. (n * 7919 % 4096)
  local reply = "r" .. math.floor(n / 4)
  local k = n % 4
  if k == 0 then
    return string.format('{"event_id":"%s","type":"reply_shown","user_id":"%s","session_id":"s%d",'
      .. '"character_id":"c7","reply_id":"%s","timestamp":%d,"reply":{"chars":%d,"finish_reason":"stop"},'
      .. '"conditioning":{"pacing":"balanced","target_chars":380,"explored":false,"propensity":0.9}}',
      id, user, n % 97, reply, ts, 200 + n % 400)
  elseif k == 1 then
    return string.format('{"event_id":"%s","type":"user_message","user_id":"%s","session_id":"s%d",'
      .. '"character_id":"c7","reply_id":"%s","timestamp":%d,"chars":%d,"compose_ms":%d}',
      id, user, n % 97, reply, ts, 20 + n % 200, 1000 + n % 9000)
  elseif k == 2 then
    return string.format('{"event_id":"%s","type":"repeat","user_id":"%s","session_id":"s%d",'
      .. '"character_id":"c7","reply_id":"%s","timestamp":%d}', id, user, n % 97, reply, ts)
  end
  return string.format('{"event_id":"%s","type":"reply_selected","user_id":"%s","session_id":"s%d",'
    .. '"character_id":"c7","reply_id":"%s","timestamp":%d,"alternatives":["%s","%s-b"]}',
    id, user, n % 97, reply, ts, reply, reply)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
  -- Bodies are built once with "@@" where each event_id's unique part goes: a request then costs one
  -- table.concat, so the load generator leaves the cores to the servers. Single events cycle through
  -- 64 (four types, many users); a batch holds the whole mix.
  local ts = os.time() * 1000 - 1500
  local bodies = {}
  if batch == 1 then
    for j = 1, 64 do bodies[j] = event(tid * 64 + j, ts) end
  else
    local parts = {}
    for i = 1, batch do parts[i] = event(i, ts) end
    bodies[1] = '{"sent_at":' .. (ts + 1000) .. ',"events":[' .. table.concat(parts, ",") .. ']}'
  end
  templates = {}
  for j, body in ipairs(bodies) do
    local pieces = {}
    for piece in string.gmatch(body .. "@@", "(.-)@@") do table.insert(pieces, piece) end
    templates[j] = pieces
  end
end

function request()
  counter = counter + 1
  local pieces = templates[counter % #templates + 1]
  return wrk.format(nil, nil, nil, table.concat(pieces, nonce .. "-" .. tid .. "-" .. counter))
end

function response(status, headers, body)
  if status == 202 then
    local n = tonumber(string.match(body, '"accepted":(%d+)')) or 0
    accepted = accepted + n
    if n ~= batch then
      bad = bad + 1
      if not first_error then first_error = "202 " .. string.sub(body, 1, 300) end
    end
  else
    bad = bad + 1
    if not first_error then first_error = status .. " " .. string.sub(body, 1, 300) end
  end
end

function done(summary, latency, requests)
  local acc, nbad, err = 0, 0, nil
  for _, t in ipairs(threads) do
    acc = acc + (t:get("accepted") or 0)
    nbad = nbad + (t:get("bad") or 0)
    err = err or t:get("first_error")
  end
  local e = summary.errors
  io.write(string.format('BENCH {"requests":%d,"duration_us":%d,"accepted":%d,"bad":%d,'
    .. '"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, acc, nbad, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
  if err then io.write("BENCH_ERROR " .. err .. "\n") end
end
