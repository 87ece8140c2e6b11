-- A local Paystack for tests and `make run`: the redirect flow PayFlow
-- uses, answered in Paystack's wire format (https://paystack.com/docs/api/):
-- JSON both ways, `Authorization: Bearer sk_test_...`, every answer
-- {"status": true|false, "message": "...", "data": {...}}.  Amounts are
-- integers in the currency's subunit (kobo, pesewas, cents), sent as a
-- number or a numeric string.
--
--   POST /transaction/initialize          {email, amount, currency,
--        reference, callback_url, metadata}: the checkout page's address
--   GET  /transaction/verify/:reference   the transaction (HTTP 200 whatever
--        its status: success, failed, abandoned, ongoing, pending, reversed)
--   POST /refund                          {transaction (reference or id),
--        amount, currency, customer_note, merchant_note}: a refund, pending
--   GET  /refund/:id                      the refund
--
-- The customer's side (a redirect flow: the outcome is decided on
-- Paystack's checkout page):
--   - automatically, by the e-mail's local part: "success+..." pays at
--     once (status success), "failed+..." fails at once (failed); any other
--     address leaves the transaction "abandoned", which is what Paystack
--     shows for a checkout nobody completed yet (not final: the customer may
--     still pay);
--   - or POST /_emulator/complete/:reference with body success, failed,
--     abandoned, ongoing or pending, as if the customer had done that on
--     the checkout page.
-- A transaction is "reversed" once refunds (not failed) cover its amount.
--
-- Refunds start "pending", as Paystack's do.  The second GET /refund/:id of
-- a pending refund finds it "processed" (refunded_at set), except a refund
-- of exactly 13 (subunits), which stays pending.  POST
-- /_emulator/refund/:id/status with body pending, processing, processed,
-- failed or needs-attention sets a refund's status and keeps it there.
--
-- Faults for the next API request are queued with POST /_emulator/fault
-- (body: timeout, drop, 500, 429 or refuse): "timeout" and "drop" do the
-- work (initialize, refund) and then sleep or close the connection, the
-- ambiguous cases; "refuse" closes it with nothing done.  Every API request
-- is recorded (GET /_emulator/requests; DELETE flushes everything).
--
-- nginx.conf:  lua_shared_dict paystack 4m;
--              set $paystack_secret sk_test_...;  (the expected key)
--              content_by_lua_file .../paystack.lua;

local cjson = require "cjson.safe"

-- a second instance in the same nginx keeps its own state:
-- set $paystack_dict <its lua_shared_dict>;
local dict = ngx.shared[ngx.var.paystack_dict or "paystack"]
local secret = ngx.var.paystack_secret
local uri = ngx.var.uri
local method = ngx.req.get_method()

-- the fault queued for this API request (none for the control endpoints)
local fault

-- every answer; after the work is done, a "timeout" fault makes it late
-- (past the client's timeout) and a "drop" makes it never come
local function send(status, body)
    if fault == "timeout" then
        ngx.sleep(tonumber(dict:get("timeout_sleep") or 3))
    elseif fault == "drop" then
        return ngx.exit(444)
    end
    ngx.status = status
    ngx.header["Content-Type"] = "application/json; charset=utf-8"
    -- lua-cjson writes "/" as "\/"; Paystack does not
    ngx.print((cjson.encode(body):gsub("\\/", "/")))
    return ngx.exit(status)
end

-- Paystack's refusals: {"status": false, "message": ...}, some with a type
-- and a code
local function refuse(status, message, type, code)
    return send(status, { status = false, message = message,
        type = type, code = code })
end

if not package.loaded["emulator.seeded"] then
    math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
    package.loaded["emulator.seeded"] = true
end

local function random_code(n)
    local chars = "0123456789abcdefghijklmnopqrstuvwxyz"
    local t = {}
    for i = 1, n do
        local k = math.random(1, #chars)
        t[i] = chars:sub(k, k)
    end
    return table.concat(t)
end

-- Paystack's numeric ids
local function next_id(base)
    return base + dict:incr("ids", 1, 0)
end

local function iso(t)
    return os.date("!%Y-%m-%dT%H:%M:%S.000Z", t)
end

local function body_text()
    ngx.req.read_body()
    local b = ngx.req.get_body_data() or ""
    local d = cjson.decode(b)
    if type(d) == "table" and type(d.status) == "string" then
        return d.status
    end
    return (b:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function load(key)
    local v = dict:get(key)
    return v and cjson.decode(v)
end

local function save(key, v)
    dict:set(key, cjson.encode(v))
end

-- control endpoints (not recorded, no fault)

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

local outcomes = { success = true, failed = true, abandoned = true,
    ongoing = true, pending = true }

local ref = uri:match("^/_emulator/complete/(.+)$")
if ref and method == "POST" then
    local outcome = body_text()
    local tx = load("tx:" .. ref)
    if not tx then
        return send(404, { error = "no transaction " .. ref })
    end
    if not outcomes[outcome] then
        return send(400, { error = "outcome: success, failed, abandoned, "
            .. "ongoing or pending" })
    end
    tx.status = outcome
    tx.paid_at = outcome == "success" and ngx.time() or nil
    save("tx:" .. ref, tx)
    return send(200, { reference = ref, status = outcome })
end

local refund_states = { pending = true, processing = true,
    processed = true, failed = true, ["needs-attention"] = true }

local rid = uri:match("^/_emulator/refund/(%d+)/status$")
if rid and method == "POST" then
    local status = body_text()
    local rf = load("refund:" .. rid)
    if not rf then
        return send(404, { error = "no refund " .. rid })
    end
    if not refund_states[status] then
        return send(400, { error = "status: pending, processing, processed, "
            .. "failed or needs-attention" })
    end
    if status == "failed" and rf.status ~= "failed" then
        dict:incr("refunded:" .. rf.reference, -rf.amount, 0)
    elseif status ~= "failed" and rf.status == "failed" then
        dict:incr("refunded:" .. rf.reference, rf.amount, 0)
    end
    rf.status = status
    rf.pinned = true
    rf.refunded_at = status == "processed" and (rf.refunded_at or ngx.time())
        or nil
    save("refund:" .. rid, rf)
    return send(200, { id = tonumber(rid), status = status })
end

-- the API

ngx.req.read_body()
local raw = ngx.req.get_body_data() or ""

local n = dict:incr("requests", 1, 0)
local h = ngx.req.get_headers()
dict:set("request:" .. n, cjson.encode({
    method = method, uri = uri, body = raw,
    authorization = h["authorization"],
    content_type = h["content-type"],
    request_id = h["x-request-id"],
}))

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
    return refuse(429, "Too many requests. Please try again later.")
end

if fault == "500" then
    return refuse(500, "An error occurred while processing your request.")
end

if h["authorization"] ~= "Bearer " .. secret then
    return refuse(401, "Invalid key")
end

-- GET /balance: what a connected account's key is checked with
if method == "GET" and uri == "/balance" then
    return send(200, { status = true, message = "Balances retrieved",
        data = { { currency = "NGN", balance = 0 } } })
end

-- an integer number of subunits, given as a number or a string
local function subunits(v)
    local a = tonumber(v)
    if type(v) ~= "number" and type(v) ~= "string" then return nil end
    if not a or a < 1 or a ~= math.floor(a) then return nil end
    return a
end

local function refunded(reference)
    return dict:get("refunded:" .. reference) or 0
end

-- a transaction as GET /transaction/verify shows it
local function transaction(tx)
    local status = tx.status
    if status == "success" and refunded(tx.reference) >= tx.amount then
        status = "reversed"
    end
    local paid = tx.status == "success"
    local tried = paid or tx.status == "failed"
    local gateway = {
        success = "Successful", failed = "Declined",
        abandoned = "The transaction was not completed",
        ongoing = "Transaction ongoing", pending = "Transaction pending",
    }
    local authorization = {}
    if tried then
        authorization = {
            authorization_code = "AUTH_" .. tx.access_code,
            bin = "408408", last4 = "4081", exp_month = "12",
            exp_year = "2030", channel = "card", card_type = "visa ",
            bank = "TEST BANK", country_code = "NG", brand = "visa",
            reusable = paid, signature = "SIG_" .. tx.access_code,
            account_name = cjson.null,
        }
    end
    local paid_at = tx.paid_at and iso(tx.paid_at) or cjson.null
    return {
        id = tx.id, domain = "test", status = status,
        reference = tx.reference, receipt_number = cjson.null,
        amount = tx.amount, message = cjson.null,
        gateway_response = gateway[tx.status],
        paid_at = paid_at, created_at = iso(tx.created),
        channel = "card", currency = tx.currency,
        ip_address = tried and "127.0.0.1" or cjson.null,
        metadata = tx.metadata,
        log = tried and {
            start_time = tx.created, time_spent = 4, attempts = 1,
            errors = paid and 0 or 1, success = paid, mobile = false,
            history = {
                { type = "action", message = "Attempted to pay with card",
                  time = 3 },
                paid and { type = "success",
                    message = "Successfully paid with card", time = 4 }
                or { type = "error", message = "Error: Declined",
                    time = 4 },
            },
        } or cjson.null,
        fees = paid and tx.fees or cjson.null,
        fees_split = cjson.null,
        authorization = authorization,
        customer = tx.customer,
        plan = cjson.null, split = {}, order_id = cjson.null,
        paidAt = paid_at, createdAt = iso(tx.created),
        requested_amount = tx.amount,
        pos_transaction_data = cjson.null, source = cjson.null,
        fees_breakdown = cjson.null, connect = cjson.null,
        transaction_date = iso(tx.created),
        plan_object = {}, subaccount = {},
    }
end

-- a refund as POST /refund (with the transaction) and GET /refund/:id
-- (with its id) show it
local function refund_object(rf, tx, full)
    local trans = tx.id
    if full then
        local paid_at = tx.paid_at and iso(tx.paid_at) or cjson.null
        trans = {
            id = tx.id, domain = "test", reference = tx.reference,
            amount = tx.amount, paid_at = paid_at, channel = "card",
            currency = tx.currency,
            authorization = { exp_month = "12", exp_year = "2030",
                account_name = cjson.null },
            customer = { international_format_phone = cjson.null },
            plan = {}, subaccount = { currency = cjson.null }, split = {},
            order_id = cjson.null, paidAt = paid_at,
            pos_transaction_data = cjson.null, source = cjson.null,
            fees_breakdown = cjson.null,
        }
    end
    return {
        id = rf.id, integration = 100032, domain = "test",
        transaction = trans, dispute = cjson.null, settlement = cjson.null,
        amount = rf.amount, deducted_amount = 0, fully_deducted = false,
        currency = rf.currency, channel = "card", status = rf.status,
        refunded_by = "emulator@paystack.test",
        refunded_at = rf.refunded_at and iso(rf.refunded_at) or cjson.null,
        expected_at = iso(rf.created + 7 * 86400),
        customer_note = rf.customer_note, merchant_note = rf.merchant_note,
        createdAt = iso(rf.created), updatedAt = iso(rf.updated),
    }
end

local function text_or_null(v)
    return type(v) == "string" and v or cjson.null
end

if method == "POST" and uri == "/transaction/initialize" then
    local b = cjson.decode(raw)
    if type(b) ~= "table" then
        return refuse(400, "Invalid JSON body")
    end
    if type(b.email) ~= "string"
        or not b.email:match("^[^@%s]+@[^@%s]+%.[^@%s]+$")
    then
        return refuse(400, "Invalid Email Address Passed")
    end
    local amount = subunits(b.amount)
    if not amount then
        return refuse(400, "Invalid Amount Sent")
    end
    local currency = b.currency or "NGN"
    if type(currency) ~= "string" or not currency:match("^%u%u%u$") then
        return refuse(400, "Currency not supported by merchant")
    end
    local reference = b.reference
    if reference == nil or reference == cjson.null then
        reference = random_code(10)
    end
    reference = tostring(reference)

    local metadata = b.metadata
    if type(metadata) == "string" then
        metadata = cjson.decode(metadata) or metadata
    elseif metadata == nil or metadata == cjson.null then
        metadata = ""
    end

    local tx = {
        id = next_id(4000000000), reference = reference,
        access_code = random_code(15), amount = amount,
        currency = currency, created = ngx.time(),
        callback_url = b.callback_url, metadata = metadata,
        fees = math.floor(amount * 0.015),
        customer = {
            id = next_id(90000000), first_name = cjson.null,
            last_name = cjson.null, email = b.email,
            customer_code = "CUS_" .. random_code(15), phone = cjson.null,
            metadata = cjson.null, risk_action = "default",
            international_format_phone = cjson.null,
        },
        status = "abandoned",
    }
    local localpart = b.email:match("^([^@]*)@")
    if localpart:sub(1, 8) == "success+" then
        tx.status = "success"
        tx.paid_at = ngx.time()
    elseif localpart:sub(1, 7) == "failed+" then
        tx.status = "failed"
    end

    -- every reference once, even for requests at the same time
    local ok = dict:add("tx:" .. reference, cjson.encode(tx))
    if not ok then
        return refuse(400, "Duplicate Transaction Reference")
    end
    dict:set("txid:" .. tx.id, reference)

    return send(200, { status = true,
        message = "Authorization URL created", data = {
            authorization_url = "https://checkout.paystack.com/"
                .. tx.access_code,
            access_code = tx.access_code, reference = reference } })
end

ref = uri:match("^/transaction/verify/(.+)$")
if method == "GET" and ref then
    local tx = load("tx:" .. ref)
    if not tx then
        return send(400, { status = false,
            message = "Transaction reference not found" })
    end
    return send(200, { status = true, message = "Verification successful",
        data = transaction(tx) })
end

if method == "POST" and uri == "/refund" then
    local b = cjson.decode(raw)
    if type(b) ~= "table" then
        return refuse(400, "Invalid JSON body")
    end
    local key = b.transaction
    if type(key) ~= "string" and type(key) ~= "number" then
        return refuse(400, "Transaction reference or id is required")
    end
    local reference = dict:get("txid:" .. tostring(key)) or tostring(key)
    local tx = load("tx:" .. reference)
    if not tx then
        return refuse(404, "Transaction not found")
    end
    if tx.status ~= "success" then
        return refuse(400, "Cannot refund a transaction that is not "
            .. "successful")
    end
    if b.currency ~= nil and b.currency ~= tx.currency then
        return refuse(400, "Currency does not match the transaction's "
            .. "currency")
    end
    local left = tx.amount - refunded(reference)
    local amount = left
    if b.amount ~= nil and b.amount ~= cjson.null then
        amount = subunits(b.amount)
        if not amount then
            return refuse(400, "Invalid Amount Sent")
        end
    end

    -- taken atomically, so that refunds at the same time cannot together
    -- exceed the transaction
    local now = dict:incr("refunded:" .. reference, amount, 0)
    if now > tx.amount then
        dict:incr("refunded:" .. reference, -amount)
        if now - amount >= tx.amount then
            return refuse(400, "Transaction has been fully reversed",
                "api_error", "transaction_reversed")
        end
        return refuse(400, "Refund amount cannot be more than the "
            .. "transaction's unrefunded amount")
    end

    local rf = {
        id = next_id(3000000), reference = reference, amount = amount,
        currency = tx.currency, status = "pending",
        customer_note = text_or_null(b.customer_note),
        merchant_note = text_or_null(b.merchant_note),
        created = ngx.time(), updated = ngx.time(), fetches = 0,
    }
    save("refund:" .. rf.id, rf)
    return send(200, { status = true,
        message = "Refund has been queued for processing",
        data = refund_object(rf, tx, true) })
end

rid = uri:match("^/refund/(%d+)$")
if method == "GET" and rid then
    local rf = load("refund:" .. rid)
    if not rf then
        return send(404, { status = false, message = "Refund not found" })
    end
    rf.fetches = rf.fetches + 1
    if rf.status == "pending" and not rf.pinned and rf.amount ~= 13
        and rf.fetches >= 2
    then
        rf.status = "processed"
        rf.refunded_at = ngx.time()
        rf.updated = ngx.time()
    end
    save("refund:" .. rid, rf)
    local tx = load("tx:" .. rf.reference)
    return send(200, { status = true, message = "Refund retrieved",
        data = refund_object(rf, tx, false) })
end

return refuse(404, "Not found: " .. method .. " " .. uri)
