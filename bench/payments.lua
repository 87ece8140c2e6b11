-- wrk: POST /v1/payments, sandbox, automatic capture, each request with
-- its own Idempotency-Key: a random prefix per thread and a counter.
--
--   wrk -s bench/payments.lua http://127.0.0.1:18484/v1/payments -- KEYS [BODY]
--
-- KEYS: one API key, or several separated by commas (one per tenant):
-- requests take them in turn, so that N keys spread the load over N
-- tenants evenly.
--
-- wrk threads are separate Lua states: setup() numbers them; the prefix
-- comes from /dev/urandom so that runs never reuse a key either.
-- The amount ends in 00: the sandbox answers "succeeded" (02, 05, 08, 09
-- would decline, ask for action or stay processing).

local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

function init(args)
    local f = assert(io.open("/dev/urandom", "rb"))
    local bytes = f:read(8)
    f:close()

    prefix = bytes:gsub(".", function(c)
        return string.format("%02x", c:byte())
    end) .. "-" .. tostring(id) .. "-"
    n = 0

    keys = {}
    for k in string.gmatch(assert(args[1], "API key"), "[^,]+") do
        keys[#keys + 1] = "Bearer " .. k
    end

    wrk.method = "POST"
    wrk.body = args[2] or '{"amount":4200,"currency":"usd"}'
    wrk.headers["Content-Type"] = "application/json"
end

function request()
    n = n + 1
    wrk.headers["Authorization"] = keys[n % #keys + 1]
    wrk.headers["Idempotency-Key"] = prefix .. n
    return wrk.format()
end
