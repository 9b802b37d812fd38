-- ours-direct: wrk thread i loads backend i (BACKEND_PORTS="8001,8002"), bypassing nginx.
local ports = {}
for p in string.gmatch(os.getenv("BACKEND_PORTS") or "", "%d+") do
  table.insert(ports, p)
end
local n = 0

function setup(thread)
  n = n + 1
  thread.addr = wrk.lookup("127.0.0.1", ports[(n - 1) % #ports + 1])[1]
end
