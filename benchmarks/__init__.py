"""Benchmarks for aiosessmgr; each module runs alone (``python -m benchmarks.drivers``)."""
