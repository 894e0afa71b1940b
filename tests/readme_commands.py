"""The command lines the README shows, and whether the test suite ran each of them.

The README is the user's manual: a command line it shows that no test runs can rot unnoticed (an option
renamed, a command that now refuses). ``beam_pipelines.cli.main`` appends every finished command line to
``$DPBEAM_COMMAND_LOG`` when that is set; the suite sets it (tests/conftest.py), and when the whole suite
has run it checks here that every ``dpbeam`` line of the README's ``bash`` blocks was run by some test
with exit status 0: the same command with at least the options the README line shows (values may differ:
tests use their own folders and small data). Lines under "Run on Flink / Spark" are the engine suite's.

Lines that are not ``dpbeam`` commands (scripts) are listed in ``OTHER_LINES`` with what runs them; a
README line in neither place fails ``tests/test_readme.py``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
ENGINE_SECTION = "Run on Flink / Spark"
# `$(scripts/engines.py flink options ...)` stands for Beam's portable-runner options; a run on an engine
# passes at least these.
ENGINE_OPTIONS = ("--runner", "--environment_type", "--environment_config")

# Lines of the README's bash blocks that are not dpbeam commands, and what runs each one.
OTHER_LINES = {
    "bash scripts/demo.sh": "tests/test_readme.py::test_the_demo_script_runs_every_command_on_the_example",
    "bash scripts/test.sh": ".ci/run runs it (CI, every stop)",
    "bash scripts/test_engines.sh": ".ci/run runs it after the main suite (CI, every stop)",
    "source .venv/bin/activate": "scripts/bootstrap.sh creates .venv; every test runs from it",
    ".venv/bin/python scripts/engines.py fetch": "scripts/test_engines.sh runs it before the engine tests",
    ".venv/bin/python scripts/engines.py flink start /tmp/flink":
        "tests/engines/test_engine_scripts.py::test_the_readme_flink_session_starts_serves_and_stops",
    ".venv/bin/python scripts/engines.py flink stop /tmp/flink":
        "tests/engines/test_engine_scripts.py::test_the_readme_flink_session_starts_serves_and_stops",
    "G=s3://cellpainting-gallery/cpg0016-jump/source_4": "a shell variable of the walkthrough",
    "ROOT=s3://my-bucket/jump-profiles": "a shell variable of the walkthrough",
}


@dataclass(frozen=True)
class ReadmeLine:
    """One command line of a README ``bash`` block (continuations joined, comment removed)."""

    number: int                 # README line where it starts
    section: str                # the nearest ``##``/``###`` heading above it
    text: str
    argv: tuple[str, ...] = ()  # the dpbeam arguments, placeholders removed; empty for other lines
    engine_options: bool = False  # it takes `$(... engines.py ... options ...)`
    synopsis: bool = False      # the usage line (COMMAND and [optional] parts)

    @property
    def is_dpbeam(self) -> bool:
        return self.text.startswith("dpbeam ")

    @property
    def suite(self) -> str:
        return "engines" if ENGINE_SECTION in self.section else "main"


def readme_lines(readme: Path = README) -> list[ReadmeLine]:
    """Every command line of the README's ``bash`` blocks, in order."""
    lines, section, in_bash, pending, start = [], "", False, "", 0
    for number, raw in enumerate(readme.read_text(encoding="utf-8").splitlines(), start=1):
        if raw.startswith("```"):
            in_bash = (not in_bash) and raw.strip() == "```bash"
            continue
        if not in_bash:
            if raw.startswith("#"):
                section = raw.lstrip("#").strip()
            continue
        if not pending:
            start = number
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(_without_substitutions(pending), comments=True)
        if words:
            lines.append(_parsed(start, section, words))
        pending = ""
    return lines


def _without_substitutions(line: str) -> str:
    # `$(...)` and `[placeholder text]` are not shell words shlex can split; kept apart by _parsed.
    return re.sub(r"\$\([^)]*\)", "__ENGINE_OPTIONS__", line)


def _parsed(number: int, section: str, words: list[str]) -> ReadmeLine:
    text = " ".join(words)
    if words[0] != "dpbeam":
        return ReadmeLine(number, section, text)
    synopsis = "COMMAND" in words
    kept, depth = [], 0
    for word in words[1:]:  # drop [placeholders, like this]; the synopsis keeps the options inside them
        depth += word.count("[")
        if depth == 0 or synopsis:
            kept.append(word.strip("[]"))
        depth -= word.count("]")
    engine = "__ENGINE_OPTIONS__" in kept
    argv = tuple(word for word in kept if word != "__ENGINE_OPTIONS__")
    return ReadmeLine(number, section, text, argv=argv, engine_options=engine, synopsis=synopsis)


def option_names(argv: list[str] | tuple[str, ...]) -> set[str]:
    return {word.split("=", 1)[0] for word in argv if word.startswith("--")}


def command_of(argv: list[str] | tuple[str, ...], commands: set[str]) -> str | None:
    return next((word for word in argv if word in commands), None)


@dataclass
class Coverage:
    """Which README lines of one suite the recorded command lines cover."""

    covered: list[ReadmeLine] = field(default_factory=list)
    missing: list[ReadmeLine] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"README command lines not run (exit 0) by any test: {len(self.missing)}"]
        lines += [f"  README.md:{line.number} ({line.section}): {line.text}" for line in self.missing]
        return "\n".join(lines)


def read_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return records


def coverage(lines: list[ReadmeLine], records: list[dict], suite: str, commands: set[str]) -> Coverage:
    """A README line is covered by a successful run of its command with at least its options."""
    runs = [(command_of(record["argv"], commands), option_names(record["argv"]))
            for record in records if record["exit"] == 0]
    result = Coverage()
    for line in lines:
        if not line.is_dpbeam or line.suite != suite:
            continue
        wanted = option_names(line.argv) | (set(ENGINE_OPTIONS) if line.engine_options else set())
        if line.synopsis:  # each option of the usage line was used by some command
            done = all(any(name in options for _, options in runs) for name in wanted)
        else:
            command = command_of(line.argv, commands)
            done = any(ran == command and wanted <= options for ran, options in runs)
        (result.covered if done else result.missing).append(line)
    return result
