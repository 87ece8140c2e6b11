-- A local Flutterwave (v3) for tests and `make run`: the Standard
-- (hosted checkout) flow PayFlow uses, answered in Flutterwave's wire
-- format (https://developer.flutterwave.com/v3.0/reference): JSON both
-- ways, `Authorization: Bearer FLWSECK_TEST-...`, every answer
-- {"status": "success"|"error", "message": "...", "data": ...}.
--
-- AMOUNTS ARE DECIMAL MAJOR UNITS: "amount": 100.50 is one hundred naira
-- and fifty kobo, not 100.50 kobo.  Requests may send a number or a numeric
-- string; answers are JSON numbers (100.5, 2500).  Internally kept in
-- hundredths, so at most two decimals count.
--
--   POST /v3/payments                    {tx_ref, amount, currency,
--        redirect_url, customer{email, name, phonenumber}, customizations,
--        meta}: the hosted checkout link ("Hosted Link")
--   GET  /v3/transactions/verify_by_reference?tx_ref=...   the transaction
--   POST /v3/transactions/:id/refund     {amount, comments}: a refund
--   GET  /v3/refunds/:id                 the refund
--
-- As at Flutterwave, creating the link makes no transaction: until the
-- customer does something on the checkout page, verify_by_reference answers
-- 400 "No transaction was found for this id" (not a failure: not paid yet).
-- The customer's side:
--   - automatically, by the customer's e-mail local part: "success+..."
--     pays at once (status successful), "failed+..." fails at once
--     (failed); any other address waits for the hook;
--   - or POST /_emulator/complete/:tx_ref with body successful, failed or
--     pending, as if the customer had done that on the checkout page (a
--     pending one is, say, a bank transfer not yet arrived).
-- The transaction's numeric id (for the refund) is in the verify answer.
--
-- A refund is "completed" at once, except one of exactly 13 (major units,
-- amount_refunded 13): that one is "processing" and stays so, for testing
-- asynchronous refunds.  POST /_emulator/refund/:id/status with a body
-- (completed, processing, failed, ...) sets a refund's status.
--
-- Faults for the next API request are queued with POST /_emulator/fault
-- (body: timeout, drop, 500, 429 or refuse): "timeout" and "drop" do the
-- work (link, refund) and then sleep or close the connection, the ambiguous
-- cases; "refuse" closes it with nothing done.  Every API request is
-- recorded (GET /_emulator/requests; DELETE flushes everything).
--
-- nginx.conf:  lua_shared_dict flutterwave 4m;
--              set $flutterwave_secret FLWSECK_TEST-...;  (the expected key)
--              content_by_lua_file .../flutterwave.lua;

local cjson = require "cjson.safe"

-- a second instance in the same nginx keeps its own state:
-- set $flutterwave_dict <its lua_shared_dict>;
local dict = ngx.shared[ngx.var.flutterwave_dict or "flutterwave"]
local secret = ngx.var.flutterwave_secret
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
    -- lua-cjson writes "/" as "\/"; Flutterwave does not
    ngx.print((cjson.encode(body):gsub("\\/", "/")))
    return ngx.exit(status)
end

-- Flutterwave's refusals
local function refuse(status, message)
    return send(status, { status = "error", message = message,
        data = cjson.null })
end

local function ok(message, data)
    return send(200, { status = "success", message = message, data = data })
end

if not package.loaded["emulator.seeded"] then
    math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
    package.loaded["emulator.seeded"] = true
end

local function random_hex(n)
    local t = {}
    for i = 1, n do
        t[i] = string.format("%x", math.random(0, 15))
    end
    return table.concat(t)
end

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

-- major units (number or numeric string) to hundredths, and back
local function hundredths(v)
    if type(v) ~= "number" and type(v) ~= "string" then return nil end
    local a = tonumber(v)
    if not a or a <= 0 then return nil end
    return math.floor(a * 100 + 0.5)
end

local function major(h)
    return h / 100
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

-- the customer acts on the checkout page: the transaction comes to exist
local function attempt(tx, outcome)
    if not tx.id then
        tx.id = next_id(5000000)
        tx.flw_ref = "FLW-MOCK-" .. random_hex(32)
        dict:set("txid:" .. tx.id, tx.tx_ref)
    end
    tx.status = outcome
    tx.attempted = ngx.time()
end

local ref = uri:match("^/_emulator/complete/(.+)$")
if ref and method == "POST" then
    local outcome = body_text()
    local tx = load("tx:" .. ref)
    if not tx then
        return send(404, { error = "no payment " .. ref })
    end
    if outcome ~= "successful" and outcome ~= "failed"
        and outcome ~= "pending"
    then
        return send(400, { error = "outcome: successful, failed or pending" })
    end
    attempt(tx, outcome)
    save("tx:" .. ref, tx)
    return send(200, { tx_ref = ref, id = tx.id, status = outcome })
end

local rid = uri:match("^/_emulator/refund/(%d+)/status$")
if rid and method == "POST" then
    local status = body_text()
    local rf = load("refund:" .. rid)
    if not rf then
        return send(404, { error = "no refund " .. rid })
    end
    if not status:match("^[%w-]+$") then
        return send(400, { error = "status: completed, processing, failed, "
            .. "..." })
    end
    if status == "failed" and rf.status ~= "failed" then
        dict:incr("refunded:" .. rf.tx_ref, -rf.amount, 0)
    elseif status ~= "failed" and rf.status == "failed" then
        dict:incr("refunded:" .. rf.tx_ref, rf.amount, 0)
    end
    rf.status = status
    save("refund:" .. rid, rf)
    return send(200, { id = tonumber(rid), status = status })
end

-- the API

ngx.req.read_body()
local raw = ngx.req.get_body_data() or ""

local n = dict:incr("requests", 1, 0)
local h = ngx.req.get_headers()
dict:set("request:" .. n, cjson.encode({
    method = method, uri = uri, args = ngx.var.args, body = raw,
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
    return refuse(429, "Too many requests, please try again later")
end

if fault == "500" then
    -- Flutterwave's server errors have their own shape
    return send(500, { error_id = "ERRNO" .. next_id(100000000) .. "T"
        .. math.floor(ngx.now() * 1000),
        message = "Application error. Please contact support",
        code = "app_error" })
end

if not h["authorization"] then
    return refuse(401, "Authorization required")
end
if h["authorization"] ~= "Bearer " .. secret then
    return refuse(401, "Invalid authorization key")
end

-- GET /v3/balances: what a connected account's key is checked with
if method == "GET" and uri == "/v3/balances" then
    return ok("Wallet balances fetched", { { currency = "NGN",
        available_balance = 0, ledger_balance = 0 } })
end

local ACCOUNT = 20937

-- a transaction as verify_by_reference shows it
local function transaction(tx)
    local fee = math.floor(tx.amount * 0.014 + 0.5)
    local response = {
        successful = "Approved. Successful", failed = "Declined",
        pending = "Pending validation",
    }
    return {
        id = tx.id, tx_ref = tx.tx_ref, flw_ref = tx.flw_ref,
        device_fingerprint = "N/A",
        amount = major(tx.amount), currency = tx.currency,
        charged_amount = major(tx.amount),
        app_fee = major(fee), merchant_fee = 0,
        processor_response = response[tx.status],
        auth_model = "VBVSECURECODE", ip = "127.0.0.1",
        narration = "CARD Transaction ", status = tx.status,
        payment_type = "card", created_at = iso(tx.attempted),
        account_id = ACCOUNT,
        card = {
            first_6digits = "553188", last_4digits = "2950",
            issuer = "MASTERCARD CREDIT", country = "NG",
            type = "MASTERCARD", expiry = "09/32",
        },
        meta = tx.meta,
        amount_settled = tx.status == "successful"
            and major(tx.amount - fee) or 0,
        customer = tx.customer,
    }
end

local function refund_object(rf)
    return {
        id = rf.id, account_id = ACCOUNT, tx_id = rf.tx_id,
        flw_ref = rf.flw_ref, wallet_id = 74639,
        amount_refunded = major(rf.amount), status = rf.status,
        destination = "payment_source",
        meta = { source = "availablebalance" },
        created_at = iso(rf.created),
    }
end

local function text_or_null(v)
    return type(v) == "string" and v or cjson.null
end

if method == "POST" and uri == "/v3/payments" then
    local b = cjson.decode(raw)
    if type(b) ~= "table" then
        return refuse(400, "Invalid request body")
    end
    if type(b.tx_ref) ~= "string" or b.tx_ref == "" then
        return refuse(400, "tx_ref is required")
    end
    local amount = hundredths(b.amount)
    if not amount then
        return refuse(400, "amount is required and must be a positive "
            .. "number")
    end
    local currency = b.currency or "NGN"
    if type(currency) ~= "string" or not currency:match("^%u%u%u$") then
        return refuse(400, "Invalid currency")
    end
    local c = b.customer
    if type(c) ~= "table" or type(c.email) ~= "string"
        or not c.email:match("^[^@%s]+@[^@%s]+%.[^@%s]+$")
    then
        return refuse(400, "customer.email is required")
    end

    local tx = {
        tx_ref = b.tx_ref, amount = amount, currency = currency,
        redirect_url = b.redirect_url,
        meta = type(b.meta) == "table" and b.meta or cjson.null,
        customer = {
            id = next_id(2000000), name = text_or_null(c.name),
            phone_number = text_or_null(c.phonenumber), email = c.email,
            created_at = iso(ngx.time()),
        },
    }
    local localpart = c.email:match("^([^@]*)@")
    if localpart:sub(1, 8) == "success+" then
        attempt(tx, "successful")
    elseif localpart:sub(1, 7) == "failed+" then
        attempt(tx, "failed")
    end

    -- every tx_ref once, even for requests at the same time
    if not dict:add("tx:" .. tx.tx_ref, cjson.encode(tx)) then
        return refuse(400, "Duplicate tx_ref: a transaction with this "
            .. "reference already exists")
    end

    return ok("Hosted Link", {
        link = "https://checkout.flutterwave.com/v3/hosted/pay/"
            .. random_hex(20) })
end

if method == "GET" and uri == "/v3/transactions/verify_by_reference" then
    local args = ngx.req.get_uri_args()
    local tx_ref = args.tx_ref
    if type(tx_ref) ~= "string" or tx_ref == "" then
        return refuse(400, "tx_ref is required")
    end
    local tx = load("tx:" .. tx_ref)
    if not tx or not tx.id then
        return refuse(400, "No transaction was found for this id")
    end
    return ok("Transaction fetched successfully", transaction(tx))
end

local tid = uri:match("^/v3/transactions/(%d+)/refund$")
if method == "POST" and tid then
    local b = cjson.decode(raw ~= "" and raw or "{}")
    if type(b) ~= "table" then
        return refuse(400, "Invalid request body")
    end
    local tx_ref = dict:get("txid:" .. tid)
    local tx = tx_ref and load("tx:" .. tx_ref)
    if not tx then
        return refuse(400, "No transaction was found for this id")
    end
    if tx.status ~= "successful" then
        return refuse(400, "Only successful transactions can be refunded")
    end
    local left = tx.amount - (dict:get("refunded:" .. tx_ref) or 0)
    local amount = left
    if b.amount ~= nil and b.amount ~= cjson.null then
        amount = hundredths(b.amount)
        if not amount then
            return refuse(400, "amount must be a positive number")
        end
    end

    -- taken atomically, so that refunds at the same time cannot together
    -- exceed the transaction
    local now = dict:incr("refunded:" .. tx_ref, amount, 0)
    if now > tx.amount then
        dict:incr("refunded:" .. tx_ref, -amount)
        if now - amount >= tx.amount then
            return refuse(400, "Transaction has been fully refunded")
        end
        return refuse(400, "Refund amount cannot be greater than the "
            .. "transaction's unrefunded amount")
    end

    local rf = {
        id = next_id(70000), tx_id = tx.id, tx_ref = tx_ref,
        flw_ref = "URF_" .. math.floor(ngx.now() * 1000) .. "_"
            .. math.random(1000000, 9999999),
        amount = amount, status = amount == 1300 and "processing"
            or "completed",
        comments = text_or_null(b.comments), created = ngx.time(),
    }
    save("refund:" .. rf.id, rf)
    return ok("Transaction refund initiated", refund_object(rf))
end

local rid2 = uri:match("^/v3/refunds/(%d+)$")
if method == "GET" and rid2 then
    local rf = load("refund:" .. rid2)
    if not rf then
        return refuse(404, "Refund not found")
    end
    return ok("Refund fetched", refund_object(rf))
end

return refuse(404, "Not found: " .. method .. " " .. uri)
