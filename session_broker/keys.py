"""Every Redis key session-broker owns, and every Lua script that changes them.

Why one module: a newcomer can see the whole data model on one screen, an operator can
write ACL rules from it, and a clean-up test can check that nothing else is left behind.

Key schema (``P`` is ``SESSION_BROKER_KEY_PREFIX``, default ``sb``: 1-32 of ``a-z 0-9 _ -``,
never ``.`` or ``:``, so the first ``.`` or ``:`` of any name below ends its tenant's prefix
and one tenant's names never start with another's; see ``config.KEY_PREFIX``)::

    P:s:<sid>            hash   session: state, backend, mode, timers' lengths, counts, pin
    P:s:<sid>:jobs       list   job ids of the session, in submission order
    P:s:<sid>:max        string max-time timer; its EXPIRE *is* the timer (set when the first job starts)
    P:s:<sid>:idle       string interactive timer (set when the session goes idle)
    P:s:<sid>:open       string open-session timer (set at creation, gone at the first job)
    P.session.<sid>      list   the session's Celery queue (kombu's list; plus priority sub-lists)
    P.backend.<name>     list   a backend's shared Celery queue (non-session and batch jobs)
    P:j:<jid>            hash   job record: status, payload, result, timestamps, worker, error
    P:j:<jid>:done       list   a latch: a token is pushed when the job ends; waiters BLPOP it
    P:jobs               zset   job ids by creation time (listing)
    P:sessions           zset   session ids by creation time (listing)
    P:deadlines          zset   session id -> earliest moment one of its timers can expire
    P:wait:<backend>     list   sessions waiting for a worker of the backend (FIFO)
    P:w:<node>           hash   worker registry entry; PEXPIREd by every heartbeat
    P:monitor            string alive while a monitor (``session-broker flower``) is open: task events on
    P:w:<node>:pin       string the session pinned to the worker (no expiry: survives restarts)
    P:w:<node>:run       set    job ids the worker is running
    P:w:<node>:stalled   string pid of this node's executor that left its pin unserved (WORKER_TICK):
                                the node takes no session until another executor is ready
    P:w:<node>:fetch     list   messages the worker's consumer has taken off a queue and not yet
                                handed to kombu's ``unacked`` hash (reliable fetch, transport.py):
                                empty but for an instant; a dead worker's is given back by the reaper
    P:workers            hash   node -> backend, for every registered worker (the reaper's list)
    P:epoch              string pin epoch counter (fencing)
    P:config             hash   the operator's system settings, published by workers at start and
                                again whenever they find it missing (Redis came back empty)
    P:rescue             hash   the unacked rescue's cursor (score, tag): each sweep goes on from
                                where the last one stopped, so the whole ``unacked`` index is covered
    P:counts             hash   jobs ever submitted / ended, by status (Prometheus counters)
    P:hist:<name>        hash   histogram buckets (le -> count, sum, count) for queue_wait,
                                execution and session_idle seconds (Prometheus histograms)
    P:dead               list   task messages the transport refused as malformed (newest first)

Celery's and kombu's names, set from here by ``celery_app`` so that they too are the tenant's
(nothing kombu or Celery keeps is shared between prefixes)::

    P.default                     list   Celery's default queue (unused by our tasks)
    P.control.pidbox              -      remote-control exchange (add_consumer, revoke, ping)
    P.control.node.<node>         list   a worker's remote-control mailbox (kombu declares it)
    P.control.reply.<oid>         list   replies to one remote-control caller
    P.events                      -      Celery's event exchange (what Flower shows)
    P.events.<uuid>               list   one event receiver's queue (Flower's)
    _kombu.binding.P.<exchange>   set    kombu's routing table of an exchange of ours
    _kombu.binding_permanent.P.*  set    ... and its permanent members
    P:kombu.binding_deadlines     zset   kombu's expiry index of routing tables
    P:unacked / P:unacked_index   hash / zset   messages fetched but not acknowledged
    P:unacked_mutex               string kombu's lock around redelivery of those
    P:celery-task-meta-<id>       string Celery result of a task (our tasks store none)
    /P:<db>.<exchange>[/<rkey>]   channel  pub/sub: remote control and events (fanout)
    P:celery-task-meta-<id>       channel  Celery publishes each stored result here too

Priority sub-lists of a queue ``Q`` are ``Q`` + ``\x06\x16`` + 3, 6 or 9 (``queue_keys``).
``acl.py`` builds each tenant's Redis ACL rules from this class, so they follow it.

All timestamps are Redis server time (``TIME``), seconds as floats, so hosts with skewed
clocks agree. Every state change is one script: atomic, and one round trip.
"""

from __future__ import annotations

KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)  # sub-lists kombu adds for priorities other than 0
# Histogram bucket upper bounds (seconds), shared by the Lua that fills them and /metrics.
HISTOGRAM_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                    30, 60, 300, 1800)
HISTOGRAMS = ("queue_wait", "execution", "session_idle")


class Keys:
    """Key names for one prefix (one tenant)."""

    def __init__(self, prefix: str = "sb"):
        self.prefix = prefix

    # sessions
    def session(self, sid: str) -> str:
        return f"{self.prefix}:s:{sid}"

    def session_jobs(self, sid: str) -> str:
        return f"{self.prefix}:s:{sid}:jobs"

    def timer(self, sid: str, which: str) -> str:  # which in {"max", "idle", "open"}
        return f"{self.prefix}:s:{sid}:{which}"

    def session_queue(self, sid: str) -> str:
        return f"{self.prefix}.session.{sid}"

    def backend_queue(self, backend: str) -> str:
        return f"{self.prefix}.backend.{backend}"

    # jobs
    def job(self, jid: str) -> str:
        return f"{self.prefix}:j:{jid}"

    def job_done(self, jid: str) -> str:
        return f"{self.prefix}:j:{jid}:done"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def sessions(self) -> str:
        return f"{self.prefix}:sessions"

    @property
    def deadlines(self) -> str:
        return f"{self.prefix}:deadlines"

    def waiting(self, backend: str) -> str:
        return f"{self.prefix}:wait:{backend}"

    # workers
    def worker(self, node: str) -> str:
        return f"{self.prefix}:w:{node}"

    def worker_pin(self, node: str) -> str:
        return f"{self.prefix}:w:{node}:pin"

    def worker_running(self, node: str) -> str:
        return f"{self.prefix}:w:{node}:run"

    def worker_stalled(self, node: str) -> str:
        return f"{self.prefix}:w:{node}:stalled"

    def worker_fetch(self, node: str) -> str:
        return f"{self.prefix}:w:{node}:fetch"

    @property
    def monitor(self) -> str:
        """Alive (a short TTL, refreshed) while ``session-broker flower`` runs: executors that
        start meanwhile turn their task events on at once (executor.py)."""
        return f"{self.prefix}:monitor"

    @property
    def rescue_cursor(self) -> str:
        return f"{self.prefix}:rescue"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def config(self) -> str:
        return f"{self.prefix}:config"

    @property
    def counts(self) -> str:
        return f"{self.prefix}:counts"

    def histogram(self, name: str) -> str:
        return f"{self.prefix}:hist:{name}"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    # Celery's and kombu's names (see the schema above; celery_app.py applies them)
    @property
    def default_queue(self) -> str:
        return f"{self.prefix}.default"

    @property
    def control_exchange(self) -> str:
        """Celery's ``control_exchange``: the mailbox namespace (kombu appends ``.pidbox``)."""
        return f"{self.prefix}.control"

    @property
    def mailbox_exchange(self) -> str:
        """The remote-control (fanout) exchange, as kombu names it: ``<control_exchange>.pidbox``."""
        return f"{self.control_exchange}.pidbox"

    def mailbox_queue(self, node: str) -> str:
        return f"{self.control_exchange}.node.{node}"

    @property
    def reply_exchange(self) -> str:
        return f"{self.control_exchange}.reply"

    def reply_queue(self, oid: str) -> str:
        return f"{self.reply_exchange}.{oid}"

    @property
    def event_exchange(self) -> str:
        return f"{self.prefix}.events"

    def event_queue(self, uuid: str) -> str:
        return f"{self.event_exchange}.{uuid}"

    def bindings(self, exchange: str) -> list[str]:
        """kombu's routing tables of one exchange (its name starts with ``P.``)."""
        return [f"_kombu.binding.{exchange}", f"_kombu.binding_permanent.{exchange}"]

    @property
    def binding_deadlines(self) -> str:
        return f"{self.prefix}:kombu.binding_deadlines"

    @property
    def unacked(self) -> str:
        return f"{self.prefix}:unacked"

    @property
    def unacked_index(self) -> str:
        return f"{self.prefix}:unacked_index"

    @property
    def unacked_mutex(self) -> str:
        return f"{self.prefix}:unacked_mutex"

    @property
    def result_prefix(self) -> str:
        """Celery's result backend ``global_keyprefix``: its keys are ``P:celery-task-meta-<id>``."""
        return f"{self.prefix}:"

    def result(self, task_id: str) -> str:
        return f"{self.result_prefix}celery-task-meta-{task_id}"

    @property
    def fanout_prefix(self) -> str:
        """kombu's ``fanout_prefix``: pub/sub channel names start with it (kombu fills ``{db}``).

        kombu takes the exchange from a channel name by dropping everything up to the first
        ``.`` when it starts with ``/``: hence ``/P:<db>.`` rather than ``P:...``."""
        return f"/{self.prefix}:{{db}}."

    def channel(self, db: int, exchange: str, routing_key: str = "") -> str:
        """The pub/sub channel kombu publishes a fanout message of ``exchange`` on."""
        name = self.fanout_prefix.format(db=db) + exchange
        return f"{name}/{routing_key}" if routing_key else name

    def queue_keys(self, queue: str) -> list[str]:
        """The Redis keys kombu uses for one queue: the list, its priority sub-lists, its bindings."""
        return [queue, *(f"{queue}{KOMBU_PRIORITY_SEP}{p}" for p in KOMBU_PRIORITY_STEPS),
                *self.bindings(queue)]


# ------------------------------------------------------------------------------------------
# Lua. Each script is PRELUDE + body; ARGV[1] is always the key prefix. Scripts build key
# names from it (a single Redis, not a cluster: we need cross-key atomicity).
# ------------------------------------------------------------------------------------------

PRELUDE = r"""
local P = ARGV[1]
local function now() local t = redis.call('TIME'); return tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local NOW = now()
local function sk(sid) return P .. ':s:' .. sid end
local function jk(jid) return P .. ':j:' .. jid end
local function tk(sid, which) return P .. ':s:' .. sid .. ':' .. which end
local function squeue(sid) return P .. '.session.' .. sid end
local function bqueue(backend) return P .. '.backend.' .. backend end
local function get(key, field) local v = redis.call('HGET', key, field); if v then return v end; return '' end
local function num(key, field) return tonumber(get(key, field)) or 0 end

local BOUNDS = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800}
local function observe(name, value)
  local h = P .. ':hist:' .. name
  local le = '+Inf'
  for _, b in ipairs(BOUNDS) do if value <= b then le = tostring(b); break end end
  redis.call('HINCRBY', h, le, 1)
  redis.call('HINCRBYFLOAT', h, 'sum', value)
  redis.call('HINCRBY', h, 'count', 1)
end

local function drop_queue(q)
  redis.call('DEL', q, q .. '\6\0223', q .. '\6\0226', q .. '\6\0229', '_kombu.binding.' .. q,
    '_kombu.binding_permanent.' .. q)
end

-- Wake everyone waiting on a job: the latch keeps its token until it expires.
local function notify(jid, ttl)
  local d = jk(jid) .. ':done'
  redis.call('DEL', d)
  redis.call('RPUSH', d, '1')
  redis.call('EXPIRE', d, ttl)
end

-- Put the session's earliest timer into the deadline index (or take it out).
local function schedule(sid)
  local best = nil
  for _, which in ipairs({'max', 'idle', 'open'}) do
    local ms = redis.call('PTTL', tk(sid, which))
    if ms >= 0 and (best == nil or ms < best) then best = ms end
  end
  if best == nil or get(sk(sid), 'state') == 'closed' then
    redis.call('ZREM', P .. ':deadlines', sid)
  else
    redis.call('ZADD', P .. ':deadlines', NOW + best / 1000, sid)
  end
end

-- Give the session's worker back (only once nothing of the session is running on it).
local function release_pin(sid)
  local s = sk(sid)
  local w = get(s, 'worker')
  if w ~= '' and num(s, 'running') == 0 then
    if redis.call('GET', P .. ':w:' .. w .. ':pin') == sid then
      redis.call('DEL', P .. ':w:' .. w .. ':pin')
    end
    if redis.call('EXISTS', P .. ':w:' .. w) == 1 then redis.call('HSET', P .. ':w:' .. w, 'pin', '') end
    redis.call('HSET', s, 'worker', '', 'released_at', NOW)
  end
  if get(s, 'waiting') == '1' then
    redis.call('LREM', P .. ':wait:' .. get(s, 'backend'), 0, sid)
    redis.call('HSET', s, 'waiting', '0')
  end
end

-- quiet: do not wake the waiters yet (FINISH when the caller WAITs for a replica first and
-- then runs NOTIFY: a result is delivered only once a replica holds it)
local function finish_job_record(jid, status, code, message, ttl, quiet)
  local j = jk(jid)
  redis.call('HSET', j, 'status', status, 'finished', NOW, 'error_code', code, 'error', message)
  redis.call('HDEL', j, 'payload', 'message')
  redis.call('HINCRBY', P .. ':counts', status, 1)
  redis.call('EXPIRE', j, ttl)
  if not quiet then notify(jid, ttl) end
end

-- Every still-queued job of the session ends with status/code/message.
local function fail_queued(sid, status, code, message)
  local s = sk(sid)
  local ttl = num(s, 'ttl')
  for _, jid in ipairs(redis.call('LRANGE', s .. ':jobs', 0, -1)) do
    if get(jk(jid), 'status') == 'QUEUED' then
      finish_job_record(jid, status, code, message, ttl)
      redis.call('HINCRBY', s, 'queued', -1)
      redis.call('HINCRBY', s, status == 'CANCELLED' and 'cancelled' or 'failed', 1)
    end
  end
end

local function close_now(sid, reason)
  local s = sk(sid)
  local ttl = num(s, 'ttl')
  redis.call('HSET', s, 'state', 'closed', 'accepting', '0', 'closed_at', NOW, 'closed_reason', reason)
  redis.call('DEL', tk(sid, 'max'), tk(sid, 'idle'), tk(sid, 'open'))
  release_pin(sid)
  if get(s, 'mode') == 'session' then drop_queue(squeue(sid)) end
  redis.call('ZREM', P .. ':deadlines', sid)
  redis.call('EXPIRE', s, ttl)
  redis.call('EXPIRE', s .. ':jobs', ttl)
end

-- Apply every timer that has run out. The timer keys' existence is the truth.
local function tick(sid)
  local s = sk(sid)
  local state = get(s, 'state')
  if state == '' or state == 'closed' then return state end
  if state == 'open' and get(s, 'first_job') == '' and redis.call('EXISTS', tk(sid, 'open')) == 0 then
    close_now(sid, 'open_session_timeout')
    return 'closed'
  end
  if get(s, 'started_at') ~= '' and redis.call('EXISTS', tk(sid, 'max')) == 0 then
    fail_queued(sid, 'ERROR', 'session_max_time',
      'session ' .. sid .. ' reached its max_time of ' .. get(s, 'max_time') ..
      ' s before this job started; submit it to a new session')
    close_now(sid, 'max_time')
    return 'closed'
  end
  if state == 'active' and num(s, 'queued') == 0 and num(s, 'running') == 0
     and redis.call('EXISTS', tk(sid, 'idle')) == 0 then
    redis.call('HSET', s, 'state', 'inactive', 'deactivated_at', NOW)
    release_pin(sid)
    if get(s, 'mode') == 'session' then drop_queue(squeue(sid)) end
    schedule(sid)
    return 'inactive'
  end
  return state
end

-- The session has nothing queued or running: close it if closing, else start the idle timer.
local function on_idle(sid)
  local s = sk(sid)
  if num(s, 'queued') > 0 or num(s, 'running') > 0 then return end
  local state = get(s, 'state')
  if state == 'pending_closed' then
    close_now(sid, 'closed')
  elseif state == 'closed' then
    release_pin(sid)
  elseif state == 'active' then
    redis.call('SET', tk(sid, 'idle'), '1', 'EX', num(s, 'interactive_timeout'))
    schedule(sid)
  end
end

-- A session with work and no worker joins its backend's line (at the back, or the front
-- when it lost its worker and should not wait behind newcomers).
local function want_worker(sid, front)
  local s = sk(sid)
  if get(s, 'mode') ~= 'session' or get(s, 'worker') ~= '' or get(s, 'waiting') == '1' then return end
  if get(s, 'state') == 'closed' then return end
  if num(s, 'queued') + num(s, 'running') == 0 then return end
  local line = P .. ':wait:' .. get(s, 'backend')
  if front then redis.call('LPUSH', line, sid) else redis.call('RPUSH', line, sid) end
  redis.call('HSET', s, 'waiting', '1')
end

-- Push a job's message again, at the head of its queue, under a delivery tag of its own.
-- kombu keys its unacked hash by delivery tag: two copies of a message under one tag share
-- one record, so the ack of one copy (say, a copy a claim bounced) deletes the record of the
-- other, and a worker that dies holding that other copy takes the job with it. Every push
-- after the first gets a fresh tag, and the record keeps the latest text (CANCEL_JOB's LREM).
local function repush(jid)
  local j = jk(jid)
  local n = redis.call('HINCRBY', j, 'pushes', 1)
  local msg = string.gsub(get(j, 'message'), '"delivery_tag":"[^"]*"',
    '"delivery_tag":"' .. jid .. '.' .. n .. '"', 1)
  redis.call('HSET', j, 'message', msg)
  redis.call('RPUSH', get(j, 'queue'), msg)
end

-- A decoded kombu envelope of one of our jobs -> its job id, or nil.
local function envelope_job(m)
  if type(m) ~= 'table' or type(m['headers']) ~= 'table' then return nil end
  local jid = m['headers']['id']
  if type(jid) ~= 'string' then return nil end
  return jid
end

-- The message text of one of our jobs (a kombu envelope) -> its job id, or nil.
local function message_job(raw)
  local ok, m = pcall(cjson.decode, raw or '')
  if not ok then return nil end
  return envelope_job(m)
end

-- kombu's record of a fetched message: UNACKED[tag] = [message, exchange, routing_key]
local UNACKED, UNACKED_INDEX = P .. ':unacked', P .. ':unacked_index'  -- Keys.unacked, .unacked_index

-- The job id of the message kombu holds unacked under ``tag``, or nil.
local function unacked_job(tag)
  local ok, entry = pcall(cjson.decode, redis.call('HGET', UNACKED, tag) or '')
  if not ok or type(entry) ~= 'table' then return nil end
  return envelope_job(entry[1])
end

-- Forget kombu's record of a message (what its own ack does).
local function drop_unacked(tag)
  redis.call('ZREM', UNACKED_INDEX, tag)
  redis.call('HDEL', UNACKED, tag)
end

-- A job still QUEUED whose message is held by nobody: push its message again, at the head of
-- its queue. A second copy of a message is harmless (CLAIM runs a job at most once per attempt).
local function give_back(jid)
  local j = jk(jid)
  if get(j, 'status') ~= 'QUEUED' or get(j, 'message') == '' then return 0 end
  repush(jid)
  redis.call('HSET', j, 'requeued_at', NOW)
  return 1
end

-- Messages a consumer moved into its fetch list and never handed to kombu's unacked hash
-- (it died in between): give back each one whose job still waits to run.
local function give_back_fetched(node, only)
  local f = P .. ':w:' .. node .. ':fetch'
  local n = 0
  local entries = only or redis.call('LRANGE', f, 0, -1)
  for _, raw in ipairs(entries) do
    if redis.call('LREM', f, 1, raw) > 0 or not only then
      local jid = message_job(raw)
      if jid then n = n + give_back(jid) end
    end
  end
  if not only then redis.call('DEL', f) end
  return n
end

-- A running job lost its process (child killed, worker dead, hard time limit): queue it
-- again at the head of its queue, or end it when it has used all its attempts.
local function job_lost(jid, node, max_attempts, code, message)
  local j = jk(jid)
  redis.call('SREM', P .. ':w:' .. node .. ':run', jid)
  if get(j, 'status') ~= 'RUNNING' or get(j, 'worker') ~= node then return 'stale' end
  local sid = get(j, 'session')
  local ttl = num(j, 'ttl')
  local retry = code == 'worker_lost' and num(j, 'attempts') < max_attempts
  if retry then
    redis.call('HSET', j, 'status', 'QUEUED', 'claim', '', 'worker', '', 'requeued_at', NOW)
    repush(jid)
  else
    if code == 'worker_lost' then
      message = 'job ' .. jid .. ' killed the worker process running it ' .. get(j, 'attempts') ..
        ' times (limit SESSION_BROKER_MAX_ATTEMPTS=' .. max_attempts .. '); it is not retried: ' .. message
    end
    finish_job_record(jid, 'ERROR', code, message, ttl)
  end
  if sid ~= '' then
    local s = sk(sid)
    redis.call('HINCRBY', s, 'running', -1)
    redis.call('HSET', s, 'served_at', NOW)  -- its executor restarts: the liveness bound starts again
    if retry then
      redis.call('HINCRBY', s, 'queued', 1)
      if get(s, 'state') == 'closed' then
        -- the session was cancelled or expired while this job ran: it may not run again
        local reason = get(s, 'closed_reason')
        local st, cd = 'CANCELLED', 'cancelled'
        if reason == 'max_time' then st, cd = 'ERROR', 'session_max_time' end
        finish_job_record(jid, st, cd, 'job ' .. jid .. ' lost its worker after session ' .. sid .. ' ended (' .. reason .. ')', ttl)
        redis.call('HINCRBY', s, 'queued', -1)
      end
    else
      redis.call('HINCRBY', s, 'failed', 1)
      redis.call('HSET', s, 'last_job_completed', NOW)
    end
    on_idle(sid)
  end
  return retry and 'requeued' or 'failed'
end
"""

# ARGV: P, sid, backend, mode, max_time, interactive_timeout, open_session_timeout, ttl
# The system settings published by the workers (P:config) win over the client's defaults.
OPEN_SESSION = PRELUDE + r"""
local sid = ARGV[2]
local s = sk(sid)
if redis.call('EXISTS', s) == 1 then return redis.error_reply('session id already exists: ' .. sid) end
local cfg = P .. ':config'
local itl = redis.call('HGET', cfg, 'interactive_timeout') or ARGV[6]
local open_timeout = redis.call('HGET', cfg, 'open_session_timeout') or ARGV[7]
local ttl = redis.call('HGET', cfg, 'result_ttl') or ARGV[8]
ARGV[7], ARGV[8] = open_timeout, ttl
redis.call('HSET', s, 'id', sid, 'backend', ARGV[3], 'mode', ARGV[4], 'state', 'open',
  'accepting', '1', 'max_time', ARGV[5], 'interactive_timeout', itl, 'ttl', ttl,
  'created_at', NOW, 'started_at', '', 'closed_at', '', 'last_job_started', '',
  'last_job_completed', '', 'worker', '', 'epoch', '0', 'waiting', '0', 'first_job', '',
  'first_job_cancelled', '', 'queued', 0, 'running', 0, 'done', 0, 'failed', 0, 'cancelled', 0,
  'usage', 0, 'context', '', 'closed_reason', '')
redis.call('SET', tk(sid, 'open'), '1', 'EX', ARGV[7])
redis.call('ZADD', P .. ':sessions', NOW, sid)
redis.call('ZREMRANGEBYSCORE', P .. ':sessions', '-inf', NOW - tonumber(ARGV[8]))
schedule(sid)
return 'ok'
"""

# ARGV: P, jid, sid, backend, primitive, payload, message, queue, ttl, summary(json)
# Returns {'ok', status} or {'error', kind, detail}
SUBMIT = PRELUDE + r"""
local jid, sid, backend = ARGV[2], ARGV[3], ARGV[4]
local j = jk(jid)
local ttl = tonumber(ARGV[9])
if redis.call('EXISTS', j) == 1 then
  -- the same submit again: redis-py retried it after its connection died between this
  -- script and the reply (a failover). Ids are random: the earlier attempt was ours.
  if get(j, 'session') == sid and get(j, 'summary') == ARGV[10] then return {'ok', get(j, 'status')} end
  return {'error', 'duplicate', jid}
end
local status, code, message = 'QUEUED', '', ''
local mode = ''
if sid ~= '' then
  local s = sk(sid)
  if redis.call('EXISTS', s) == 0 then return {'error', 'not_found', sid} end
  local state = tick(sid)
  if get(s, 'backend') ~= backend then return {'error', 'backend_mismatch', get(s, 'backend')} end
  if state == 'pending_closed' or state == 'closed' then
    return {'error', 'closed', state .. ':' .. get(s, 'closed_reason')}
  end
  mode = get(s, 'mode')
  ttl = num(s, 'ttl')
  local first = get(s, 'first_job_cancelled')
  if first ~= '' then
    status, code = 'ERROR', 'first_job_cancelled'
    message = 'the first job of session ' .. sid .. ' (' .. first ..
      ') was cancelled, so every later job of the session fails; open a new session'
  end
end
redis.call('HSET', j, 'id', jid, 'session', sid, 'mode', mode, 'backend', backend,
  'primitive', ARGV[5], 'status', status, 'created', NOW, 'running', '', 'finished', '',
  'worker', '', 'pid', '', 'attempts', 0, 'claim', '', 'error_code', code, 'error', message,
  'queue', ARGV[8], 'ttl', ttl, 'summary', ARGV[10], 'usage', '')
redis.call('ZADD', P .. ':jobs', NOW, jid)
redis.call('ZREMRANGEBYSCORE', P .. ':jobs', '-inf', NOW - ttl)
redis.call('HINCRBY', P .. ':counts', 'submitted', 1)
if sid ~= '' then
  local s = sk(sid)
  redis.call('RPUSH', s .. ':jobs', jid)
  if get(s, 'first_job') == '' then redis.call('HSET', s, 'first_job', jid) end
  redis.call('DEL', tk(sid, 'idle'), tk(sid, 'open'))
end
if status ~= 'QUEUED' then
  finish_job_record(jid, status, code, message, ttl)
  if sid ~= '' then redis.call('HINCRBY', sk(sid), 'failed', 1); schedule(sid) end
  return {'ok', status}
end
redis.call('HSET', j, 'payload', ARGV[6], 'message', ARGV[7])
redis.call('LPUSH', ARGV[8], ARGV[7])
if sid ~= '' then
  redis.call('HINCRBY', sk(sid), 'queued', 1)
  want_worker(sid, false)
  schedule(sid)
end
return {'ok', status}
"""

# ARGV: P, jid, node, pid, context
# Returns {'run', payload, claim, session, epoch} or {'skip', reason}
CLAIM = PRELUDE + r"""
local jid, node = ARGV[2], ARGV[3]
local j = jk(jid)
if redis.call('EXISTS', j) == 0 then return {'skip', 'unknown job'} end
local status = get(j, 'status')
if status ~= 'QUEUED' then return {'skip', 'job is ' .. status} end
local sid, mode = get(j, 'session'), get(j, 'mode')
local pin = redis.call('GET', P .. ':w:' .. node .. ':pin') or ''
local epoch = ''
if sid ~= '' then
  tick(sid)
  if get(j, 'status') ~= 'QUEUED' then return {'skip', 'job is ' .. get(j, 'status')} end
end
if mode == 'session' then
  local s = sk(sid)
  if get(s, 'worker') ~= node then
    -- fetched by a worker that is not (or no longer) the session's: back to the head of its queue
    repush(jid)
    want_worker(sid, true)
    return {'skip', 'session pinned elsewhere'}
  end
  epoch = get(s, 'epoch')
elseif pin ~= '' then
  -- a pinned worker runs its session's jobs and nothing else
  repush(jid)
  return {'skip', 'worker pinned to session ' .. pin}
end
if sid ~= '' then
  local s = sk(sid)
  local first = get(s, 'first_job_cancelled')
  if first ~= '' then
    finish_job_record(jid, 'ERROR', 'first_job_cancelled', 'the first job of session ' .. sid ..
      ' (' .. first .. ') was cancelled, so every later job of the session fails; open a new session', num(j, 'ttl'))
    redis.call('HINCRBY', s, 'queued', -1)
    redis.call('HINCRBY', s, 'failed', 1)
    on_idle(sid)
    return {'skip', 'first job cancelled'}
  end
  local ctx = get(s, 'context')
  if ctx == '' then
    redis.call('HSET', s, 'context', ARGV[5])
  elseif ctx ~= ARGV[5] then
    finish_job_record(jid, 'ERROR', 'failed', 'worker ' .. node .. ' simulates a different device (' ..
      ARGV[5] .. ') than the one the session\'s first job fixed (' .. ctx .. ')', num(j, 'ttl'))
    redis.call('HINCRBY', s, 'queued', -1)
    redis.call('HINCRBY', s, 'failed', 1)
    on_idle(sid)
    return {'skip', 'context mismatch'}
  end
end
observe('queue_wait', NOW - (tonumber(get(j, 'requeued_at')) or num(j, 'created')))
local attempts = redis.call('HINCRBY', j, 'attempts', 1)
local claim = node .. '/' .. attempts
redis.call('HSET', j, 'status', 'RUNNING', 'worker', node, 'pid', ARGV[4], 'running', NOW, 'claim', claim)
redis.call('SADD', P .. ':w:' .. node .. ':run', jid)
if sid ~= '' then
  local s = sk(sid)
  local last = tonumber(get(s, 'last_job_completed'))
  if last and num(s, 'running') == 0 then observe('session_idle', NOW - last) end
  redis.call('HINCRBY', s, 'queued', -1)
  redis.call('HINCRBY', s, 'running', 1)
  redis.call('HSET', s, 'last_job_started', NOW, 'served_at', NOW)
  redis.call('DEL', tk(sid, 'idle'))
  local state = get(s, 'state')
  if get(s, 'started_at') == '' then
    redis.call('HSET', s, 'started_at', NOW)
    redis.call('SET', tk(sid, 'max'), '1', 'EX', num(s, 'max_time'))
  end
  if state == 'open' or state == 'inactive' then redis.call('HSET', s, 'state', 'active') end
  schedule(sid)
end
return {'run', redis.call('HGET', j, 'payload') or '', claim, sid, epoch}
"""

# The job's message is acknowledged here too (ARGV[9], its delivery tag: kombu's unacked
# entry goes), whatever the outcome: its work is over, the record says what came of it. The
# executor then skips kombu's own ack round trip (transport.QoS.ack).
# ARGV[10] = '1': leave the waiters asleep; the caller sends WAIT then NOTIFY in the same
# pipeline, so a producer is woken only once a replica holds the result.
# ARGV: P, jid, claim, status, result, error_code, error, usage, delivery tag ('' = none), quiet
FINISH = PRELUDE + r"""
local jid, claim = ARGV[2], ARGV[3]
local j = jk(jid)
if ARGV[9] and ARGV[9] ~= '' then drop_unacked(ARGV[9]) end
if get(j, 'claim') ~= claim or get(j, 'status') ~= 'RUNNING' then return 'stale' end
local node = get(j, 'worker')
redis.call('SREM', P .. ':w:' .. node .. ':run', jid)
redis.call('HSET', j, 'result', ARGV[5], 'usage', ARGV[8])
observe('execution', NOW - num(j, 'running'))
finish_job_record(jid, ARGV[4], ARGV[6], ARGV[7], num(j, 'ttl'), ARGV[10] == '1')
local sid = get(j, 'session')
if sid ~= '' then
  local s = sk(sid)
  redis.call('HINCRBY', s, 'running', -1)
  redis.call('HINCRBY', s, ARGV[4] == 'DONE' and 'done' or 'failed', 1)
  redis.call('HINCRBYFLOAT', s, 'usage', tonumber(ARGV[8]) or 0)
  redis.call('HSET', s, 'last_job_completed', NOW, 'served_at', NOW)
  on_idle(sid)
end
return 'ok'
"""

# ARGV: P, jid, node, max_attempts, code, message
JOB_LOST = PRELUDE + r"""
return job_lost(ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6])
"""

# An executor died (its supervisor killed it for overrunning its job's hard time limit, or its
# job killed it): settle the job it ran, as JOB_LOST does, and take its message out of kombu's
# unacked hash, where nobody would ack it (kombu would redeliver it after the visibility
# timeout: an hour). A message whose job is still QUEUED (the executor died between fetch and
# claim) is given back first, so its job is never left without a message.
# ARGV: P, node, max_attempts, jid ('' if none), code, message, delivery tag ('' if none)
#   -> JOB_LOST's outcome ('requeued' | 'failed' | 'stale'), or '' without a job
EXECUTOR_LOST = PRELUDE + r"""
local node, jid, tag = ARGV[2], ARGV[4], ARGV[7]
local outcome = ''
if jid ~= '' then outcome = job_lost(jid, node, tonumber(ARGV[3]), ARGV[5], ARGV[6]) end
if tag ~= '' then
  local carried = unacked_job(tag)
  drop_unacked(tag)
  -- job_lost already queued its own job again ('requeued')
  if carried and not (carried == jid and outcome == 'requeued') then give_back(carried) end
end
return outcome
"""

# Wake the waiters of an ended job (after FINISH with quiet = '1' and a WAIT).
# ARGV: P, jid -> 1, or 0 when the job is not final (a stale finish)
NOTIFY = PRELUDE + r"""
local j = jk(ARGV[2])
local status = get(j, 'status')
if status ~= 'DONE' and status ~= 'ERROR' and status ~= 'CANCELLED' then return 0 end
notify(ARGV[2], num(j, 'ttl'))
return 1
"""

# ARGV: P, jid  -> 'cancelled' | 'running' | 'not_found' | <final status>
CANCEL_JOB = PRELUDE + r"""
local jid = ARGV[2]
local j = jk(jid)
if redis.call('EXISTS', j) == 0 then return 'not_found' end
local status = get(j, 'status')
if status == 'RUNNING' then return 'running' end
if status ~= 'QUEUED' then return status end
redis.call('LREM', get(j, 'queue'), 1, get(j, 'message'))
finish_job_record(jid, 'CANCELLED', 'cancelled', 'job ' .. jid .. ' was cancelled before it ran', num(j, 'ttl'))
local sid = get(j, 'session')
if sid ~= '' then
  local s = sk(sid)
  redis.call('HINCRBY', s, 'queued', -1)
  redis.call('HINCRBY', s, 'cancelled', 1)
  if get(s, 'first_job') == jid then redis.call('HSET', s, 'first_job_cancelled', jid) end
  on_idle(sid)
end
return 'cancelled'
"""

# ARGV: P, sid -> new state, or '' when unknown
CLOSE_SESSION = PRELUDE + r"""
local sid = ARGV[2]
local s = sk(sid)
if redis.call('EXISTS', s) == 0 then return '' end
local state = tick(sid)
if state == 'closed' then return state end
redis.call('HSET', s, 'accepting', '0')
if num(s, 'queued') == 0 and num(s, 'running') == 0 then
  close_now(sid, 'closed')
  return 'closed'
end
redis.call('HSET', s, 'state', 'pending_closed', 'closing_at', NOW)
redis.call('DEL', tk(sid, 'idle'), tk(sid, 'open'))
want_worker(sid, false)
schedule(sid)
return 'pending_closed'
"""

# ARGV: P, sid -> 'closed', or '' when unknown
CANCEL_SESSION = PRELUDE + r"""
local sid = ARGV[2]
local s = sk(sid)
if redis.call('EXISTS', s) == 0 then return '' end
local state = tick(sid)
if state == 'closed' then return state end
local first = get(s, 'first_job')
if first ~= '' and get(jk(first), 'status') == 'QUEUED' then redis.call('HSET', s, 'first_job_cancelled', first) end
fail_queued(sid, 'CANCELLED', 'cancelled', 'session ' .. sid .. ' was cancelled before this job ran')
close_now(sid, 'cancelled')
return 'closed'
"""

# ARGV: P, sid -> state after applying due timers ('' when unknown)
TICK_SESSION = PRELUDE + r"""
return tick(ARGV[2])
"""

# ARGV: P, limit -> number of sessions ticked. Any process may run it: workers do, often.
SWEEP_DEADLINES = PRELUDE + r"""
local due = redis.call('ZRANGEBYSCORE', P .. ':deadlines', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[2]))
for _, sid in ipairs(due) do
  if redis.call('EXISTS', sk(sid)) == 0 then redis.call('ZREM', P .. ':deadlines', sid)
  else tick(sid); if get(sk(sid), 'state') ~= 'closed' then schedule(sid) end end
end
return #due
"""

# One heartbeat of a worker's agent: refresh the registry entry, follow or drop the pin,
# and take the next waiting session when free.
# It also puts the operator's settings back into P:config when they are missing (Redis came
# back empty): otherwise new sessions would silently get the clients' defaults.
# A worker whose consumer is not started yet (ARGV[14] = '0') beats but takes no session.
#
# Liveness: a pin must be *served*, not just held by a worker that beats. A session pinned
# here that has jobs queued, none running, and no pin, claim, finish or requeue for ARGV[16]
# seconds (``served_at``) is unserved, whatever the cause (a frozen executor, one whose Redis
# connection is dead, one consuming the wrong queue): it goes back to the front of its
# backend's line, the messages on this node's fetch list are given back, and the executor
# that held it (ARGV[15], its pid; '' while none is ready) is marked stalled (P:w:<node>:stalled)
# so that this node takes no session until a different executor is ready. The caller
# replaces the stalled executor. Counted in P:counts ``unserved_pins``.
# ARGV: P, node, backend, ttl_ms, host, pid, started, concurrency, device,
#       max_time, interactive_timeout, open_session_timeout, result_ttl, may_take_session,
#       executor, unserved_after
# Returns {pin_sid_or_empty, epoch, stalled executor to replace or '', session released or ''}
WORKER_TICK = PRELUDE + r"""
local node, backend = ARGV[2], ARGV[3]
local executor, unserved_after = ARGV[15] or '', tonumber(ARGV[16] or '')
if ARGV[10] and redis.call('EXISTS', P .. ':config') == 0 then
  redis.call('HSET', P .. ':config', 'max_time', ARGV[10], 'interactive_timeout', ARGV[11],
    'open_session_timeout', ARGV[12], 'result_ttl', ARGV[13])
end
local w = P .. ':w:' .. node
redis.call('HSET', w, 'node', node, 'backend', backend, 'host', ARGV[5], 'pid', ARGV[6],
  'started', ARGV[7], 'concurrency', ARGV[8], 'device', ARGV[9], 'heartbeat', NOW)
redis.call('PEXPIRE', w, tonumber(ARGV[4]))
redis.call('HSET', P .. ':workers', node, backend)
local pin_key = w .. ':pin'
local pin = redis.call('GET', pin_key) or ''
if pin ~= '' then
  tick(pin)
  if get(sk(pin), 'worker') ~= node then
    if redis.call('GET', pin_key) == pin then redis.call('DEL', pin_key) end
    pin = ''
  end
end
local stalled_key = w .. ':stalled'
local stalled = redis.call('GET', stalled_key) or ''
local released = ''
if pin ~= '' and unserved_after then
  local s = sk(pin)
  local served = math.max(num(s, 'served_at'), num(s, 'pinned_at'))
  if num(s, 'queued') > 0 and num(s, 'running') == 0 and redis.call('SCARD', w .. ':run') == 0
     and NOW - served > unserved_after then
    redis.call('HSET', s, 'worker', '', 'lost_worker', node, 'unserved_at', NOW)
    redis.call('DEL', pin_key)
    want_worker(pin, true)
    give_back_fetched(node, nil)
    redis.call('HINCRBY', P .. ':counts', 'unserved_pins', 1)
    if executor ~= '' then
      stalled = executor
      redis.call('SET', stalled_key, executor, 'EX', num(s, 'ttl') > 0 and num(s, 'ttl') or 86400)
    end
    released, pin = pin, ''
  end
end
if stalled ~= '' and stalled ~= executor and executor ~= '' then
  -- a different executor is ready: the stalled one was replaced
  redis.call('DEL', stalled_key)
  stalled = ''
end
if stalled == executor then stalled = executor else stalled = '' end
if pin == '' and ARGV[14] ~= '0' and stalled == '' and redis.call('SCARD', w .. ':run') == 0 then
  local line = P .. ':wait:' .. backend
  while true do
    local sid = redis.call('LPOP', line)
    if not sid then break end
    local s = sk(sid)
    redis.call('HSET', s, 'waiting', '0')
    local state = tick(sid)
    if state ~= '' and state ~= 'closed' and get(s, 'worker') == ''
       and num(s, 'queued') + num(s, 'running') > 0 then
      local epoch = redis.call('INCR', P .. ':epoch')
      redis.call('HSET', s, 'worker', node, 'epoch', epoch, 'pinned_at', NOW, 'served_at', NOW)
      redis.call('SET', pin_key, sid)
      if state == 'inactive' then redis.call('HSET', s, 'state', 'active') end
      pin = sid
      break
    end
  end
end
redis.call('HSET', w, 'pin', pin)
local epoch = ''
if pin ~= '' then epoch = get(sk(pin), 'epoch') end
return {pin, epoch, stalled, released}
"""

# A worker whose registry entry expired is dead: requeue what it ran, free its session.
# ARGV: P, node, max_attempts, keep_pin ('1' when a worker recovers its own previous life)
REAP_WORKER = PRELUDE + r"""
local node = ARGV[2]
local w = P .. ':w:' .. node
local requeued = give_back_fetched(node, nil)
for _, jid in ipairs(redis.call('SMEMBERS', w .. ':run')) do
  if job_lost(jid, node, tonumber(ARGV[3]), 'worker_lost', 'worker ' .. node .. ' died while running it') == 'requeued' then
    requeued = requeued + 1
  end
end
redis.call('DEL', w .. ':run')
if ARGV[4] ~= '1' then
  local pin = redis.call('GET', w .. ':pin')
  if pin then
    local s = sk(pin)
    if get(s, 'worker') == node then
      redis.call('HSET', s, 'worker', '', 'lost_worker', node)
      if get(s, 'state') == 'closed' then release_pin(pin) else want_worker(pin, true) end
    end
    redis.call('DEL', w .. ':pin')
  end
  redis.call('HDEL', P .. ':workers', node)
  redis.call('DEL', w, w .. ':stalled')
end
return requeued
"""

# A message a consumer fetched and then lost (its worker died, or Redis went away between
# fetch and start) waits in kombu's `unacked` hash (P:unacked) for the visibility timeout:
# an hour by default. A job still QUEUED whose message has sat there longer than ARGV[2] seconds was
# never claimed by anyone: give it back to the head of its queue now. Should the original
# consumer be alive after all, the claim lets only one of the two copies run.
# The index is read from a cursor (P:rescue: the score and tag of the last entry inspected),
# ARGV[3] entries a call, wrapping round at the end: entries that are not ours or not
# rescuable (other apps on the database, jobs still running) cannot hide the ones behind them.
# ARGV: P, min_age, limit -> {number of jobs given back, entries inspected}
RESCUE_UNACKED = PRELUDE + r"""
local upto, limit = NOW - tonumber(ARGV[2]), tonumber(ARGV[3])
local cursor = P .. ':rescue'
local from_score = redis.call('HGET', cursor, 'score')
local from_tag = redis.call('HGET', cursor, 'tag') or ''
local rows = redis.call('ZRANGEBYSCORE', UNACKED_INDEX, from_score or '-inf', upto, 'WITHSCORES',
  'LIMIT', 0, limit)
local rescued, seen = 0, 0
local last_score, last_tag = nil, nil
for i = 1, #rows, 2 do
  local tag, score = rows[i], rows[i + 1]
  -- ties at the cursor's score come in tag order: those up to the cursor's tag were seen
  if not (from_score and tonumber(score) == tonumber(from_score) and tag <= from_tag) then
    seen = seen + 1
    local jid = unacked_job(tag)
    if jid and give_back(jid) == 1 then
      drop_unacked(tag)
      rescued = rescued + 1
    end
  end
  last_score, last_tag = score, tag
end
if seen == 0 and #rows == 2 * limit then
  -- a page of ties all seen already (only planted data does that): step past the score
  redis.call('HSET', cursor, 'score', '(' .. last_score, 'tag', '')
  redis.call('EXPIRE', cursor, 3600)
elseif #rows < 2 * limit or last_score == nil then
  redis.call('DEL', cursor)  -- reached the end: the next call starts from the oldest again
else
  redis.call('HSET', cursor, 'score', last_score, 'tag', last_tag)
  redis.call('EXPIRE', cursor, 3600)
end
return {rescued, seen}
"""

# A live worker squares its registry with what its process really runs (ARGV[5]: the job ids
# of the requests it holds, read *before* this call). A job its run set lists, RUNNING here,
# that it does not hold, is one whose end Redis forgot (an AOF from before the job finished,
# ``appendfsync everysec``): left alone it would stay RUNNING forever, keep its session
# ``pending_closed`` and the worker unpinnable. It is requeued only when seen so twice with the
# same claim token (ARGV[4], from the previous call): a job claimed after the caller read its
# requests is not mistaken for a lost one. Entries of jobs not RUNNING here are dropped.
# Messages left on the worker's own fetch list since the previous call (ARGV[6]; a live
# consumer keeps one there for an instant) are given back too.
# ARGV: P, node, max_attempts, suspects {jid: claim} (json), held [jid] (json), stale fetch [raw] (json)
# -> {jobs requeued, suspects (json), fetched messages given back, fetch list now [raw] (json)}
RECONCILE_WORKER = PRELUDE + r"""
local node, max_attempts = ARGV[2], tonumber(ARGV[3])
local suspects = cjson.decode(ARGV[4])
local held = {}
for _, jid in ipairs(cjson.decode(ARGV[5])) do held[jid] = true end
local run = P .. ':w:' .. node .. ':run'
local again, requeued = {}, 0
for _, jid in ipairs(redis.call('SMEMBERS', run)) do
  local j = jk(jid)
  if get(j, 'status') ~= 'RUNNING' or get(j, 'worker') ~= node then
    redis.call('SREM', run, jid)
  elseif not held[jid] then
    local claim = get(j, 'claim')
    if suspects[jid] == claim then
      job_lost(jid, node, max_attempts, 'worker_lost', 'worker ' .. node ..
        ' is alive but does not run it (Redis lost the record of its end)')
      requeued = requeued + 1
    else
      again[jid] = claim
    end
  end
end
local stale = cjson.decode(ARGV[6])
local given = 0
if #stale > 0 then given = give_back_fetched(node, stale) end
local fetch = redis.call('LRANGE', P .. ':w:' .. node .. ':fetch', 0, 9)
return {requeued, cjson.encode(again), given, cjson.encode(fetch)}
"""

# ARGV: P -> list of registered nodes whose registry entry has expired
DEAD_WORKERS = PRELUDE + r"""
local dead = {}
for node, _ in pairs((function() local t = {}; local f = redis.call('HGETALL', P .. ':workers');
    for i = 1, #f, 2 do t[f[i]] = f[i + 1] end; return t end)()) do
  if redis.call('EXISTS', P .. ':w:' .. node) == 0 then table.insert(dead, node) end
end
return dead
"""

# ARGV: P, jid, tags (JSON list of strings) -> 'ok' | 'not_found'
# A job's tags live in its summary (written at submit); IBM's job.update_tags() replaces them.
UPDATE_TAGS = PRELUDE + r"""
local j = jk(ARGV[2])
local summary = redis.call('HGET', j, 'summary')
if not summary then return 'not_found' end
local decoded = cjson.decode(summary)
decoded['tags'] = cjson.decode(ARGV[3])
redis.call('HSET', j, 'summary', cjson.encode(decoded))
return 'ok'
"""
