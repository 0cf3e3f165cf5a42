-- wrk script for tools/bench_gateway.sh: POSTs $BENCH_BODY and, at the end, prints one
-- line "JSON {...}" with exact figures (latency percentiles in microseconds, counts).
--
-- Environment:
--   BENCH_BODY         request body (JSON)
--   BENCH_COUNT_LINES  "1": count the NDJSON lines of every response (wrk then hands each
--                      de-chunked body to response(); costs some wrk CPU, so only for the
--                      streaming runs).  Lines = "\n" bytes in the body.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    lines = 0        -- luacheck: globals lines responses bad min_lines max_lines
    responses = 0
    bad = 0
    min_lines = -1
    max_lines = 0
end

if os.getenv("BENCH_COUNT_LINES") == "1" then
    function response(status, headers, body)
        responses = responses + 1
        if status ~= 200 then
            bad = bad + 1
        end
        local n = 0
        if body ~= nil then
            local _, c = string.gsub(body, "\n", "")
            n = c
        end
        lines = lines + n
        if min_lines < 0 or n < min_lines then min_lines = n end
        if n > max_lines then max_lines = n end
    end
end

function done(summary, latency, requests)
    local l, r, b, mn, mx = 0, 0, 0, -1, 0
    for _, t in ipairs(threads) do
        l = l + (t:get("lines") or 0)
        r = r + (t:get("responses") or 0)
        b = b + (t:get("bad") or 0)
        local tmin = t:get("min_lines") or -1
        if tmin >= 0 and (mn < 0 or tmin < mn) then mn = tmin end
        local tmax = t:get("max_lines") or 0
        if tmax > mx then mx = tmax end
    end
    local e = summary.errors
    io.write(string.format(
        'JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"lat_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},' ..
        '"lines":%d,"responses":%d,"bad":%d,"min_lines":%d,"max_lines":%d}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
        l, r, b, mn, mx))
end
