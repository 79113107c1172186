"""The key schema: every Redis key session-broker owns, written once (``Keys``).

Why one class: a newcomer can see the whole data model on one screen, an operator can
write ACL rules from it (``acl.py``), a clean-up test can check that nothing else is left
behind, and the Lua transitions that change the keys (``core/lua/*.lua``) get their key
names from it: ``core/scripts.py`` generates their ``K.*`` header from this class.

Key schema (``P`` is ``SESSION_BROKER_KEY_PREFIX``, default ``sb``: 1-32 of ``a-z 0-9 _ -``,
never ``.`` or ``:``, so the first ``.`` or ``:`` of any name below ends its tenant's prefix
and one tenant's names never start with another's; see ``config.KEY_PREFIX``)::

    P:s:<sid>            hash   session: state, backend, mode, timers' lengths, counts, pin
    P:s:<sid>:jobs       list   job ids of the session, in submission order
    P:s:<sid>:max        string max-time timer; its EXPIRE *is* the timer (set when the first job starts)
    P:s:<sid>:idle       string interactive timer (set when the session goes idle)
    P:s:<sid>:open       string open-session timer (set at creation, gone at the first job)
    P:s:<sid>:producer   string alive while the process that opened the session runs: it refreshes
                                it every SESSION_BROKER_PRODUCER_BEAT s (session.py); the session hash's
                                ``producer`` field says who it was, so a missing key means "gone"
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
    P:w:<node>:stalled   string pid of this node's executor that left its pin unserved (worker_tick.lua):
                                the node takes no session until another executor is ready
    P:w:<node>:fetch     list   messages the worker's consumer has taken off a queue and not yet
                                handed to kombu's ``unacked`` hash (reliable fetch, transport.py):
                                empty but for an instant; a dead worker's is given back by the reaper
    P:workers            hash   node -> backend, for every registered worker (the reaper's list)
    P:epoch              string pin counter: numbers each pin for the record (the claim token fences, not this)
    P:config             hash   the operator's system settings, published by workers at start and
                                again whenever they find it missing (Redis came back empty)
    P:rescue             hash   the unacked rescue's cursor (score, tag): each sweep goes on from
                                where the last one stopped, so the whole ``unacked`` index is covered
    P:counts             hash   jobs ever submitted / ended, by status (Prometheus counters)
    P:hist:<name>        hash   histogram buckets (le -> count, sum, count) for queue_wait,
                                execution and session_idle seconds (Prometheus histograms)
    P:dead               list   task messages the transport refused as malformed (newest first)
    P:instances          hash   instance name -> its settings (JSON: share, usage_limit, period,
                                max_sessions, max_session_time), set by ``session-broker instance
                                set``; field ``.`` counts changes, so the hash outlives its last
                                instance and a missing hash means "Redis came back empty" (workers
                                then put back the copy they hold)
    P:i:<name>           hash   an instance's usage: ``used`` seconds in the period starting
                                ``period`` (the limit's), ``total`` seconds ever, ``fair`` (decayed
                                usage for fair share) as of ``fair_at``, ``avg`` seconds a job
    P:i:<name>:sessions  set    the instance's sessions (mode session) not closed: --max-sessions
    P:held:<backend>:<name>  list   a backend's batch and plain jobs of one instance waiting for
                                their turn (messages); FEED (lib/instances.lua) moves the fairest
                                instance's oldest into P.backend.<backend> as workers take jobs
    P:held:<backend>     set    instances with jobs held for the backend

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
clocks agree. Every state change is one Lua script (``session_broker/core/lua``): atomic,
and one round trip.
"""

from __future__ import annotations

KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)  # sub-lists kombu adds for priorities other than 0
# Histogram bucket upper bounds (seconds), shared by the Lua that fills them and /metrics.
HISTOGRAM_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
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

    def session_producer(self, sid: str) -> str:
        return f"{self.prefix}:s:{sid}:producer"

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

    # instances (shares, usage limits, fair share)
    @property
    def instances(self) -> str:
        return f"{self.prefix}:instances"

    def instance_usage(self, name: str) -> str:
        return f"{self.prefix}:i:{name}"

    def instance_sessions(self, name: str) -> str:
        return f"{self.prefix}:i:{name}:sessions"

    def held(self, backend: str, name: str) -> str:
        return f"{self.prefix}:held:{backend}:{name}"

    def held_instances(self, backend: str) -> str:
        return f"{self.prefix}:held:{backend}"

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
        return [
            queue,
            *(f"{queue}{KOMBU_PRIORITY_SEP}{p}" for p in KOMBU_PRIORITY_STEPS),
            *self.bindings(queue),
        ]
