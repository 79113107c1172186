--[[
executor_lost: an executor died (its supervisor killed it for overrunning its job's hard time
limit, or its job killed it): settle the job it ran, as JOB_LOST does, and take its message
out of kombu's unacked hash, where nobody would ack it (kombu would redeliver it after the
visibility timeout: an hour). A message whose job is still QUEUED (the executor died between
fetch and claim) is given back first, so its job is never left without a message.

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: node, max_attempts, jid, code, message, tag
  jid      the job it ran ('' if none)
  tag      the delivery tag of the message it held ('' if none)
Returns: JOB_LOST's outcome ('requeued' | 'failed' | 'stale'), or '' without a job
]]
local outcome = ''
if jid ~= '' then outcome = job_lost(jid, node, tonumber(max_attempts), code, message) end
if tag ~= '' then
  local carried = unacked_job(tag)
  drop_unacked(tag)
  -- job_lost already queued its own job again ('requeued')
  if carried and not (carried == jid and outcome == 'requeued') then give_back(carried) end
end
return outcome
