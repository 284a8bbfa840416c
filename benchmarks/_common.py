"""Shared helpers for the benchmark scripts: setup facts, Markdown tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def setup_line(**facts: Any) -> str:
    """One line stating the benchmark's setup (sizes, concurrency, duration, CPUs)."""
    info = {**facts, "cpus": os.cpu_count(), "python": platform.python_version()}
    return "Setup: " + ", ".join(f"{k}={v}" for k, v in info.items())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get sensible precision."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the machine facts added."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def progress(message: str) -> None:
    """Show progress of a long run on stderr (tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)
