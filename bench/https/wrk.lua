-- wrk script for bench/https-overhead.sh.
--
-- Environment:
--   GBX_METHOD  POST (default) or GET
--   GBX_BODY    the request body for POST
--   GBX_TOKEN   a bearer token (optional; sent as "Authorization: Bearer ...")
--
-- At the end it prints one JSON line, prefixed with "WRKJSON ", with exact percentiles (wrk
-- records latency in microseconds) and the error counts, for the bench script to parse.

wrk.method = os.getenv("GBX_METHOD") or "POST"
local body = os.getenv("GBX_BODY")
if wrk.method == "POST" and body then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
local token = os.getenv("GBX_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.status, e.connect, e.read, e.write,
    e.timeout))
end
