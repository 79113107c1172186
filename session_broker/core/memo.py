"""A small, bounded, thread-safe memo for the client's per-circuit work.

An iterative producer sends the same circuit job after job. The work ``run()`` does per
circuit, besides encoding it (the ISA check, the worker's decoder run on the client), gives
the same answer for the same QPY bytes, so it is kept here keyed on the base64 QPY text:
bytes, not the circuit object, because a ``QuantumCircuit`` is mutable and has no change
counter (a memo keyed on ``id()`` would keep a stale answer after ``circuit.x(0)``).
Encoding is needed anyway, so the key costs only a hash of a string already built.

Bounded by entries and by the characters of the keys it holds (the keys are the big part),
oldest out first: a producer that sends ever new circuits pays a few dict operations a job.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any


class BoundedMemo:
    """``get``/``put``, forgetting the oldest entries beyond ``max_entries`` or ``max_chars``
    (the summed ``size`` of what it holds); an entry bigger than ``max_chars`` is not kept."""

    def __init__(self, max_entries: int = 128, max_chars: int = 4 << 20):
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._data: dict[Hashable, tuple[Any, int]] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        hit = self._data.get(key)
        return default if hit is None else hit[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_chars:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._chars -= old[1]
            while self._data and (len(self._data) >= self.max_entries or self._chars + size > self.max_chars):
                _, dropped = self._data.pop(next(iter(self._data)))
                self._chars -= dropped
            self._data[key] = (value, size)
            self._chars += size

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._chars = 0

    def __len__(self) -> int:
        return len(self._data)
