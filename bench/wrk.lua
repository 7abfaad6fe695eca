-- wrk script for bench/run.py. BENCH_MODE=post: POST the multipart body in BENCH_BODY
-- (boundary BENCH_BOUNDARY); BENCH_MODE=ids: GET BENCH_PREFIX .. <id> for each line of
-- BENCH_IDS in turn; BENCH_THINK_MS: see below. Prints one line "BENCH {json}" with counts and latency percentiles (us).
local mode = os.getenv("BENCH_MODE") or "get"
if mode == "post" then
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("BENCH_BOUNDARY")
elseif mode == "ids" then
  local ids, prefix, i = {}, os.getenv("BENCH_PREFIX"), 0
  for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = prefix .. line end
  request = function()
    i = i % #ids + 1
    return wrk.format("GET", ids[i])
  end
end

-- BENCH_THINK_MS: each connection pauses before each request for an exponentially distributed
-- time of this mean (clients that think, arriving at random, instead of a closed loop at full tilt)
local think = tonumber(os.getenv("BENCH_THINK_MS") or "")
if think then
  math.randomseed(os.time())
  delay = function()
    return math.floor(-think * math.log(1 - math.random()))
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
