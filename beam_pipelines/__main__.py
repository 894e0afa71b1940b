"""``python -m beam_pipelines`` is the same as the ``dpbeam`` console script."""

from beam_pipelines.cli import entry_point

if __name__ == "__main__":
    entry_point()
