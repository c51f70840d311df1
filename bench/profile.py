"""Where the project's per-turn time goes beyond the floor: ``python -m bench.profile``.

Runs the project's turn and the floor's turn (same round trips, raw clients) under cProfile,
only around the measured call, and attributes each function's own time to the package it
lives in. The difference between the two columns is what the project's code adds to the
round trips. Writes ``profile.md`` next to the other results.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.infra import MotoServer, RedisServer, apply_env

ROOT = Path(__file__).resolve().parent.parent
BUCKETS = [
    ("chatmemory", "/chatmemory/"),
    ("boto3 (resource, TypeSerializer, conditions)", "/boto3/"),
    ("botocore (signing, serialising, parsing)", "/botocore/"),
    ("redis-py", "/redis/"),
    ("pydantic", "/pydantic"),
    ("pybreaker", "pybreaker"),
    ("powertools (tracer, metrics, logger)", "/aws_lambda_powertools/"),
    ("aws_xray_sdk", "/aws_xray_sdk/"),
    ("urllib3 / http.client", "/urllib3/"),
    ("urllib3 / http.client", "/http/"),
    ("socket / select (waiting on the server)", "socket"),
    ("socket / select (waiting on the server)", "selectors"),
]


def bucket(filename: str, name: str) -> str:
    for label, needle in BUCKETS:
        if needle in filename or (filename == "~" and needle in name):
            return label
    if filename == "~":
        return "builtins (json, copy, locks, ...)"
    return "stdlib / other"


def profile_pair(cases: list[Any], turns: int) -> list[tuple[pstats.Stats, float, float]]:
    """Profile the cases' turns alternately (one turn each, in turn), so machine noise reaches
    them alike; returns each case's stats, wall ms and CPU ms per turn."""
    for case in cases:
        for _ in range(5):  # warm up: connections, caches
            case.before()
            case.after(case.turn())
    profilers = [cProfile.Profile() for _ in cases]
    wall = [0.0] * len(cases)
    cpu = [0.0] * len(cases)
    for _ in range(turns):
        for i, case in enumerate(cases):
            case.before()
            w, c = time.perf_counter(), time.process_time()
            profilers[i].enable()
            result = case.turn()
            profilers[i].disable()
            wall[i] += time.perf_counter() - w
            cpu[i] += time.process_time() - c
            case.after(result)
    return [(pstats.Stats(p), 1000 * wall[i] / turns, 1000 * cpu[i] / turns) for i, p in enumerate(profilers)]


def by_bucket(stats: pstats.Stats, turns: int) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (filename, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        out[bucket(filename, name)] += 1000 * row[2] / turns  # tottime, ms per turn
    return out


def top(stats: pstats.Stats, turns: int, n: int) -> list[tuple[float, float, str]]:
    rows = []
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        short = re.sub(r"^.*/(site-packages|python3\.\d+|layers/domain)/", "", filename)
        short = short.removeprefix(f"{ROOT}/")
        rows.append((1000 * row[3] / turns, 1000 * row[2] / turns, f"{short}:{line} {name}"))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--turns", type=int, default=300)
    p.add_argument("--out", default=str(ROOT / "docs" / "bench"))
    args = p.parse_args()
    apply_env()
    warnings.filterwarnings("ignore")
    redis_server, moto = RedisServer().start(), MotoServer().start()
    lines = [
        "# Profile: the project's turn against the floor's",
        "",
        f"`python -m bench.profile --length {args.length} --turns {args.turns}`: cProfile around the "
        "measured call only; own time (tottime) per turn summed by package. cProfile's per-call "
        "overhead inflates call-heavy code, so read the columns against each other, not as absolute "
        "times.",
    ]
    try:
        from bench.__main__ import _quiet_domain_logs
        from bench.sides import World, floor_case, project_case

        _quiet_domain_logs()
        world = World(redis_server.url, moto.url, 300)
        for op in ("cache_hit", "cache_miss"):
            ours = project_case(world, args.length, op)
            floor = floor_case(world, args.length, op)
            (s_ours, wall_ours, cpu_ours), (s_floor, wall_floor, cpu_floor) = profile_pair(
                [ours, floor], args.turns
            )
            b_ours, b_floor = by_bucket(s_ours, args.turns), by_bucket(s_floor, args.turns)
            lines += [
                "",
                f"## {op}, {args.length} turns",
                "",
                f"Under the profiler: project {wall_ours:.2f} ms wall / {cpu_ours:.2f} ms CPU per turn; "
                f"floor {wall_floor:.2f} ms wall / {cpu_floor:.2f} ms CPU.",
                "",
                "| package | project ms/turn | floor ms/turn | added by the project |",
                "| --- | ---: | ---: | ---: |",
            ]
            for name in sorted(set(b_ours) | set(b_floor), key=lambda k: -(b_ours[k] - b_floor[k])):
                added = b_ours[name] - b_floor[name]
                lines.append(f"| {name} | {b_ours[name]:.3f} | {b_floor[name]:.3f} | {added:+.3f} |")
            lines += [
                "",
                "Project, top functions by cumulative time (ms per turn, cumulative / own):",
                "",
                "```",
            ]
            lines += [f"{cum:8.3f} {own:8.3f}  {where}" for cum, own, where in top(s_ours, args.turns, 40)]
            lines += ["```"]
    finally:
        moto.stop()
        redis_server.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
