"""beam_pipelines: the Beam glue and the ``dpbeam`` command line.

Each pipeline module wires a handful of labelled steps that call ``dpcore``;
the logic itself lives in ``dpcore``.
"""
