"""Project scripts; engines.py is also imported by the engine tests and benchmarks."""
