"""Batching by size or age, as pure arithmetic (aioquic-style: ``add(item, now)``,
``next_deadline()``, ``take(now)``). Bounded: beyond ``max_items`` an item is dropped
and counted, never queued."""

from __future__ import annotations

from collections import deque


class Batcher:
    def __init__(self, batch_size: int, max_age_s: float, max_items: int = 65536) -> None:
        self.batch_size = batch_size
        self.max_age_s = max_age_s
        self.max_items = max_items
        self._items: deque = deque()
        self._oldest: float | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item, now: float) -> bool:
        if len(self._items) >= self.max_items:
            self.dropped += 1
            return False
        if not self._items:
            self._oldest = now
        self._items.append(item)
        return True

    def next_deadline(self) -> float | None:
        return None if self._oldest is None else self._oldest + self.max_age_s

    def take(self, now: float) -> list | None:
        """A batch when one is full or the oldest item is old enough; else None."""
        if not self._items:
            return None
        if len(self._items) < self.batch_size and now < self._oldest + self.max_age_s:
            return None
        n = min(self.batch_size, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        self._oldest = now if self._items else None
        return batch
