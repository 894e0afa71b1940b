"""dpcore.read_ahead: reads overlap, outcomes keep their order, errors surface at their item's turn."""

from __future__ import annotations

import threading
import time

import pytest

from dpcore.read_ahead import ReadAhead


class SlowReads:
    """A read that takes ``seconds`` and records how many reads ran at once."""

    def __init__(self, seconds: float, failing: frozenset[int] = frozenset()):
        self.seconds, self.failing = seconds, failing
        self.running = self.most_at_once = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        if item in self.failing:
            raise OSError(f"item {item} cannot be read")
        return item * 10


def test_reads_ahead_overlap_and_come_back_in_order():
    read = SlowReads(0.1)
    reader = ReadAhead(read, depth=4, name="test-read-ahead")
    started = time.perf_counter()
    results = [(item, future.result()) for item, future in reader.iterate(range(12), ahead=lambda item: True)]
    seconds = time.perf_counter() - started
    reader.close()
    assert results == [(item, item * 10) for item in range(12)]
    assert read.most_at_once == 4  # never more than depth
    assert seconds < 12 * 0.1 / 2, seconds  # serial reads would take 1.2 s
    assert all(name.startswith("test-read-ahead") for name in read.threads)


def test_items_read_in_turn_wait_for_those_queued_before_them():
    read = SlowReads(0.05)
    reader = ReadAhead(read, depth=3)
    order = []
    for item, future in reader.iterate(range(8), ahead=lambda item: item % 2 == 0):
        order.append((item, future.result()))
    reader.close()
    assert order == [(item, item * 10) for item in range(8)]
    assert read.most_at_once <= 2  # an odd (local) item drains the queue: one read ahead, one in turn
    assert threading.current_thread().name in read.threads  # the local items were read in this thread


def test_a_failed_read_raises_at_its_turn_and_the_others_are_kept():
    read = SlowReads(0.01, failing=frozenset({2, 5}))
    reader = ReadAhead(read, depth=2)
    outcomes = []
    for item, future in reader.iterate(range(7), ahead=lambda item: item != 5):
        try:
            outcomes.append(future.result())
        except OSError as error:
            outcomes.append(str(error))
    reader.close()
    assert outcomes == [0, 10, "item 2 cannot be read", 30, 40, "item 5 cannot be read", 60]


def test_put_returns_what_is_due_and_drain_the_rest():
    reader = ReadAhead(lambda item: item, depth=2)
    assert reader.put("a") == [] and reader.put("b") == []
    due = reader.put("c")
    assert [item for item, _ in due] == ["a"]
    assert [(item, future.result()) for item, future in reader.drain()] == [("b", "b"), ("c", "c")]
    assert reader.drain() == []
    reader.put("d")
    reader.discard()  # a failed bundle's reads are dropped
    assert reader.drain() == []
    reader.close()
    with pytest.raises(ValueError, match="at least 1"):
        ReadAhead(lambda item: item, depth=0)
