-- A tenant's webhook receiver for tests and `make run`: records every
-- request (GET /_receiver/requests, a JSON array; DELETE flushes) and
-- answers by the last part of its path:
--
--   /hook/ok        200
--   /hook/500       500
--   /hook/410       410 Gone
--   /hook/slow      200 after 2 s (past a 1 s delivery timeout)
--   /hook/wait      200 after 300 ms
--   /hook/big       200 with a 10 KB body
--   /hook/redirect  302 to /hook/ok (a redirect is not success)
--   anything else   404
--
-- nginx.conf:  lua_shared_dict receiver 16m;
--              content_by_lua_file .../receiver.lua;

local cjson = require "cjson.safe"

local dict = ngx.shared.receiver
local uri = ngx.var.uri

if uri == "/_receiver/requests" then
    if ngx.req.get_method() == "DELETE" then
        dict:flush_all()
        return ngx.exit(204)
    end
    local list = {}
    for i = 1, dict:get("n") or 0 do
        list[#list + 1] = dict:get("r:" .. i)
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print("[" .. table.concat(list, ",") .. "]")
    return ngx.exit(200)
end

ngx.req.read_body()
local h = ngx.req.get_headers()
local n = dict:incr("n", 1, 0)
dict:set("r:" .. n, cjson.encode({
    uri = uri, method = ngx.req.get_method(),
    body = ngx.req.get_body_data() or "",
    id = h["webhook-id"], timestamp = h["webhook-timestamp"],
    signature = h["webhook-signature"], request_id = h["x-request-id"],
    content_type = h["content-type"], at = ngx.now(),
}))

local what = uri:match("^/hook/(%w+)$")

if what == "ok" then
    return ngx.exit(200)
elseif what == "500" then
    return ngx.exit(500)
elseif what == "410" then
    return ngx.exit(410)
elseif what == "slow" then
    ngx.sleep(2)
    return ngx.exit(200)
elseif what == "wait" then
    ngx.sleep(0.3)
    return ngx.exit(200)
elseif what == "big" then
    ngx.header["Content-Type"] = "text/html"
    ngx.print(string.rep("<p>thanks</p>", 800))
    return ngx.exit(200)
elseif what == "redirect" then
    return ngx.redirect("/hook/ok", 302)
end

return ngx.exit(404)
