-- wrk script of bench/loads.py. The request comes from the environment, so one script serves
-- every target; done() prints one JSON line so nobody has to parse wrk's text summary.
--   BENCH_WRK_METHOD     GET or POST
--   BENCH_WRK_BODY_FILE  file holding the body, sent as it is (binary bodies too)
--   BENCH_WRK_CONTENT_TYPE  the body's Content-Type (application/json when unset; "-" sends none)
--   BENCH_WRK_HEADERS    further request headers, one "Name: value" per line

wrk.method = os.getenv("BENCH_WRK_METHOD") or "GET"
local body_file = os.getenv("BENCH_WRK_BODY_FILE")
if body_file and body_file ~= "" then
  local file = assert(io.open(body_file, "rb"))
  wrk.body = file:read("*a")
  file:close()
  local content_type = os.getenv("BENCH_WRK_CONTENT_TYPE") or ""
  if content_type == "" then
    content_type = "application/json"
  end
  if content_type ~= "-" then
    wrk.headers["Content-Type"] = content_type
  end
end
for line in (os.getenv("BENCH_WRK_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  local seconds = summary.duration / 1e6
  -- wrk's times are microseconds; %.0f rather than %d, which overflows on big byte counts.
  io.write(string.format(
    "BENCH_WRK_RESULT {\"requests\": %.0f, \"duration_s\": %.6f, \"requests_per_s\": %.3f, "
      .. "\"bytes\": %.0f, \"errors\": {\"connect\": %.0f, \"read\": %.0f, \"write\": %.0f, "
      .. "\"timeout\": %.0f, \"status\": %.0f}, \"latency_ms\": {\"p50\": %.3f, "
      .. "\"p90\": %.3f, \"p99\": %.3f, \"max\": %.3f, \"mean\": %.3f}}\n",
    summary.requests, seconds, summary.requests / seconds, summary.bytes,
    errors.connect, errors.read, errors.write, errors.timeout, errors.status,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
