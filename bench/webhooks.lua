-- wrk: POST provider webhooks (Paystack's charge.success), each a new
-- event for its own payment, from a file of "<signature> <body>" lines
-- made by bench/webhooks; threads take every nth line.
--
--   wrk -s bench/webhooks.lua http://127.0.0.1:18487/webhooks/paystack \
--       -- FILE THREADS [bad]
--
-- "bad" sends each body with a signature that does not match (the 401
-- path).  Past the end of its lines a thread starts again: those
-- deliveries are duplicates, which bench/webhooks counts apart.

local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

function init(args)
    local nthreads = tonumber(args[2])
    local i = 0

    bad = args[3] == "bad"
    events = {}

    for line in io.lines(args[1]) do
        if i % nthreads == id - 1 then
            local sig, body = line:match("^(%S+) (.*)$")
            events[#events + 1] = { sig, body }
        end
        i = i + 1
    end

    n = 0
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
end

function request()
    n = n + 1
    local e = events[(n - 1) % #events + 1]
    wrk.headers["x-paystack-signature"] = bad and string.rep("0", 128)
                                          or e[1]
    wrk.body = e[2]
    return wrk.format()
end
