"""Small runnable aiohttp apps, one idea each (run with ``python -m examples.NAME``)."""
