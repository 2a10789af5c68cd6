"""Idempotent retries: a bounded LRU of request_id → result, with a TTL.

A client retries with the same request_id after a timeout or RESOURCE_EXHAUSTED.
If the first attempt finished, the retry gets its result without decoding; if
it is still queued or decoding, the retry joins it (same :class:`Job`). Failed
attempts are forgotten at once, so a retry after an error decodes afresh.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pasu.cloud.jobs import Job, Outcome


@dataclass
class _Entry:
    job: Job
    done_at: float | None = None  # monotonic time the result arrived; None while in flight


class IdempotencyCache:
    """Thread-safe; ``ttl_s`` counts from completion, ``max_entries`` bounds memory."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e.done_at is not None and now - e.done_at > self.ttl_s]:
            del self._entries[key]

    def lookup(self, key: tuple[str, str]) -> Outcome | None:
        """A finished result for ``key`` within the window, or None."""
        if not self.enabled:
            return None
        with self._lock:
            self._expire(self._clock())
            e = self._entries.get(key)
            if e is None or e.done_at is None:
                return None
            self._entries.move_to_end(key)
            return e.job.future.result()

    def join_or_submit(self, key: tuple[str, str], submit: Callable[[], Job]) -> tuple[Job, bool]:
        """The job for ``key``: an existing one (finished or in flight) or ``submit()``'s.

        Returns (job, joined). ``submit`` runs under the lock so two concurrent
        attempts never both decode; its exceptions (queue full) propagate and
        nothing is remembered.
        """
        if not self.enabled:
            return submit(), False
        with self._lock:
            now = self._clock()
            self._expire(now)
            e = self._entries.get(key)
            if e is not None:
                self._entries.move_to_end(key)
                return e.job, True
            job = submit()
            self._entries[key] = _Entry(job)
            while len(self._entries) > self.max_entries:
                oldest = next(iter(self._entries))
                if self._entries[oldest].done_at is None and oldest != key:
                    # never evict work in flight; evict the oldest finished instead
                    finished = next((k for k, v in self._entries.items() if v.done_at is not None), None)
                    if finished is None:
                        break
                    oldest = finished
                del self._entries[oldest]
        job.future.add_done_callback(lambda f, k=key, j=job: self._finished(k, j, f))
        return job, False

    def _finished(self, key: tuple[str, str], job: Job, fut) -> None:
        with self._lock:
            e = self._entries.get(key)
            if e is None or e.job is not job:
                return
            if fut.cancelled() or fut.exception() is not None:
                del self._entries[key]
            else:
                e.done_at = self._clock()
