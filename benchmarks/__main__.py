"""Run every benchmark: ``python -m benchmarks [--quick] [--plot] [--only NAME,...]``.

Each part also runs alone (``python -m benchmarks.http``, ``.hotpath``, ``.drivers``,
``.serializers``, ``.gc``, ``.memory``, ``.fileio``, ``.users``). Tables go to stdout,
progress to stderr, results to ``benchmarks/results/*.json``; ``--plot`` also draws
``benchmarks/results/*.png`` (matplotlib, from the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import drivers, fileio, gc, hotpath, http, memory, serializers, users
from ._common import RESULTS, progress

#: name -> (runner, arguments for a normal run, arguments for --quick)
PARTS: dict[str, tuple[Callable[[Sequence[str] | None], Any], list[str], list[str]]] = {
    "serializers": (serializers.main, [], ["--repeat", "200"]),
    "drivers": (drivers.main, [], ["--seconds", "0.3", "--http-seconds", "1"]),
    "http": (http.main, ["--repeat", "3"], ["--quick"]),
    "hotpath": (hotpath.main, [], ["--requests", "2000", "--repeat", "2"]),
    "gc": (gc.main, [], ["--quick"]),
    "memory": (memory.main, [], ["--sessions", "10000"]),
    "fileio": (fileio.main, [], ["--reads", "500"]),
    "users": (users.main, [], ["--quick"]),
}


def plot_http(path: str) -> None:
    """Bar chart of requests/s per app and scenario (256 sessions, and one hot cookie),
    from results/http.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads((RESULTS / "http.json").read_text())["results"]
    names = list(results)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    scenarios = [s for s in ("read", "write", "hot-read", "hot-write")
                 if all(s in results[n] for n in names)]
    width = 0.8 / len(scenarios)
    for i, scenario in enumerate(scenarios):
        values = [results[n][scenario]["rps"] for n in names]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=scenario)
    ax.set_xticks([x + width * (len(scenarios) - 1) / 2 for x in range(len(names))], names,
                  rotation=25, ha="right")
    ax.set_ylabel("requests/s (higher is better)")
    ax.set_title("aiosessmgr HTTP throughput vs bare aiohttp and aiohttp-session")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts in turn; return 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--plot", action="store_true", help="also draw PNG charts")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts, of: {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    unknown = [name for name in chosen if name not in PARTS]
    if unknown:
        parser.error(f"unknown parts {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    for number, name in enumerate(chosen, 1):
        run, normal, quick = PARTS[name]
        progress(f"[{number}/{len(chosen)}] {name}")
        extra = ["--plot"] if args.plot and name == "serializers" else []
        run([*(quick if args.quick else normal), *extra])
        print(flush=True)
    if args.plot and "http" in chosen:
        chart = RESULTS / "http.png"
        plot_http(str(chart))
        print(f"chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
