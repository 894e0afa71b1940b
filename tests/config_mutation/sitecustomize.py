"""Imported by every Python process started with this folder on PYTHONPATH (scripts/config_keys.py puts
it there): with ``DPBEAM_IGNORE_CONFIG_KEY`` set, the config reader ignores that key in this process too,
so tests that run ``dpbeam`` in a subprocess see the same change as those that call it in-process."""

import os

if os.environ.get("DPBEAM_IGNORE_CONFIG_KEY"):
    from tests.config_keys import ignore_key

    ignore_key(os.environ["DPBEAM_IGNORE_CONFIG_KEY"])
