"""Flex Template entry point: template parameters become a dpbeam command line.

Dataflow passes every parameter as ``--name=value``; ``command``, the global
options (``root``, ``config``, ``exp``, ``metadata``, ``single_cells``),
``overwrite`` and ``inference_accelerator`` (profile: a GPU resource hint on the
inference step) are taken out and the rest (runner options Dataflow adds
itself) is passed on to Beam. The launcher never waits for the job: every
dpbeam pipeline commits its own outputs.
"""

from __future__ import annotations

import sys

from beam_pipelines.cli import main

GLOBAL = ("root", "config", "exp", "metadata", "single_cells")


def to_dpbeam_argv(argv: list[str]) -> list[str]:
    values, rest = {}, []
    for argument in argv:
        name, _, value = argument.lstrip("-").partition("=")
        if name in GLOBAL + ("command", "overwrite", "inference_accelerator"):
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
    if values.get("inference_accelerator"):
        if values["command"] != "profile":
            raise SystemExit("inference_accelerator applies to the profile command only")
        command += ["--inference-accelerator", values["inference_accelerator"]]
    return command + rest


if __name__ == "__main__":
    sys.exit(main(to_dpbeam_argv(sys.argv[1:])))
