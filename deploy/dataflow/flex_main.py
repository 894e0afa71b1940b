"""Flex Template entry point: template parameters become a dpbeam command line.

Dataflow passes every parameter as ``--name=value``; ``command`` and the global
options (``root``, ``config``, ``exp``, ``metadata``, ``single_cells``) are taken
out and the rest (runner options Dataflow adds itself) is passed on to Beam.
"""

from __future__ import annotations

import sys

from beam_pipelines.cli import main

GLOBAL = ("root", "config", "exp", "metadata", "single_cells")


def to_dpbeam_argv(argv: list[str]) -> list[str]:
    values, rest = {}, []
    for argument in argv:
        name, _, value = argument.lstrip("-").partition("=")
        if name in GLOBAL + ("command", "overwrite"):
            values[name] = value
        else:
            rest.append(argument)
    if "command" not in values:
        raise SystemExit("the template needs a 'command' parameter (prepare, export-sc or profile)")
    command = []
    for name in GLOBAL:
        if values.get(name):
            command += [f"--{name.replace('_', '-')}", values[name]]
    command.append(values["command"])
    if values.get("overwrite", "false").lower() == "true":
        command.append("--overwrite")
    return command + rest


if __name__ == "__main__":
    sys.exit(main(to_dpbeam_argv(sys.argv[1:])))
