"""Batching by size or age, as pure arithmetic (aioquic-style: ``add(item, now)``,
``next_deadline()``, ``take(now)``). Bounded: beyond ``max_items`` an item is dropped
and counted, never queued. Each item keeps the time it was added, so the age of what
remains after a partial take is still its own."""

from __future__ import annotations

from collections import deque


class Batcher:
    def __init__(self, batch_size: int, max_age_s: float, max_items: int = 65536) -> None:
        self.batch_size = batch_size
        self.max_age_s = max_age_s
        self.max_items = max_items
        self._items: deque = deque()  # (added_at, item)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item, now: float) -> bool:
        if len(self._items) >= self.max_items:
            self.dropped += 1
            return False
        self._items.append((now, item))
        return True

    def next_deadline(self) -> float | None:
        return self._items[0][0] + self.max_age_s if self._items else None

    def take(self, now: float) -> list | None:
        """A batch when one is full or the oldest item is old enough; else None."""
        if not self._items:
            return None
        if len(self._items) < self.batch_size and now < self._items[0][0] + self.max_age_s:
            return None
        n = min(self.batch_size, len(self._items))
        return [self._items.popleft()[1] for _ in range(n)]
