"""A fair share of the workers: per-owner backlogs that feed the one RQ queue.

Design (docs/fair-share.md): with PIPEQ_FAIR_SHARE on, ``queue.enqueue_run`` puts a new job
into its owner's backlog (a sorted set by arrival) instead of the RQ queue, and runs
:data:`_FEED` in the same transaction. The feed keeps the RQ queue at most
:data:`QUEUE_TARGET` long: it first takes back the job it put there earlier that no worker
has taken yet, then, while the queue is shorter, moves the oldest job of the backlogged
owner with the fewest dispatched jobs per weight (ties: the older head job) to the queue's
tail. So the choice is made again at each event, with what holds then. Dispatched = moved to the queue and not ended (queued or started): the owner's running
jobs plus at most the one waiting at the queue's head. Workers stay stock RQ workers taking
from the queue; the feed runs again whenever the queue may have shrunk or a slot freed:
after each dequeue, at each job's end, and in every worker's periodic maintenance (idle
workers every few seconds, busy ones with each lease renewal). A lone owner is fed job
after job: every worker gets one (work-conserving).

What stays as it was: the RQ queue, leases, fencing and the reaper (a lost job goes back to
the queue's head, not to a backlog: it waited its turn once), a job's hash and status
(``queued`` while backlogged). Scaling counts the backlogs as queued (``queue.queue_stats``).
A job's position while backlogged is its place in the order the feed will serve
(:func:`position`), assuming no job ends meanwhile.

Contract: every function takes the queue's name; the owner is ``quotas.Owner.of(meta)``.
Keys: ``keys.BACKLOG_PREFIX`` & co. Everything runs as one Lua script per call.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job

from pipeq.keys import ARRIVALS, BACKLOG_PREFIX, BACKLOGGED, DISPATCHED_PREFIX, FED, WEIGHTS

#: Jobs the feed keeps in the RQ queue: one, ready for the next worker that frees. More
#: would decide the order earlier than needed; the next feed comes with the dequeue.
QUEUE_TARGET = 1


def weight_for(groups, settings) -> float:
    """An owner's weight: the largest of its groups' in PIPEQ_FAIR_SHARE_WEIGHTS, else 1."""
    weights = [w for g, w in settings.fair_share_weights.items() if g in (groups or ())]
    return max(weights) if weights else 1.0


def keys(queue_name: str) -> dict[str, str]:
    """The fair share's keys of a queue (owner prefixes end with ':')."""
    return {
        "queue": Queue.redis_queue_namespace_prefix + queue_name,
        "backlogged": BACKLOGGED.format(queue=queue_name),
        "backlog": BACKLOG_PREFIX.format(queue=queue_name),
        "dispatched": DISPATCHED_PREFIX.format(queue=queue_name),
        "weights": WEIGHTS.format(queue=queue_name),
        "arrivals": ARRIVALS.format(queue=queue_name),
        "fed": FED.format(queue=queue_name),
    }


def backlog_key(queue_name: str, owner: str) -> str:
    return BACKLOG_PREFIX.format(queue=queue_name) + owner


# Shared by the scripts: the keys in KEYS[1..2] and ARGV[1..4] (see _args); owners' keys
# are made from the prefixes (pipeq's Redis is one server, not a cluster).
_COMMON = """
local qkey, owners, fedkey = KEYS[1], KEYS[2], KEYS[4]
local bprefix, dprefix, wkey, jprefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function weight(o) return tonumber(redis.call('HGET', wkey, o) or '1') or 1 end
-- the owner's dispatched jobs that are still queued or running (the others are pruned)
local function dispatched(o)
  local dkey, n = dprefix .. o, 0
  for _, id in ipairs(redis.call('SMEMBERS', dkey)) do
    local s = redis.call('HGET', jprefix .. id, 'status')
    if s == 'queued' or s == 'started' then n = n + 1 else redis.call('SREM', dkey, id) end
  end
  return n
end
-- The jobs the feed put into the queue that no worker has taken yet go back to their
-- backlogs first (at their place): the choice is made again with what holds now (a job
-- ended, another owner arrived). A job requeued after its worker died is not one of them.
local function take_back()
  for _, id in ipairs(redis.call('LRANGE', qkey, 0, 9)) do
    local fed = redis.call('HGET', fedkey, id)
    if fed then
      local seq, o = string.match(fed, '^(%d+)|(.*)$')
      redis.call('LREM', qkey, 1, id)
      redis.call('ZADD', bprefix .. o, seq, id)
      redis.call('SADD', owners, o)
      redis.call('SREM', dprefix .. o, id)
    end
  end
  redis.call('DEL', fedkey)  -- the others were taken by workers
end
local function feed(target)
  take_back()
  local moved, running = 0, {}
  while redis.call('LLEN', qkey) < target do
    local best, br, bw, bs
    for _, o in ipairs(redis.call('SMEMBERS', owners)) do
      local head = redis.call('ZRANGE', bprefix .. o, 0, 0, 'WITHSCORES')
      if #head == 0 then
        redis.call('SREM', owners, o)
      else
        if running[o] == nil then running[o] = dispatched(o) end
        local r, w, s = running[o], weight(o), tonumber(head[2])
        -- fewest dispatched per weight (r/w < br/bw, multiplied out), then the older head
        if best == nil or r * bw < br * w or (r * bw == br * w and s < bs) then
          best, br, bw, bs = o, r, w, s
        end
      end
    end
    if best == nil then break end
    local popped = redis.call('ZPOPMIN', bprefix .. best)
    local id = popped[1]
    -- a job canceled (or gone) while backlogged is dropped, not dispatched
    if redis.call('HGET', jprefix .. id, 'status') == 'queued' then
      redis.call('RPUSH', qkey, id)
      redis.call('HSET', fedkey, id, popped[2] .. '|' .. best)
      redis.call('SADD', dprefix .. best, id)
      running[best] = running[best] + 1
      moved = moved + 1
    end
  end
  return moved
end
"""

# Backlog job ARGV[5] of owner ARGV[6] (weight ARGV[7]), then feed up to ARGV[8].
_ENQUEUE = _COMMON + """
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', bprefix .. ARGV[6], seq, ARGV[5])
redis.call('SADD', owners, ARGV[6])
redis.call('HSET', wkey, ARGV[6], ARGV[7])
return feed(tonumber(ARGV[8]))
"""

# Feed up to ARGV[5].
_FEED = _COMMON + """
return feed(tonumber(ARGV[5]))
"""

# After an attempt of job ARGV[6]: if it has ended (not requeued), free its slot in the
# owner's active set KEYS[5]; then feed up to ARGV[5].
_ENDED = _COMMON + """
local s = redis.call('HGET', jprefix .. ARGV[6], 'status')
if not (s == 'queued' or s == 'started' or s == 'deferred' or s == 'scheduled') then
  redis.call('SREM', KEYS[5], ARGV[6])
end
return feed(tonumber(ARGV[5]))
"""

# Where backlogged job ARGV[5] of owner ARGV[6] will be served: the jobs in the queue, the
# owner's jobs before it, and each other owner's jobs that the feed picks first (its k-th
# job goes first if (r_p + k) / w_p < (r_o + i) / w_o, or equal and it arrived earlier).
# False when the job is not backlogged.
_POSITION = _COMMON + """
local o, id = ARGV[6], ARGV[5]
local i = redis.call('ZRANK', bprefix .. o, id)
if not i then return false end
local seq = tonumber(redis.call('ZSCORE', bprefix .. o, id))
local ro, wo = redis.call('SCARD', dprefix .. o), weight(o)
local pos = redis.call('LLEN', qkey) + i
for _, p in ipairs(redis.call('SMEMBERS', owners)) do
  if p ~= o then
    local n, rp, wp = redis.call('ZCARD', bprefix .. p), redis.call('SCARD', dprefix .. p), weight(p)
    local lhs = (ro + i) * wp
    local c = math.max(0, math.min(n, math.ceil(lhs / wo - rp)))
    while c > 0 and not ((rp + c - 1) * wo < lhs) do c = c - 1 end
    while c < n and (rp + c) * wo < lhs do c = c + 1 end
    if c < n and (rp + c) * wo == lhs then
      local e = redis.call('ZRANGE', bprefix .. p, c, c, 'WITHSCORES')
      if tonumber(e[2]) < seq then c = c + 1 end
    end
    pos = pos + c
  end
end
return pos
"""

# Every backlogged job of the queue (the backlogs' sizes summed).
BACKLOG_TOTAL = """
local n = 0
for _, o in ipairs(redis.call('SMEMBERS', KEYS[1])) do n = n + redis.call('ZCARD', ARGV[1] .. o) end
return n
"""


def _args(queue_name: str) -> tuple[list[str], list[str]]:
    k = keys(queue_name)
    return [k["queue"], k["backlogged"], k["arrivals"], k["fed"]], [k["backlog"], k["dispatched"], k["weights"], Job.redis_job_namespace_prefix]


def enqueue(p: redis.client.Pipeline, queue_name: str, job_id: str, owner: str, weight: float) -> None:
    """Put ``job_id`` into ``owner``'s backlog and feed the queue: queued on ``p``, inside the
    enqueue's MULTI, after the job's hash (the feed moves only jobs whose status is queued)."""
    ks, argv = _args(queue_name)
    p.eval(_ENQUEUE, len(ks), *ks, *argv, job_id, owner, repr(float(weight)), QUEUE_TARGET)


def feed(conn: redis.Redis, queue_name: str) -> int:
    """Move backlogged jobs into the queue, fairest first, until it holds QUEUE_TARGET; how many moved."""
    ks, argv = _args(queue_name)
    return int(conn.eval(_FEED, len(ks), *ks, *argv, QUEUE_TARGET))


def ended(conn: redis.Redis, queue_name: str, job_id: str, owner: str) -> int:
    """After an attempt of ``job_id``: free its owner's quota slot if the job has ended (not
    after a lost lease or a requeue: then it is still queued or started), and feed; one script."""
    from pipeq import quotas

    ks, argv = _args(queue_name)
    return int(conn.eval(_ENDED, len(ks) + 1, *ks, quotas.active_key(owner), *argv, QUEUE_TARGET, job_id))


def position(conn: redis.Redis, queue_name: str, job_id: str, owner: str) -> int | None:
    """The place of backlogged ``job_id`` in the order it will be served (0 = next), if
    no job ends before; None when it is not backlogged."""
    ks, argv = _args(queue_name)
    got = conn.eval(_POSITION, len(ks), *ks, *argv, job_id, owner)
    return None if got is None else int(got)


def withdraw(p: redis.client.Pipeline, queue_name: str, job_id: str, owner: str) -> None:
    """Take ``job_id`` out of its owner's backlog (queued on ``p``, in a cancel's MULTI)."""
    p.zrem(backlog_key(queue_name, owner), job_id)


def backlogged(conn_or_pipe, queue_name: str, job_id: str, owner: str) -> bool:
    return conn_or_pipe.zscore(backlog_key(queue_name, owner), job_id) is not None
