-- Mixed load for the rollout tests: 70% GET /test, 30% POST /echo with a 512-byte body.
local body = string.rep("x", 512)
local headers = { ["Content-Type"] = "application/octet-stream" }
-- Pace each connection (about 12 requests/s each) so the 2-core machine keeps room for the rollout.
delay = function()
  return 80
end

request = function()
  if math.random(1, 10) <= 3 then
    return wrk.format("POST", "/echo", headers, body)
  end
  return wrk.format("GET", "/test")
end
