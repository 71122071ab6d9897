-- wrk script: every answer counts as an error unless its status is 2xx AND its JSON body ends
-- with "code":0 (openclore answers errors with HTTP 200 and a non-zero code). The counts are
-- printed by done() on one line starting with OPENCLORE-CHECK, which bench/_common.py reads.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  responses = 0
  bad_status = 0
  bad_code = 0
  no_code = 0
end

local function body_code(body)
  -- the listing ends with ,"code":0} : look at the tail first (cheap on a multi-MB body)
  local code = string.match(string.sub(body, -48), '"code":%s*(%-?%d+)%s*}%s*$')
  if code == nil and #body <= 65536 then
    for c in string.gmatch(body, '"code":%s*(%-?%d+)') do
      code = c -- the last one: the top-level code closes the object
    end
  end
  return code
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    bad_status = bad_status + 1
    return
  end
  local code = body_code(body)
  if code == nil then
    no_code = no_code + 1
  elseif code ~= "0" then
    bad_code = bad_code + 1
  end
end

function done(summary, latency, requests)
  local n, s, c, m = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    n = n + t:get("responses")
    s = s + t:get("bad_status")
    c = c + t:get("bad_code")
    m = m + t:get("no_code")
  end
  local e = summary.errors
  io.write(string.format(
    "OPENCLORE-CHECK responses=%d bad_status=%d bad_code=%d no_code=%d " ..
    "connect=%d read=%d write=%d timeout=%d\n",
    n, s, c, m, e.connect, e.read, e.write, e.timeout))
end
