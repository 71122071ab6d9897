-- wrk script: check_code.lua's checks, each request made by request() (wrk's dynamic mode, for
-- every target of a run alike: wrk's static mode with check_code.lua alone drove a 7 MB listing a
-- third slower from the same two cores, which would tilt a ratio between targets that differ).
-- With a file after `--`, each request carries the next of its API tokens (one per line), every
-- thread on its own share of them, so that a target at the default rate limits (1 call per second
-- per token) is measured without a refusal; without one, wrk's own request (its -H headers).
-- Usage: wrk -t2 ... -s bench/rotate_tokens.lua URL [-- TOKENS_FILE THREADS]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "check_code.lua")

local check_setup, check_init = setup, init
local made = 0

function setup(thread)
  check_setup(thread)
  made = made + 1
  thread:set("index", made)
end

function init(args)
  check_init(args)
  tokens, pos = {}, 0
  if args[1] == nil then
    return
  end
  local every, i = tonumber(args[2]), 0
  for line in io.lines(args[1]) do
    if i % every == index - 1 then
      table.insert(tokens, line)
    end
    i = i + 1
  end
end

function request()
  if #tokens == 0 then
    return wrk.format()
  end
  pos = pos % #tokens + 1
  return wrk.format(nil, nil, { ["auth"] = tokens[pos] })
end
