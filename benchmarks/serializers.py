"""Serializer benchmark: encode/decode time and size, with and without AES-256-GCM.

Run: ``python -m benchmarks.serializers [--repeat N] [--plot [--out DIR]]``. Compares the default
msgpack serializer (msgpack-python) with json and, when installed, a custom serializer
on orjson and the byte-compatible ormsgpack implementation that ``"msgpack"`` picks
automatically when ormsgpack is installed, on three payloads (small ~100 B, typical
~600 B, large ~20 kB).
Times are per session record, in microseconds; ratios are against msgpack. ``--plot``
draws ``serializers.png`` into ``--out DIR`` (default ``benchmarks/results/plots/``,
git-ignored); only ``--update-readme-images`` draws over the tracked
``benchmarks/results/serializers.png`` the README and the docs show.
"""

from __future__ import annotations

import functools
import secrets
import timeit
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosessmgr import AesGcmCipher, Codec, JsonSerializer, MsgpackSerializer, Secret, Serializer
from aiosessmgr.codec import OrmsgpackSerializer

from ._common import (
    add_chart_arguments,
    chart_path,
    cli_parser,
    progress,
    setup_line,
    table,
    write_json,
)


def payloads() -> dict[str, dict[str, Any]]:
    """The three record shapes: what a session holds in real apps."""
    small = {"d": {"user_id": 48213, "locale": "en-GB"}, "m": {"c": 1764250000.25,
                                                               "t": 1764251000.5}}
    typical = {
        "d": {
            "user_id": 48213,
            "locale": "en-GB",
            "status": "Your profile was saved.",
            "cart": [{"sku": f"SKU-{i:05d}", "qty": i % 3 + 1, "price": 19.99 + i}
                     for i in range(10)],
            "last_seen": datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
        },
        "m": {"c": 1764250000.25, "t": 1764251000.5, "k": secrets.token_urlsafe(32),
              "f": [["status"], []]},
    }
    large = {
        "d": {
            "user_id": 48213,
            "history": [{"path": f"/products/{i}", "at": 1764250000 + i, "ref": "search"}
                        for i in range(520)],
        },
        "m": {"c": 1764250000.25, "t": 1764251000.5},
    }
    return {"small": small, "typical": typical, "large": large}


def optional_serializers() -> dict[str, Serializer]:
    """orjson / ormsgpack serializers, when those packages are installed."""
    found: dict[str, Serializer] = {}
    try:
        import orjson

        class OrjsonSerializer:
            def serialize(self, data: dict[str, Any]) -> bytes:
                payload: bytes = orjson.dumps(data)
                return payload

            def deserialize(self, payload: bytes) -> dict[str, Any]:
                value: dict[str, Any] = orjson.loads(payload)
                return value

        found["orjson"] = OrjsonSerializer()
    except ImportError:
        progress("orjson not installed: skipped (pip install orjson)")
    try:
        found["ormsgpack"] = OrmsgpackSerializer()  # the byte-compatible automatic choice
    except ImportError:
        progress("ormsgpack not installed: skipped (pip install ormsgpack)")
    return found


def _time(func: Callable[[], object], repeat: int) -> float:
    """Best of 5 runs of *repeat* calls, in microseconds per call."""
    return min(timeit.repeat(func, number=repeat, repeat=5)) / repeat * 1e6


def measure(repeat: int) -> list[dict[str, Any]]:
    """Encode/decode µs and size per serializer, payload and encryption setting."""
    serializers: dict[str, Serializer] = {"msgpack": MsgpackSerializer(),
                                          "json": JsonSerializer(), **optional_serializers()}
    cipher = AesGcmCipher(Secret(secrets.token_bytes(32)))
    rows: list[dict[str, Any]] = []
    for payload_name, data in payloads().items():
        for encrypted in (False, True):
            for name, serializer in serializers.items():
                record = data
                if name in ("json", "orjson") and "last_seen" in data["d"]:
                    # JSON has no datetime: send the ISO text it would have to use instead
                    record = {**data, "d": {**data["d"], "last_seen": "2026-11-27T12:00:00Z"}}
                codec = Codec(serializer, cipher if encrypted else None)
                try:
                    blob = codec.encode("sid", record)
                except Exception as exc:  # a serializer that cannot take this payload
                    progress(f"{name} cannot encode {payload_name}: {exc}")
                    continue
                encode = functools.partial(codec.encode, "sid", record)
                decode = functools.partial(codec.decode, "sid", blob)
                row: dict[str, Any] = {
                    "payload": payload_name,
                    "aes_gcm": encrypted,
                    "serializer": name,
                    "bytes": len(blob),
                    "encode_us": _time(encode, repeat),
                    "decode_us": _time(decode, repeat),
                }
                rows.append(row)
            progress(f"measured {payload_name} payload, aes_gcm={encrypted}")
    baseline = {(r["payload"], r["aes_gcm"]): r for r in rows if r["serializer"] == "msgpack"}
    for row in rows:
        base = baseline[(row["payload"], row["aes_gcm"])]
        row["encode_vs_msgpack"] = row["encode_us"] / base["encode_us"]
        row["decode_vs_msgpack"] = row["decode_us"] / base["decode_us"]
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table."""
    return table(
        ["payload", "AES-GCM", "serializer", "bytes", "encode µs", "decode µs",
         "encode vs msgpack", "decode vs msgpack"],
        [[r["payload"], "on" if r["aes_gcm"] else "off", r["serializer"], r["bytes"],
          r["encode_us"], r["decode_us"], r["encode_vs_msgpack"], r["decode_vs_msgpack"]]
         for r in rows],
    )


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Bar chart of encode+decode µs per serializer and payload (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [r for r in rows if not r["aes_gcm"]]
    names = sorted({r["serializer"] for r in plain}, key=lambda n: n != "msgpack")
    sizes = ["small", "typical", "large"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [next((r["encode_us"] + r["decode_us"] for r in plain
                        if r["serializer"] == name and r["payload"] == s), 0) for s in sizes]
        ax.bar([x + i * width for x in range(len(sizes))], values, width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(sizes))], sizes)
    ax.set_ylabel("encode + decode, µs (lower is better)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("aiosessmgr serializers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write JSON (and a chart with --plot)."""
    cli = cli_parser("python -m benchmarks.serializers", __doc__)
    cli.add_argument("--repeat", type=int, default=2000, help="calls per timing run")
    add_chart_arguments(cli)
    args = cli.parse_args(argv)
    print("## Serializers\n")
    print(setup_line(repeat=args.repeat, payloads="small/typical/large ~100 B/600 B/20 kB",
                     timing="best of 5"))
    rows = measure(args.repeat)
    print()
    print(render(rows))
    result = {"rows": rows}
    write_json("serializers", result)
    chart = chart_path("serializers", args)
    if chart is not None:
        plot(rows, chart)
        print(f"\nchart: {chart}")
    return result


if __name__ == "__main__":
    main()
