-- wrk scenarios of the load harness (benches/load, issue #6). The harness writes this file
-- to its temporary directory and sets every parameter through the environment for each run;
-- nothing secret is stored here. `done` prints one JSON line the harness parses.
--
--   QLOAD_MODE         create | fetch | mixed | erase | plain | bao_create | bao_encrypt | bao_decrypt
--   QLOAD_AUTH_NAME    header carrying the credential (Authorization, X-Vault-Token)
--   QLOAD_AUTH_VALUE   its value
--   QLOAD_SUBJECTS     preloaded subjects p-00000000 … (fetch, mixed, plain) or keys k-000000 … (bao_encrypt)
--   QLOAD_BODY         request body (create, mixed writes, bao_encrypt)
--   QLOAD_RUN          unique prefix of ids created in this run (create, bao_create)
--   QLOAD_POOL         id prefix of the subjects this run erases (erase)
--   QLOAD_THREADS      wrk threads (erase: thread t erases t, t + threads, …)
--   QLOAD_DATA         file of "key<TAB>body" lines (bao_decrypt)

local mode = os.getenv("QLOAD_MODE") or "plain"
local auth_name = os.getenv("QLOAD_AUTH_NAME") or "Authorization"
local auth_value = os.getenv("QLOAD_AUTH_VALUE") or ""
local subjects = tonumber(os.getenv("QLOAD_SUBJECTS") or "1")
local body = os.getenv("QLOAD_BODY") or ""
local run = os.getenv("QLOAD_RUN") or "r"
local pool = os.getenv("QLOAD_POOL") or "e"
local threads = tonumber(os.getenv("QLOAD_THREADS") or "1")
local data_file = os.getenv("QLOAD_DATA")

local counter = 0
local keys, bodies = {}, {}
local handler

-- `tid` is a global set in each thread's Lua state by setup() before init() runs.
local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

local function subject()
  return string.format("p-%08d", math.random(0, subjects - 1))
end

local handlers = {
  plain = function()
    return wrk.format("GET", "/v1/subjects/" .. subject() .. "?purpose=loan_issuance")
  end,
  create = function()
    counter = counter + 1
    return wrk.format("PUT", string.format("/v1/subjects/%s-%d-%d", run, tid, counter), nil, body)
  end,
  mixed = function()
    local path = "/v1/subjects/" .. subject()
    if math.random() < 0.2 then
      return wrk.format("PUT", path, nil, body)
    end
    return wrk.format("GET", path .. "?purpose=loan_issuance")
  end,
  erase = function()
    local k = tid + counter * threads
    counter = counter + 1
    return wrk.format("POST", string.format("/v1/subjects/%s-%06d/erasure", pool, k))
  end,
  bao_create = function()
    counter = counter + 1
    return wrk.format("POST", string.format("/v1/transit/keys/%s-%d-%d", run, tid, counter))
  end,
  bao_encrypt = function()
    return wrk.format("POST", string.format("/v1/transit/encrypt/k-%06d", math.random(0, subjects - 1)), nil, body)
  end,
  bao_decrypt = function()
    local i = math.random(1, #keys)
    return wrk.format("POST", "/v1/transit/decrypt/" .. keys[i], nil, bodies[i])
  end,
}
handlers.fetch = handlers.plain

function init(args)
  tid = tid or 0
  math.randomseed(7919 * tid + 17)
  wrk.headers[auth_name] = auth_value
  wrk.headers["Content-Type"] = "application/json"
  if data_file then
    for line in io.lines(data_file) do
      local k, b = line:match("^([^\t]+)\t(.*)$")
      if k then
        keys[#keys + 1] = k
        bodies[#bodies + 1] = b
      end
    end
  end
  handler = handlers[mode]
end

function request()
  return handler()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'QLOAD_RESULT {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,'
      .. '"status":%.0f,"timeout":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f,"max":%.0f,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
