-- A local Stripe for tests and `make run`: the PaymentIntents calls
-- PayFlow makes, answered in Stripe's wire format
-- (https://docs.stripe.com/api/payment_intents), with Stripe's test
-- payment methods deciding the outcome:
--
--   pm_card_visa (and any other)            succeeds (or requires_capture)
--   pm_card_chargeDeclined                  402 card_declined
--   pm_card_chargeDeclinedInsufficientFunds 402 insufficient_funds
--   pm_card_authenticationRequired          requires_action, a redirect
--
-- Idempotency-Key replays the first answer, as Stripe does.  Faults for the
-- next request are queued with POST /_emulator/fault (body: timeout,
-- drop, 500, 429 or refuse): "timeout" and "drop" create the intent and
-- then sleep or close the connection, the ambiguous cases.  Every API
-- request is recorded (GET /_emulator/requests).
--
-- nginx.conf:  lua_shared_dict stripe 4m;
--              set $stripe_secret sk_test_...;  (the expected key)
--              content_by_lua_file .../stripe.lua;

local cjson = require "cjson.safe"

local dict = ngx.shared.stripe
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
    ngx.print(cjson.encode(body))
    return ngx.exit(status)
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
    }
end

if method == "POST" and uri == "/v1/payment_intents" then
    local args = ngx.decode_args(raw, 0)
    local pi, bad = intent_from(args)
    if not pi then
        local e = { error = { type = "invalid_request_error",
            code = "parameter_missing", param = bad,
            message = "Missing required param: " .. bad .. "." } }
        remember(400, e)
        return send(400, e)
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
        end
    end

    dict:set("pi:" .. pi.id, cjson.encode(pi))
    remember(status, response)

    if fault == "timeout" then
        ngx.sleep(tonumber(dict:get("timeout_sleep") or 3))
    elseif fault == "drop" then
        return ngx.exit(444)
    end

    return send(status, response)
end

local id = uri:match("^/v1/payment_intents/([%w_]+)$")
if method == "GET" and id then
    local pi = dict:get("pi:" .. id)
    if not pi then
        return send(404, { error = { type = "invalid_request_error",
            code = "resource_missing", param = "intent",
            message = "No such payment_intent: '" .. id .. "'" } })
    end
    return send(200, cjson.decode(pi))
end

return send(404, { error = { type = "invalid_request_error",
    message = "Unrecognized request URL (" .. method .. ": " .. uri .. ")." } })
