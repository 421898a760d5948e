"""A Kubernetes list response read one item at a time; a watch stream cut into lines.

Pure: text in, items out. ``scan_list`` walks the outer object and its ``items``
array and hands each item, decoded by the standard library's JSON decoder, to a
callback before decoding the next, so a page of 7 KB pods never exists as one tree of
Python objects (the slims kept from it then fill memory the page left, instead of
pinning a page's worth of allocator arenas each). It decides nothing about the items;
malformed JSON raises ``ValueError`` like ``json.loads``. ``watch_lines`` turns the
chunks of a watch response into its lines (one event each), every complete line of a
chunk at once, so the reader decodes and applies a chunk's events together
(``LineSplitter`` the same, fed one read at a time).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from json.decoder import WHITESPACE

_DECODER = json.JSONDecoder()


def _skip(text: str, i: int) -> int:
    return WHITESPACE.match(text, i).end()


def _expect(text: str, i: int, ch: str) -> int:
    i = _skip(text, i)
    if text[i:i + 1] != ch:
        raise ValueError(f"list response: expected {ch!r} at offset {i}")
    return i + 1


def scan_list(text: str, on_item: Callable[[dict], None]) -> dict:
    """Every element of the top-level ``items`` array to ``on_item`` in order; the
    other top-level fields (``metadata``: resourceVersion, continue) returned."""
    rest: dict = {}
    i = _expect(text, 0, "{")
    if text[_skip(text, i):_skip(text, i) + 1] == "}":
        return rest
    while True:
        key, i = _DECODER.raw_decode(text, _skip(text, i))
        i = _expect(text, i, ":")
        if key == "items" and text[_skip(text, i):_skip(text, i) + 1] == "[":
            i = _skip(text, i) + 1
            if text[_skip(text, i):_skip(text, i) + 1] == "]":
                i = _skip(text, i) + 1
            else:
                while True:
                    item, i = _DECODER.raw_decode(text, _skip(text, i))
                    on_item(item)
                    i = _skip(text, i)
                    if text[i:i + 1] == ",":
                        i += 1
                        continue
                    i = _expect(text, i, "]")
                    break
        else:
            rest[key], i = _DECODER.raw_decode(text, _skip(text, i))
        i = _skip(text, i)
        if text[i:i + 1] == ",":
            i += 1
            continue
        _expect(text, i, "}")
        return rest


class LineSplitter:
    """A watch body's bytes, fed as they arrive, to its complete lines (one event each;
    blank lines dropped, a line cut across reads joined first). An unfinished line
    longer than ``limit`` raises ``ValueError`` (bounded: a peer that never sends a
    newline cannot fill memory)."""

    def __init__(self, limit: int | None = None) -> None:
        self.parts: list[bytes] = []  # a line begun in earlier chunks
        self.held = 0
        self.limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            if chunk:
                self.parts.append(bytes(chunk))
                self.held += len(chunk)
                if self.limit is not None and self.held > self.limit:
                    raise ValueError(f"watch: an event longer than {self.limit} bytes")
            return []
        if self.parts:
            self.parts.append(chunk)
            chunk, self.parts, self.held = b"".join(self.parts), [], 0
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self.parts.append(tail)
            self.held = len(tail)
            if self.limit is not None and self.held > self.limit:
                raise ValueError(f"watch: an event longer than {self.limit} bytes")
        return [line for line in lines if line.strip()]


def watch_lines(chunks: Iterable[bytes]) -> Iterator[list[bytes]]:
    """Per chunk read, the complete lines it finished (``LineSplitter``). What follows
    the last newline when the stream ends is no event (a cut connection): dropped."""
    lines = LineSplitter()
    for chunk in chunks:
        out = lines.feed(chunk)
        if out:
            yield out
