"""Progress lines: counts, rate and time left, at most every N seconds; committed files counted."""

from __future__ import annotations

import os
import time

from beam_pipelines.progress import OutputProgress
from dpcore.progress import Progress, duration
from dpcore.storage import StoragePath


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_give_rate_and_time_left_and_are_spaced():
    clock, lines = FakeClock(), []
    progress = Progress("epoch 2/3", 120, "steps", every_s=10, log=lines.append, clock=clock)
    clock.now += 5
    assert not progress.update(10)  # too soon
    clock.now += 5
    assert progress.update(20, "loss 0.69")
    assert lines == ["epoch 2/3: 20 of 120 steps (17%), 2 steps/s, ETA 50 s, loss 0.69"]
    clock.now += 3
    assert not progress.update(26) and progress.update(26, force=True)


def test_lines_without_a_total_or_before_the_first_item():
    clock, lines = FakeClock(), []
    progress = Progress("profile", None, "sites", every_s=0, log=lines.append, clock=clock)
    clock.now += 75
    progress.update(0)
    progress.update(30)
    assert lines == ["profile: 0 sites, 1 min 15 s elapsed", "profile: 30 sites, 0.4 sites/s"]


def test_durations_read_naturally():
    assert [duration(s) for s in (0, 42.4, 185, 7620)] == ["0 s", "42 s", "3 min 05 s", "2 h 07 min"]


def test_only_files_committed_since_the_start_count(tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    (folder / "old.png").write_bytes(b"x")
    os.utime(folder / "old.png", (time.time() - 3600, time.time() - 3600))
    started = time.time() - 1
    (folder / "new.png").write_bytes(b"x")
    (folder / ".new2.png.1234.tmp").write_bytes(b"x")   # an atomic write in progress
    (folder / "other.json").write_bytes(b"x")
    watched = OutputProgress("prepare", [StoragePath(str(folder)), StoragePath(str(tmp_path / "none"))],
                             ".png", "PNGs", 10)
    assert watched.local and watched.count_since(started) == 1
    assert not OutputProgress("prepare", [StoragePath("gs://bucket/x")], ".png", "PNGs", 1).local


def test_time_before_a_restart_stays_out_of_the_rate():
    clock, lines = FakeClock(), []
    progress = Progress("epoch 1/3", 21, "steps", every_s=10, log=lines.append, clock=clock)
    clock.now += 30  # the first step traced and compiled the model
    progress.restart(1)
    clock.now += 10
    progress.update(11)
    assert lines == ["epoch 1/3: 11 of 21 steps (52%), 1 steps/s, ETA 10 s"]
