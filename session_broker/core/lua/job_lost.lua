--[[
job_lost: the process running a job died (child killed, worker dead, hard time limit):
queue the job again at the head of its queue, or end it when it has used all its attempts
or the loss was not the worker's (code other than 'worker_lost').

KEYS: none (every key is built from the prefix P = ARGV[1] by K: one Redis, not a cluster)
ARGV: jid, node, max_attempts, code, message
Returns: 'requeued' | 'failed' | 'stale' (the job is not RUNNING on node)
]]
return job_lost(jid, node, tonumber(max_attempts), code, message)
