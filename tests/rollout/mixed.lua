-- Mixed load for the rollout tests: 70% GET /test, 30% POST /echo with a 512-byte body, on keep-alive
-- connections (wrk's default).
local body = string.rep("x", 512)
local headers = { ["Content-Type"] = "application/octet-stream" }
-- Pace each connection (WRK_PACE_MS between its requests, default 80: about 12 requests/s each) so the
-- 2-core machine keeps room for the rollout; 0 = as fast as possible.
local pace = tonumber(os.getenv("WRK_PACE_MS") or "80")
delay = function()
  return pace
end

request = function()
  if math.random(1, 10) <= 3 then
    return wrk.format("POST", "/echo", headers, body)
  end
  return wrk.format("GET", "/test")
end
