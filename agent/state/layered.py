"""A read-only map that is never changed once made; ``changed(delta)`` gives a new one.

The routing view keys thousands of services by (vip, port); one EndpointSlice event
changes one of them. Copying the whole table per event was most of that event's cost,
and changing it in place would let a view someone holds change under them. Here the
changes since the last fold sit in a small top layer over a shared base dict; at
``FOLD`` of them they are folded into a new base (one copy per ``FOLD`` changes).

It decides nothing and must never mutate a map another holder can see: every method but
``changed`` only reads, and ``changed`` builds new dicts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

_GONE = object()  # in the top layer: the base's entry is removed
_MISS = object()


class Layered(Mapping):
    __slots__ = ("_base", "_top", "_len")
    # Top entries before a fold: a lookup is two dict probes at most, a fold is rare.
    FOLD = 64

    def __init__(self, base: Mapping | None = None) -> None:
        self._base: dict = dict(base or {})
        self._top: dict = {}
        self._len = len(self._base)

    def get(self, key, default=None):
        v = self._top.get(key, _MISS)
        if v is _MISS:
            return self._base.get(key, default)
        return default if v is _GONE else v

    def __getitem__(self, key):
        v = self.get(key, _MISS)
        if v is _MISS:
            raise KeyError(key)
        return v

    def __contains__(self, key) -> bool:
        return self.get(key, _MISS) is not _MISS

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator:
        top = self._top
        yield from (k for k in self._base if k not in top)
        yield from (k for k, v in top.items() if v is not _GONE)

    def changed(self, delta: Mapping) -> Layered:
        """A new map with ``delta`` applied in its order (a value of None removes the key)."""
        base, top, n = self._base, dict(self._top), self._len
        for key, v in delta.items():
            cur = top.get(key, _MISS)
            had = key in base if cur is _MISS else cur is not _GONE
            if v is None:
                if key in base:
                    top[key] = _GONE
                else:
                    top.pop(key, None)
                n -= had
            else:
                top[key] = v
                n += not had
        out = Layered.__new__(Layered)
        if len(top) < self.FOLD:
            out._base, out._top, out._len = base, top, n
            return out
        folded = {k: v for k, v in base.items() if k not in top}
        folded.update((k, v) for k, v in top.items() if v is not _GONE)
        out._base, out._top, out._len = folded, {}, n
        return out
