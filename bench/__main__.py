"""``python -m bench``: per-turn memory cost side by side, cold start, the round-trip floor.

Writes results.json, results.md and PNG plots to ``--out`` (default docs/bench).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from bench.infra import MotoServer, RedisServer, apply_env, machine

ROOT = Path(__file__).resolve().parent.parent


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--lengths", default="10,100,1000", help="conversation lengths in turns")
    p.add_argument("--reps", type=int, default=250, help="measured repetitions per side and length")
    p.add_argument("--warmup", type=int, default=5, help="repetitions run first and not kept (at least 2)")
    p.add_argument("--message-chars", type=int, default=300, help="size of each message, each way")
    p.add_argument("--cold-runs", type=int, default=7, help="fresh interpreters per function (0: skip)")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of a private redis-server")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench"), help="where results go")
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--report-only", action="store_true", help="re-render results.md and the plots from results.json"
    )
    return p.parse_args(argv)


def _source() -> dict[str, Any]:
    """Which code was measured: the commit, and whether the domain or the functions had
    changes not committed yet (another engineer's work in progress, say)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD") or os.environ.get("BENCH_SOURCE_COMMIT")
    changes = git("status", "--porcelain", "--", "layers", "functions")
    return {"commit": commit, "uncommitted_changes_in_domain": bool(changes) if changes is not None else None}


def _say(message: str) -> None:
    print(message, flush=True)


def _quiet_domain_logs() -> None:
    """The stateless path logs warnings on purpose; they are produced (and paid for) as in
    Lambda, but written to /dev/null instead of this report."""
    from chatmemory.observability import logger

    handler = logger.registered_handler
    if hasattr(handler, "setStream"):
        handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process


def _build_cases(world: Any, lengths: list[int], say: Any) -> tuple[list[Any], dict[str, Any]]:
    from bench import sides

    notes: dict[str, Any] = {}
    stateless = sides.stateless_services(world)
    try:
        import langchain_community  # noqa: F401

        langchain = True
    except ImportError as exc:
        langchain = False
        notes["langchain"] = f"not installed ({exc}); install the bench extra"
    cases = []
    for length in lengths:
        began = time.monotonic()
        cases += [
            sides.project_case(world, length, "cache_hit"),
            sides.project_case(world, length, "cache_miss"),
            sides.stateless_case(world, stateless, length),
            sides.floor_case(world, length, "cache_hit"),
            sides.floor_case(world, length, "cache_miss"),
            sides.naive_blob_case(world, length),
        ]
        if langchain:
            cases += [sides.langchain_dynamodb_case(world, length), sides.langchain_redis_case(world, length)]
        say(f"  seeded {length}-turn sessions in {time.monotonic() - began:.1f} s")
    broken = sorted(c.length for c in cases if c.side == "langchain_dynamodb" and c.error)
    if broken:
        fits = [n for n in lengths if n < broken[0]]
        notes["langchain_dynamodb_limit"] = sides.langchain_dynamodb_limit(
            world, fits[-1] if fits else 1, broken[0]
        )
    return cases, notes


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    if args.report_only:
        import json

        from bench import report

        stored = json.loads((Path(args.out) / "results.json").read_text())
        _say(f"wrote {', '.join(report.write(stored, Path(args.out)))}")
        return 0
    apply_env()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    lengths = sorted(int(n) for n in args.lengths.split(","))
    command = "python -m bench" + (" " + shlex.join(a for a in argv) if argv else "")
    began = time.monotonic()

    redis_server = None
    if args.redis_url:
        redis_url = args.redis_url
    elif RedisServer.available():
        redis_server = RedisServer().start()
        redis_url = redis_server.url
    else:
        redis_url = "redis://127.0.0.1:6379/13"
        _say("redis-server not found: using database 13 of the Redis on 127.0.0.1:6379 (shared, noisier)")
    moto = MotoServer().start()
    try:
        _quiet_domain_logs()
        from bench import coldstart, report, runner
        from bench.sides import World

        _say(f"redis {redis_url} · moto {moto.url} · lengths {lengths} · {args.reps} reps")
        world = World(redis_url, moto.url, args.message_chars)
        cases, notes = _build_cases(world, lengths, _say)
        for case in cases:
            if case.error:
                _say(f"  {case.side} at {case.length} turns: {case.error}")
        round_trips = runner.run(cases, args.reps, args.warmup, args.seed, _say)
        table = report.rows(cases, round_trips)
        cold, imports = [], None
        if args.cold_runs > 0:
            cold = coldstart.measure(args.cold_runs, redis_url, moto.url, _say)
            imports = {
                "function": "SendMessageFunction",
                "top": coldstart.import_profile("SendMessageFunction", redis_url, moto.url),
            }
        results: dict[str, Any] = {
            "command": command,
            "source": _source(),
            "machine": machine(redis_server.version() if redis_server else None),
            "config": {
                "lengths": lengths,
                "reps": args.reps,
                "warmup": max(2, args.warmup),
                "message_chars": args.message_chars,
                "window": 10,
                "context_turns_loaded": world.context,
                "seed": args.seed,
                "redis": "private redis-server" if redis_server else "shared Redis",
                "dynamodb": "moto server over HTTP, own process",
            },
            "per_turn": table,
            "targets": report.targets(table, lengths),
            "langchain_dynamodb_limit": notes.get("langchain_dynamodb_limit"),
            "notes": {k: v for k, v in notes.items() if k != "langchain_dynamodb_limit"},
            "cold_start": cold,
            "cold_start_imports": imports,
            "duration_s": round(time.monotonic() - began, 1),
        }
        if results["machine"]["redis_server"] is None:
            import redis

            info = redis.Redis.from_url(redis_url).info("server")
            results["machine"]["redis_server"] = info.get("redis_version")
        out = Path(args.out)
        if args.no_plots:
            out.mkdir(parents=True, exist_ok=True)
            written = ["results.json", "results.md"]
            (out / "results.md").write_text(report.markdown(results))
            import json

            (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        else:
            written = report.write(results, out)
        _say(report.markdown(results))
        _say(f"wrote {', '.join(written)} in {time.monotonic() - began:.0f} s")
    finally:
        moto.stop()
        if redis_server is not None:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
