"""Run every benchmark: ``python -m benchmarks [--quick] [--only NAME,...] [--plot]``.

Each part also runs alone (``python -m benchmarks.http``, ``.hotpath``, ``.drivers``,
``.serializers``, ``.gc``, ``.memory``, ``.fileio``, ``.users``). Tables go to stdout,
progress to stderr, results to ``benchmarks/results/*.json`` (git-ignored).

``--plot`` also draws the charts of the http and serializers parts (matplotlib, from the
``bench`` extra) into ``--out DIR``, by default ``benchmarks/results/plots/`` (git-ignored),
and prints where. The charts the README and the docs show, ``benchmarks/results/http.png``
and ``benchmarks/results/serializers.png``, are tracked files: only
``--update-readme-images`` draws over them.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import drivers, fileio, gc, hotpath, http, memory, serializers, users
from ._common import RESULTS, add_chart_arguments, chart_path, cli_parser, progress

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


def plot_http(results_json: Path, path: Path) -> None:
    """Bar chart of requests/s per app and scenario (256 sessions, and one hot cookie),
    from *results_json* (what benchmarks.http wrote), drawn into *path*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(results_json.read_text())["results"]
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
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts in turn; return 0."""
    cli = cli_parser("python -m benchmarks", __doc__)
    cli.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    cli.add_argument("--only", default=",".join(PARTS),
                     help=f"comma-separated parts, of: {', '.join(PARTS)}")
    add_chart_arguments(cli)
    args = cli.parse_args(argv)
    chosen = args.only.split(",")
    unknown = [name for name in chosen if name not in PARTS]
    if unknown:
        cli.error(f"unknown parts {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    # the serializers part draws its own chart: hand it the same choice of place
    charts = (["--update-readme-images"] if args.update_readme_images
              else ["--plot", *(["--out", str(args.out)] if args.out is not None else [])]
              if args.plot else [])
    for number, name in enumerate(chosen, 1):
        run, normal, quick = PARTS[name]
        progress(f"[{number}/{len(chosen)}] {name}")
        extra = charts if name == "serializers" else []
        run([*(quick if args.quick else normal), *extra])
        print(flush=True)
    chart = chart_path("http", args) if "http" in chosen else None
    if chart is not None:
        plot_http(RESULTS / "http.json", chart)
        print(f"chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
