"""The read model's job listing (``core/read.py``) reads ids a chunk at a time: a page of the
live Jobs page costs a chunk or two, not every id of the last day. Checked across chunk
boundaries, in both orders, and while jobs arrive during the read."""

from __future__ import annotations

import uuid

from session_broker.core import read
from session_broker.core.config import load_settings
from session_broker.core.store import Store

N = 2 * read.CHUNK + 50


def plant(store: Store, scores: range) -> list[str]:
    """Bare job records in the listing, created at ``scores`` (what the filters read)."""
    ids = [f"job-{i:05d}" for i in scores]
    pipe = store.redis.pipeline(transaction=False)
    for jid, created in zip(ids, scores):
        pipe.hset(store.keys.job(jid), mapping={"status": "DONE", "backend": "b", "created": created})
        pipe.zadd(store.keys.jobs, {jid: created})
    pipe.execute()
    return ids


def test_the_listing_reads_every_job_once_in_order_a_chunk_at_a_time(redis_url):
    store = Store(load_settings(url=redis_url, key_prefix=f"read{uuid.uuid4().hex[:6]}"))
    ids = plant(store, range(1, N + 1))
    assert [j for j, _ in read.iter_jobs(store, read.JobQuery())] == ids[::-1]
    assert [j for j, _ in read.iter_jobs(store, read.JobQuery(newest_first=False))] == ids
    window = read.JobQuery(after=100, before=300, newest_first=False)
    assert [j for j, _ in read.iter_jobs(store, window)] == ids[99:300]

    # jobs submitted while a reader is between chunks shift the ranks: nothing is read twice
    listing = read.iter_jobs(store, read.JobQuery())
    first = [next(listing)[0] for _ in range(read.CHUNK)]
    plant(store, range(N + 1, N + 6))
    rest = [j for j, _ in listing]
    assert first + rest == ids[::-1], (len(first), len(rest))

    # oldest first, ids are read as the reader goes: jobs that arrive meanwhile are listed
    # too (all ids read up front, as before, would miss them)
    listing = read.iter_jobs(store, read.JobQuery(newest_first=False))
    first = [next(listing)[0] for _ in range(read.CHUNK)]
    later = plant(store, range(N + 6, N + 9))
    assert first + [j for j, _ in listing] == ids + [f"job-{i:05d}" for i in range(N + 1, N + 6)] + later
