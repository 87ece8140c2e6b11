-- wrk: every request carries one of 10 000 keys in X-Key
math.randomseed(os.time())

request = function()
    return wrk.format(nil, nil, { ["X-Key"] = "k" .. math.random(1, 10000) })
end
