-- wrk scenarios of the load harness (benches/load, issue #6). The harness writes this file
-- to its temporary directory and sets every parameter through the environment for each run;
-- nothing secret is stored here. `done` prints one JSON line the harness parses.
--
--   QLOAD_MODE         create | fetch | lookup | mixed | erase | plain | bao_create | bao_encrypt | bao_decrypt
--   QLOAD_AUTH_NAME    header carrying the credential (Authorization, X-Vault-Token)
--   QLOAD_AUTH_VALUE   its value
--   QLOAD_SUBJECTS     preloaded subjects p-00000000 … (fetch, lookup, mixed, plain) or keys k-000000 … (bao_encrypt)
--   QLOAD_BODY         request body (create, mixed writes, bao_encrypt); its identity.iin is replaced per request
--   QLOAD_IIN_PRELOADED  the number whose IIN the first preloaded subject has (see iin(); p-i has that + i)
--   QLOAD_IIN_BASE     the first number of this point's own IINs (create: every new subject gets its own)
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
local iin_preloaded = tonumber(os.getenv("QLOAD_IIN_PRELOADED") or "0")
local iin_base = tonumber(os.getenv("QLOAD_IIN_BASE") or "0")

-- The body around its IIN, so each subject is sent its own (the vault keeps identity.iin
-- unique): nil when the body has none.
local body_pre, body_post = body:match('^(.*"identity%.iin":")%d%d%d%d%d%d%d%d%d%d%d%d(".*)$')

local counter = 0
local keys, bodies = {}, {}
local handler

-- `tid` is a global set in each thread's Lua state by setup() before init() runs.
local next_thread = 0
local all_threads = {}
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  all_threads[#all_threads + 1] = thread
end

local function subject()
  return string.format("p-%08d", math.random(0, subjects - 1))
end

-- The IIN numbered n, as qoima_proc::iin builds it: the ten digits of n, the first tweak digit
-- (0 unless that leaves no check digit, then 1) and the Kazakh check digit (weights 1..11;
-- if the sum mod 11 is 10, weights 3..11,1,2).
local w1 = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 }
local w2 = { 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2 }
local function iin(n)
  local p = string.format("%010d", n)
  local d = {}
  for k = 1, 10 do
    d[k] = p:byte(k) - 48
  end
  for tweak = 0, 9 do
    d[11] = tweak
    local function sum(w)
      local s = 0
      for k = 1, 11 do
        s = s + d[k] * w[k]
      end
      return s % 11
    end
    local c = sum(w1)
    if c == 10 then
      c = sum(w2)
    end
    if c ~= 10 then
      return p .. tweak .. c
    end
  end
end

-- The write body for the subject whose IIN is numbered n.
local function body_for(n)
  if body_pre then
    return body_pre .. iin(n) .. body_post
  end
  return body
end

-- Lookups answered 200 without exactly one preloaded subject (summed in done()).
misses = 0

local handlers = {
  plain = function()
    return wrk.format("GET", "/v1/subjects/" .. subject() .. "?purpose=loan_issuance")
  end,
  create = function()
    local n = iin_base + counter * threads + tid
    counter = counter + 1
    return wrk.format("PUT", string.format("/v1/subjects/%s-%d-%d", run, tid, counter), nil, body_for(n))
  end,
  lookup = function()
    local i = math.random(0, subjects - 1)
    local q = '{"field":"identity.iin","value":"' .. iin(iin_preloaded + i) .. '","purpose":"loan_issuance"}'
    return wrk.format("POST", "/v1/lookup", nil, q)
  end,
  mixed = function()
    local i = math.random(0, subjects - 1)
    local path = string.format("/v1/subjects/p-%08d", i)
    if math.random() < 0.2 then
      -- The subject's own IIN: the same 1 KiB it was preloaded with.
      return wrk.format("PUT", path, nil, body_for(iin_preloaded + i))
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

-- Only for lookups: wrk reads every response's headers and body once `response` exists.
if mode == "lookup" then
  function response(status, headers, resp)
    if status == 200 and not resp:find('"subjects":%["p%-%d+"%]') then
      misses = misses + 1
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local missed = 0
  for _, t in ipairs(all_threads) do
    missed = missed + (t:get("misses") or 0)
  end
  io.write(string.format(
    'QLOAD_RESULT {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,'
      .. '"status":%.0f,"timeout":%.0f,"misses":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f,"max":%.0f,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, missed,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
