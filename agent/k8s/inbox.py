"""Watch events from a reader thread to the event loop (``agent.k8s.discovery``).

The thread never waits for the loop; the loop takes at most ``DRAIN_MAX`` events per
hand-over. While nothing handed over is still waiting or being applied, the index
holds every event so far, so the thread may settle an event that changes nothing but
the version itself (``unchanged``, ``agent.k8s.index.Index.unchanged``) without waking
the loop; once one event is queued, every later one queues behind it. It must never
reorder events nor settle one while an older one is in flight, and a closed inbox
(an abandoned reader) changes nothing more.
"""

from __future__ import annotations

import threading

DRAIN_MAX = 500  # watch events handled per hand-over


class Inbox:
    """Watch events from a reader thread to trio in batches: the thread never waits for
    the event loop, and each callback handles at most ``DRAIN_MAX`` events.

    While nothing is waiting for the loop or being applied (so the index holds every
    event handed over so far), the reader asks ``unchanged`` about each event first: one
    that changes nothing but the version (a slim equal to the stored one, a bookmark)
    is settled there, without waking the loop. Once one event is queued, every later
    one queues behind it (order is kept)."""

    def __init__(self, token, deliver, unchanged) -> None:
        self.token, self.deliver, self.unchanged = token, deliver, unchanged
        self.items: list = []
        self.lock = threading.Lock()
        self.scheduled = False
        self.busy = False  # a batch is being applied on the loop
        self.closed = False
        self.settled = 0  # events settled by the reader (under the lock)

    def put(self, item) -> None:
        self.put_many([item])

    def put_many(self, items: list) -> None:
        if not items:
            return
        with self.lock:
            if self.closed:  # an abandoned reader changes nothing more
                return
            if not self.items and not self.busy:
                i = 0
                while i < len(items) and self.unchanged(items[i]):
                    i += 1
                self.settled += i
                items = items[i:]
                if not items:
                    return
            self.items += items
            if self.scheduled:
                return
            self.scheduled = True
        self.token.run_sync_soon(self.drain)

    def drain(self) -> None:
        with self.lock:
            batch, self.items = self.items[:DRAIN_MAX], self.items[DRAIN_MAX:]
            self.scheduled = bool(self.items)
            self.busy = bool(batch) and not self.closed
        if self.scheduled:
            self.token.run_sync_soon(self.drain)
        try:
            if self.busy:
                self.deliver(batch)
        finally:
            with self.lock:
                self.busy = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
