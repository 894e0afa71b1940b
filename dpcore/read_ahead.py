"""Reading the next few items in background threads while the caller works on the current one.

An object store answers each request after tens of milliseconds. A worker that reads a site, then cuts or
compresses it, then reads the next, waits out that latency once per site; reading up to ``depth`` sites
ahead hides it, at the cost of at most ``depth + 1`` sites in memory. Local files gain nothing from it
(the disk is as fast as the reader), so the caller says per item whether to read it ahead; an item read in
turn is read in the caller's thread, after every item queued before it.

Outcomes come back in the order the items went in, as :class:`~concurrent.futures.Future` objects: an
exception raised by ``read`` is raised by ``result()`` in the caller's thread at that item's turn, so error
handling stays where it was before reading ahead. ``read`` runs in other threads, so it must be
thread-safe and must not touch per-thread state (Beam's metrics, for one).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterable, Iterator, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def read_now(read: Callable[[Item], Result], item: Item) -> "Future[Result]":
    """``read(item)`` in this thread, as a finished future (its exception kept for ``result()``)."""
    future: Future = Future()
    try:
        future.set_result(read(item))
    except Exception as error:  # noqa: BLE001 -- handed to the caller at the item's turn
        future.set_exception(error)
    return future


class ReadAhead(Generic[Item, Result]):
    """Keeps up to ``depth`` items being read ahead; hands back (item, future) pairs in input order."""

    def __init__(self, read: Callable[[Item], Result], depth: int, name: str = "dpbeam-read-ahead"):
        if depth < 1:
            raise ValueError(f"read-ahead depth must be at least 1, not {depth}")
        self.read, self.depth = read, depth
        self._pool = ThreadPoolExecutor(depth, thread_name_prefix=name)
        self._pending: deque[tuple[Item, Future]] = deque()

    def put(self, item: Item, ahead: bool = True) -> list[tuple[Item, "Future[Result]"]]:
        """Queue ``item``; return the queued items whose turn has come, oldest first.

        With ``ahead`` false the item is read now, in this thread, and returned after every item queued
        before it.
        """
        if not ahead:
            return [*self.drain(), (item, read_now(self.read, item))]
        self._pending.append((item, self._pool.submit(self.read, item)))
        due = []
        while len(self._pending) > self.depth:
            due.append(self._pending.popleft())
        return due

    def drain(self) -> list[tuple[Item, "Future[Result]"]]:
        """Every item still queued, oldest first (their reads may still be running)."""
        due = list(self._pending)
        self._pending.clear()
        return due

    def iterate(self, items: Iterable[Item], ahead: Callable[[Item], bool]) -> Iterator[tuple[Item, "Future[Result]"]]:
        """(item, future) for every item in order, reading ahead those ``ahead(item)`` says to."""
        for item in items:
            yield from self.put(item, ahead(item))
        yield from self.drain()

    def discard(self) -> None:
        """Drop what is queued (e.g. the reads of a bundle that failed)."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    def close(self) -> None:
        """Drop what is queued and let the threads end."""
        self.discard()
        self._pool.shutdown(wait=False)
