-- A local Stripe for tests and `make run`: the PaymentIntents calls
-- PayFlow makes, answered in Stripe's wire format
-- (https://docs.stripe.com/api/payment_intents), with Stripe's test
-- payment methods deciding the outcome:
--
--   pm_card_visa (and any other)            succeeds (or requires_capture)
--   pm_card_chargeDeclined                  402 card_declined
--   pm_card_chargeDeclinedInsufficientFunds 402 insufficient_funds
--   pm_card_authenticationRequired          requires_action, a redirect
--   pm_card_slow (not Stripe's)             succeeds after 200 ms, for
--                                           bench/providers
--
-- Capture, cancel and refunds follow the same wire format
-- (https://docs.stripe.com/api/payment_intents/capture, .../cancel,
-- https://docs.stripe.com/api/refunds).  A refund succeeds at once, except
-- one of exactly 13 (minor units): that one is "pending" and stays pending,
-- so that asynchronous refunds can be tested (GET /v1/refunds/{id}).
--
-- The customer's side of a redirect (3D Secure): POST
-- /_emulator/complete/:payment_intent with body succeeded or failed moves
-- an intent that requires action on, as finishing (or failing) the
-- challenge would; PayFlow then learns it from a webhook or a
-- verification.
--
-- Idempotency-Key replays the first answer of a POST, as Stripe does.
-- Faults for the next API request are queued with POST /_emulator/fault
-- (body: timeout, drop, slow, 500, 429 or refuse): "timeout" and "drop"
-- do the work (create, capture, cancel, refund, or a replay) and then
-- sleep or close the connection, the ambiguous cases; "slow" answers
-- after 500 ms (a webhook can overtake the answer).  Every API request is recorded
-- (GET /_emulator/requests).
--
-- nginx.conf:  lua_shared_dict stripe 4m;
--              set $stripe_secret sk_test_...;  (the expected key)
--              content_by_lua_file .../stripe.lua;

local cjson = require "cjson.safe"

-- a second instance in the same nginx keeps its own state:
-- set $stripe_dict <its lua_shared_dict>;
local dict = ngx.shared[ngx.var.stripe_dict or "stripe"]
local secret = ngx.var.stripe_secret
local uri = ngx.var.uri
local method = ngx.req.get_method()

local function send(status, body, headers)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Request-Id"] = "req_emu" .. ngx.now() * 1000
    for k, v in pairs(headers or {}) do
        ngx.header[k] = v
    end
    -- lua-cjson writes "/" as "\/"; Stripe does not
    ngx.print((cjson.encode(body):gsub("\\/", "/")))
    return ngx.exit(status)
end

-- each worker seeds its own generator once: unseeded, every worker (and
-- every worker after a reload) would make the same ids, and the shared
-- dict would mix up their objects
if not package.loaded["emulator.seeded"] then
    math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
    package.loaded["emulator.seeded"] = true
end

local function random_id(prefix)
    local chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    local t = {}
    for i = 1, 24 do
        local n = math.random(1, 62)
        t[i] = chars:sub(n, n)
    end
    return prefix .. table.concat(t)
end

-- control endpoints

if uri == "/_emulator/fault" then
    ngx.req.read_body()
    local n = dict:incr("faults", 1, 0)
    dict:set("fault:" .. n, ngx.req.get_body_data() or "")
    return send(200, { queued = n })
end

if uri == "/_emulator/requests" then
    if method == "DELETE" then
        dict:flush_all()
        return send(200, { deleted = true })
    end
    local list = {}
    for i = 1, dict:get("requests") or 0 do
        list[i] = dict:get("request:" .. i)
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print("[" .. table.concat(list, ",") .. "]")
    return ngx.exit(200)
end

local cpid = uri:match("^/_emulator/complete/(pi_[%w]+)$")
if cpid then
    ngx.req.read_body()
    local stored = dict:get("pi:" .. cpid)
    local pi = stored and cjson.decode(stored)
    if not pi or pi.status ~= "requires_action" then
        return send(404, { error = "no intent " .. cpid
            .. " that requires action" })
    end
    pi.next_action = cjson.null
    if ngx.req.get_body_data() == "failed" then
        pi.status = "requires_payment_method"
        pi.last_payment_error = { type = "card_error",
            code = "payment_intent_authentication_failure",
            message = "The provided PaymentMethod has failed "
                .. "authentication." }
    else
        pi.status = "succeeded"
        pi.amount_received = pi.amount
        pi.latest_charge = random_id("ch_")
    end
    dict:set("pi:" .. pi.id, cjson.encode(pi))
    return send(200, pi)
end

-- the API

ngx.req.read_body()
local raw = ngx.req.get_body_data() or ""

local n = dict:incr("requests", 1, 0)
local h = ngx.req.get_headers()
dict:set("request:" .. n, cjson.encode({
    method = method, uri = uri, body = raw,
    authorization = h["authorization"],
    idempotency_key = h["idempotency-key"],
    content_type = h["content-type"],
    stripe_version = h["stripe-version"],
    request_id = h["x-request-id"],
}))

local fault
local served = dict:get("faults_served") or 0
if served < (dict:get("faults") or 0) then
    served = dict:incr("faults_served", 1, 0)
    fault = dict:get("fault:" .. served)
end

if fault == "refuse" then
    -- as a dead host does: no answer and no request processed
    return ngx.exit(444)
end

if fault == "429" then
    return send(429, { error = { type = "invalid_request_error",
        code = "rate_limit", message = "Too many requests hit the API "
        .. "too quickly." } })
end

if fault == "500" then
    return send(500, { error = { type = "api_error",
        message = "An unknown error occurred" } })
end

if h["authorization"] ~= "Bearer " .. secret then
    return send(401, { error = { type = "invalid_request_error",
        message = "Invalid API Key provided: sk_test_****" } })
end

-- GET /v1/balance: what a connected account's key is checked with
if method == "GET" and uri == "/v1/balance" then
    return send(200, { object = "balance", livemode = false,
        available = { { amount = 0, currency = "usd",
                        source_types = { card = 0 } } },
        pending = { { amount = 0, currency = "usd",
                      source_types = { card = 0 } } } })
end

-- a queued "timeout" or "drop", once the work is done: the answer is late
-- (past the client's timeout) or never comes
local function hide_answer()
    if fault == "timeout" then
        ngx.sleep(tonumber(dict:get("timeout_sleep") or 3))
    elseif fault == "slow" then
        ngx.sleep(0.5)
    elseif fault == "drop" then
        return ngx.exit(444)
    end
end

local idem = h["idempotency-key"]
if method == "POST" and idem then
    local stored = dict:get("idem:" .. idem)
    if stored then
        local s = cjson.decode(stored)
        if s.body ~= raw then
            return send(400, { error = { type = "idempotency_error",
                message = "Keys for idempotent requests can only be used "
                .. "with the same parameters they were first used with." } })
        end
        hide_answer()
        return send(s.status, s.response, { ["Idempotent-Replayed"] = "true" })
    end
end

local function remember(status, response)
    if method == "POST" and idem then
        dict:set("idem:" .. idem, cjson.encode({ body = raw,
            status = status, response = response }))
    end
end

local function intent_from(args)
    local amount = tonumber(args.amount)
    if not amount or amount < 1 or amount ~= math.floor(amount) then
        return nil, "amount"
    end
    if type(args.currency) ~= "string" or not args.currency:match("^%l%l%l$")
    then
        return nil, "currency"
    end
    local metadata = {}
    for k, v in pairs(args) do
        local m = k:match("^metadata%[(.+)%]$")
        if m then metadata[m] = v end
    end
    return {
        id = random_id("pi_"), object = "payment_intent",
        amount = amount, amount_capturable = 0, amount_received = 0,
        currency = args.currency,
        capture_method = args.capture_method or "automatic_async",
        confirmation_method = "automatic",
        client_secret = "pi_secret_" .. random_id(""),
        created = ngx.time(), description = args.description,
        livemode = false, metadata = metadata,
        payment_method = args.payment_method,
        receipt_email = args.receipt_email,
        status = "requires_payment_method",
        next_action = cjson.null, last_payment_error = cjson.null,
        latest_charge = cjson.null,
        canceled_at = cjson.null, cancellation_reason = cjson.null,
    }
end

-- what the API answers, once the work is done: stored for the
-- Idempotency-Key, then perhaps hidden by a fault
local function answer(status, response, headers)
    remember(status, response)
    hide_answer()
    return send(status, response, headers)
end

local function invalid(message, param, code, extra)
    local e = { type = "invalid_request_error", message = message,
        param = param, code = code }
    for k, v in pairs(extra or {}) do e[k] = v end
    return { error = e }
end

local function missing(kind, id, param)
    return invalid("No such " .. kind .. ": '" .. id .. "'", param,
        "resource_missing")
end

local function load_intent(pid)
    local pi = dict:get("pi:" .. pid)
    return pi and cjson.decode(pi)
end

local function save_intent(pi)
    dict:set("pi:" .. pi.id, cjson.encode(pi))
end

if method == "POST" and uri == "/v1/payment_intents" then
    local args = ngx.decode_args(raw, 0)
    local pi, bad = intent_from(args)
    if not pi then
        local e = { error = { type = "invalid_request_error",
            code = "parameter_missing", param = bad,
            message = "Missing required param: " .. bad .. "." } }
        return answer(400, e)
    end

    local status, response = 200, pi
    local pm = args.payment_method
    if args.confirm == "true" and pm then
        if pm == "pm_card_chargeDeclined"
            or pm == "pm_card_chargeDeclinedInsufficientFunds"
        then
            local code = pm == "pm_card_chargeDeclined" and "generic_decline"
                or "insufficient_funds"
            pi.last_payment_error = { type = "card_error",
                code = "card_declined", decline_code = code,
                message = "Your card was declined." }
            status = 402
            response = { error = { type = "card_error",
                code = "card_declined", decline_code = code,
                message = "Your card was declined.", payment_intent = pi } }
        elseif pm == "pm_card_authenticationRequired" then
            pi.status = "requires_action"
            pi.next_action = { type = "redirect_to_url", redirect_to_url = {
                url = "https://hooks.stripe.com/3d_secure_2/hosted?"
                    .. "payment_intent=" .. pi.id,
                return_url = args.return_url } }
        elseif args.capture_method == "manual" then
            pi.status = "requires_capture"
            pi.amount_capturable = pi.amount
        else
            pi.status = "succeeded"
            pi.amount_received = pi.amount
            pi.latest_charge = random_id("ch_")
        end
    end

    save_intent(pi)

    if pm == "pm_card_slow" then
        ngx.sleep(0.2)
    end

    return answer(status, response)
end

local id = uri:match("^/v1/payment_intents/([%w_]+)$")
if method == "GET" and id then
    local pi = load_intent(id)
    if not pi then
        return answer(404, missing("payment_intent", id, "intent"))
    end
    return answer(200, pi)
end

-- capture: only a requires_capture intent, all of amount_capturable or
-- less (amount_to_capture); cancel: only an intent not yet final
local allowed = {
    capture = { "requires_capture" },
    cancel = { "requires_payment_method", "requires_capture",
        "requires_confirmation", "requires_action", "processing" },
}

local function may(action, status)
    for _, st in ipairs(allowed[action]) do
        if st == status then return true end
    end
    return false
end

local function unexpected_state(pi, action)
    local msg = action == "capture"
        and "This PaymentIntent could not be captured because it has a "
            .. "status of " .. pi.status .. ". Only a PaymentIntent with "
            .. "one of the following statuses may be captured: "
        or "You cannot cancel this PaymentIntent because it has a status of "
            .. pi.status .. ". Only a PaymentIntent with one of the "
            .. "following statuses may be canceled: "
    return invalid(msg .. table.concat(allowed[action], ", ") .. ".", nil,
        "payment_intent_unexpected_state", { payment_intent = pi })
end

local pid, action = uri:match("^/v1/payment_intents/([%w_]+)/(%l+)$")
if method == "POST" and pid and (action == "capture" or action == "cancel")
then
    local args = ngx.decode_args(raw, 0)
    local pi = load_intent(pid)
    if not pi then
        return answer(404, missing("payment_intent", pid, "intent"))
    end
    if not may(action, pi.status) then
        return answer(400, unexpected_state(pi, action))
    end

    if action == "capture" then
        local amount = pi.amount_capturable
        if args.amount_to_capture then
            amount = tonumber(args.amount_to_capture)
            if not amount or amount < 1 or amount ~= math.floor(amount) then
                return answer(400, invalid("Invalid integer: "
                    .. tostring(args.amount_to_capture), "amount_to_capture",
                    "parameter_invalid_integer"))
            end
            if amount > pi.amount_capturable then
                return answer(400, invalid("The amount to capture must be "
                    .. "less than or equal to the amount capturable ("
                    .. pi.amount_capturable .. ").", "amount_to_capture",
                    "amount_too_large"))
            end
        end
        pi.status = "succeeded"
        pi.amount_received = amount
        pi.amount_capturable = 0
        if pi.latest_charge == cjson.null then
            pi.latest_charge = random_id("ch_")
        end
    else
        local reason = args.cancellation_reason
        if reason and reason ~= "duplicate" and reason ~= "fraudulent"
            and reason ~= "requested_by_customer" and reason ~= "abandoned"
        then
            return answer(400, invalid("Invalid cancellation_reason: must "
                .. "be one of duplicate, fraudulent, requested_by_customer, "
                .. "or abandoned", "cancellation_reason"))
        end
        pi.status = "canceled"
        pi.amount_capturable = 0
        pi.canceled_at = ngx.time()
        pi.cancellation_reason = reason or cjson.null
    end

    save_intent(pi)
    return answer(200, pi)
end

-- refunds: of a succeeded intent, at most what it received less what was
-- refunded already (pending refunds included)

local function money(amount, currency)
    local symbols = { usd = "$", eur = "\226\130\172", gbp = "\194\163",
        jpy = "\194\165" }
    local zero = { jpy = true, krw = true, vnd = true, clp = true }
    local s = zero[currency] and tostring(amount)
        or string.format("%d.%02d", math.floor(amount / 100), amount % 100)
    if symbols[currency] then return symbols[currency] .. s end
    return s .. " " .. currency:upper()
end

if method == "POST" and uri == "/v1/refunds" then
    local args = ngx.decode_args(raw, 0)
    local ref_pi = args.payment_intent
    if not ref_pi then
        return answer(400, invalid("One of the following params should be "
            .. "provided for this request: payment_intent or charge.",
            nil, "parameter_missing"))
    end
    local pi = load_intent(ref_pi)
    if not pi then
        return answer(400, missing("payment_intent", ref_pi,
            "payment_intent"))
    end
    if pi.status ~= "succeeded" then
        return answer(400, invalid("This PaymentIntent (" .. pi.id
            .. ") does not have a successful charge to refund."))
    end

    local refunded = dict:get("refunded:" .. pi.id) or 0
    local left = pi.amount_received - refunded
    local amount = left
    if args.amount then
        amount = tonumber(args.amount)
        if not amount or amount < 1 or amount ~= math.floor(amount) then
            return answer(400, invalid("Invalid integer: "
                .. tostring(args.amount), "amount",
                "parameter_invalid_integer"))
        end
    end
    if left <= 0 then
        return answer(400, invalid("Charge " .. pi.latest_charge
            .. " has already been refunded.", nil, "charge_already_refunded"))
    end
    local reason = args.reason
    if reason and reason ~= "duplicate" and reason ~= "fraudulent"
        and reason ~= "requested_by_customer"
    then
        return answer(400, invalid("Invalid reason: must be one of "
            .. "duplicate, fraudulent, or requested_by_customer", "reason"))
    end

    -- taken atomically, so that refunds at the same time cannot together
    -- exceed what was received
    local now = dict:incr("refunded:" .. pi.id, amount, 0)
    if now > pi.amount_received then
        dict:incr("refunded:" .. pi.id, -amount)
        left = pi.amount_received - (now - amount)
        if left <= 0 then
            return answer(400, invalid("Charge " .. pi.latest_charge
                .. " has already been refunded.", nil,
                "charge_already_refunded"))
        end
        return answer(400, invalid("Refund amount ("
            .. money(amount, pi.currency) .. ") is greater than unrefunded "
            .. "amount on charge (" .. money(left, pi.currency) .. ")",
            "amount"))
    end

    local metadata = {}
    for k, v in pairs(args) do
        local m = k:match("^metadata%[(.+)%]$")
        if m then metadata[m] = v end
    end

    local re = {
        id = random_id("re_"), object = "refund", amount = amount,
        balance_transaction = random_id("txn_"), charge = pi.latest_charge,
        created = ngx.time(), currency = pi.currency, metadata = metadata,
        payment_intent = pi.id, reason = reason or cjson.null,
        receipt_number = cjson.null, source_transfer_reversal = cjson.null,
        status = amount == 13 and "pending" or "succeeded",
        transfer_reversal = cjson.null,
    }
    dict:set("refund:" .. re.id, cjson.encode(re))
    return answer(200, re)
end

local rid = uri:match("^/v1/refunds/([%w_]+)$")
if method == "GET" and rid then
    local re = dict:get("refund:" .. rid)
    if not re then
        return answer(404, missing("refund", rid, "id"))
    end
    return answer(200, cjson.decode(re))
end

return send(404, { error = { type = "invalid_request_error",
    message = "Unrecognized request URL (" .. method .. ": " .. uri .. ")." } })
