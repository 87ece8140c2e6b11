-- wrk: POST /v1/payments as a shop's customers make them, for the risk
-- engine to score: each request with its own Idempotency-Key, one of
-- CUSTOMERS customers picked at random, each with its e-mail, its card and
-- a few client addresses of its own, and an amount of 5.00 to 50.00.
--
--   wrk -s bench/risk.lua http://127.0.0.1:18490/v1/payments -- KEY [CUSTOMERS]
--
-- Customer k (0 <= k < CUSTOMERS, default 10000):
--
--   customer.id      cust-<k>
--   customer.email   c<k>@shop<k % 100>.example
--   payment_method   pm_card_<k>
--   X-Forwarded-For  127.<1 + k / 256>.<k % 256>.<1..4>  (nginx's realip
--                    module makes it the client address: 127.0.0.0/8 only,
--                    below 127.200.0.0, where bench/risk's block lists are)
--
-- Amounts end in 00: the sandbox answers "succeeded" (bench/payments.lua).
-- wrk threads are separate Lua states: setup() numbers them; the key
-- prefix and the random seed come from /dev/urandom, so that runs never
-- reuse an Idempotency-Key.

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

    local seed = 0
    for i = 1, 4 do
        seed = seed * 256 + bytes:byte(i)
    end
    math.randomseed(seed)

    customers = tonumber(args[2] or "10000")

    wrk.method = "POST"
    wrk.headers["Authorization"] = "Bearer " .. assert(args[1], "API key")
    wrk.headers["Content-Type"] = "application/json"
end

function request()
    n = n + 1

    local k = math.random(0, customers - 1)

    wrk.headers["Idempotency-Key"] = prefix .. n
    wrk.headers["X-Forwarded-For"] = string.format("127.%d.%d.%d",
        1 + math.floor(k / 256), k % 256, math.random(1, 4))

    return wrk.format(nil, nil, nil, string.format(
        '{"amount":%d,"currency":"usd",'
        .. '"customer":{"email":"c%d@shop%d.example","id":"cust-%d"},'
        .. '"payment_method":"pm_card_%d"}',
        math.random(5, 50) * 100, k, k % 100, k, k))
end
