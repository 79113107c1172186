"""Redis host crashes with ``appendfsync everysec``: the AOF it restarts from is a consistent
prefix of history, the last half second or more of acknowledged writes gone.

Real Redis (SIGKILLed, its AOF cut back, restarted on the same port and directory), real
worker processes, producers that use sessions as a user does (``with Session(...)``). Waits
are conditions with deadlines; nothing here depends on how fast this machine is.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from session_broker import SamplerV2, Session, SessionBrokerError
from session_broker.ops.embedded import free_port, wait_for
from tests.support.faults import BACKEND, bell_circuit


class AofWatch(threading.Thread):
    """Samples the AOF's size every few ms, so a crash can cut it back to what it was at an
    earlier moment (what a host crash with ``appendfsync everysec`` leaves on disk)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                self.samples.append((time.monotonic(), os.path.getsize(self.path)))
            except OSError:
                pass
            self.stopping.wait(0.005)

    def size_before(self, t: float) -> int:
        sizes = [s for ts, s in self.samples if ts < t]
        return sizes[-1] if sizes else 0


def _crash(stack, c, port, watch: AofWatch, cut_at: float) -> tuple[int, int]:
    """SIGKILL Redis, cut its AOF back to its size before ``cut_at`` and start it again."""
    child = next(ch for ch in stack.children if ch.name == c.redis_name)
    stack.kill_child(child)
    stack.children.remove(child)
    full = os.path.getsize(watch.path)
    keep = watch.size_before(cut_at)
    with open(watch.path, "r+b") as f:
        f.truncate(keep)
    watch.samples = [(t, s) for t, s in watch.samples if s <= keep]
    stack.start_redis(port, appendonly=True, extra=["--appendfsync", "everysec"], name=c.redis_name)
    return full, keep


@pytest.mark.timeout(600)
def test_sessions_closed_just_before_redis_crashes_end_closed(stack, fresh, caplog):
    """Producers open sessions, run jobs and leave their ``with`` blocks, over and over; Redis
    is SIGKILLed five times, each time right after a session was closed, and restarts from
    its AOF less the last half second (a host crash with ``appendfsync everysec``). Every
    session a producer left must end ``closed``; before, a close acknowledged in that half
    second was lost: the session stayed active, holding its worker for the interactive
    timeout, then open for its max time, with nobody left to close it again."""
    caplog.set_level(logging.WARNING, logger="session_broker")
    port = free_port()
    c = fresh(port=port, appendonly=True, extra=["--appendfsync", "everysec"])
    aof = stack.state_dir / f"{c.redis_name}-data" / "appendonly.aof"
    watch = AofWatch(str(aof))
    watch.start()
    c.start_worker(BACKEND, name="aof-a@%h")
    c.start_worker(BACKEND, name="aof-b@%h")
    bell = bell_circuit()
    stop = threading.Event()
    lock = threading.Lock()
    opened: list[str] = []  # every session a producer opened
    left: list[str] = []  # ... and whose `with` block it left: close() returned
    errors: list[BaseException] = []

    def producer():
        while not stop.is_set():
            try:
                with Session(service=c.service, backend=BACKEND) as s:
                    with lock:
                        opened.append(s.session_id)
                    sampler = SamplerV2(mode=s)
                    for job in [sampler.run([bell], shots=8) for _ in range(2)]:
                        try:
                            job.result(timeout=120)
                        except SessionBrokerError:
                            pass  # a submit the crash took back: JobNotFoundError
                with lock:
                    left.append(s.session_id)
            except SessionBrokerError as exc:  # a crash took back the session's creation
                errors.append(exc)

    seen_closed: set[str] = set()

    def newly_closed() -> list[str]:
        with lock:
            sids = [sid for sid in opened if sid not in seen_closed]
        pipe = c.store.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hget(c.store.keys.session(sid), "state")
        new = [sid for sid, state in zip(sids, pipe.execute()) if state == "closed"]
        seen_closed.update(new)
        return new

    producers = [threading.Thread(target=producer, daemon=True) for _ in range(3)]
    for t in producers:
        t.start()
    cuts = []
    try:
        for _ in range(5):
            # the producers got on since the last restart (two more sessions closed), and
            # one more close has just been acknowledged: the crash is in its half second
            progress = 0
            deadline = time.monotonic() + 120
            while True:
                new = newly_closed()
                if new and progress >= 2:
                    break
                progress += len(new)
                assert time.monotonic() < deadline, "the producers stopped closing sessions"
                time.sleep(0.005)
            full, keep = _crash(stack, c, port, watch, time.monotonic() - 0.5)
            cuts.append(full - keep)
    finally:
        stop.set()
        for t in producers:
            t.join(180)
        watch.stopping.set()
    again = [r for r in caplog.records if "Redis lost the end of session" in r.getMessage()]
    print(
        f"\n[aof crash] 5 crashes; bytes cut: {cuts}; {len(left)} sessions left; "
        f"{len(again)} closes made again; producer errors: {[type(e).__name__ for e in errors]}"
    )

    def not_closed():
        out = {}
        for sid in left:
            state = c.store.redis.hget(c.store.keys.session(sid), "state")
            if state not in (None, "closed"):
                out[sid] = state
        return out

    try:
        wait_for(lambda: not not_closed(), 60, "every session left to be closed", interval=0.2)
    except TimeoutError:
        stuck = {}
        for sid in not_closed():
            k = c.store.keys
            stuck[sid] = {
                "hash": c.store.redis.hgetall(k.session(sid)),
                "timers": {w: c.store.redis.pttl(k.timer(sid, w)) for w in ("max", "idle", "open")},
                "deadline": c.store.redis.zscore(k.deadlines, sid),
            }
        raise AssertionError(f"sessions left but not closed: {stuck}") from None

    # and every session Redis knows is closed, or has a timer that will move it on
    k = c.store.keys
    for sid in c.store.redis.zrange(k.sessions, 0, -1):
        if c.store.redis.hget(k.session(sid), "state") == "closed":
            continue
        timers = [w for w in ("max", "idle", "open") if c.store.redis.pttl(k.timer(sid, w)) > 0]
        assert timers and c.store.redis.zscore(k.deadlines, sid) is not None, (
            sid,
            c.store.redis.hgetall(k.session(sid)),
        )
