"""The measuring loop: every side at every length, interleaved, and the round trips of a turn."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.sides import BenchError, Case

Say = Callable[[str], None]


@contextlib.contextmanager
def counting_round_trips() -> Iterator[dict[str, int]]:
    """Count network writes: one per Redis command or pipeline (redis-py packs a pipeline into
    one write), one per HTTP request to DynamoDB (retries included)."""
    import botocore.httpsession
    import redis.connection

    counts = {"redis": 0, "dynamodb": 0}
    send_redis = redis.connection.AbstractConnection.send_packed_command
    send_http = botocore.httpsession.URLLib3Session.send

    def redis_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["redis"] += 1
        return send_redis(self, *args, **kwargs)

    def http_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["dynamodb"] += 1
        return send_http(self, *args, **kwargs)

    redis.connection.AbstractConnection.send_packed_command = redis_counted  # type: ignore[method-assign]
    botocore.httpsession.URLLib3Session.send = http_counted  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        redis.connection.AbstractConnection.send_packed_command = send_redis  # type: ignore[method-assign]
        botocore.httpsession.URLLib3Session.send = send_http  # type: ignore[method-assign]


def _one(case: Case, counts: dict[str, int] | None = None) -> tuple[float, float] | None:
    """One measured turn: wall ms and this process's CPU ms (the client side's own work; the
    servers run in other processes). ``None`` (and ``case.error``) if the side failed. With
    ``counts``, the turn's round trips (not those of ``before``/``after``) are added to it."""
    case.before()
    try:
        with counting_round_trips() if counts is not None else contextlib.nullcontext() as counted:
            cpu = time.process_time_ns()
            start = time.perf_counter_ns()
            result = case.turn()
            elapsed = (time.perf_counter_ns() - start) / 1e6
            cpu_ms = (time.process_time_ns() - cpu) / 1e6
        if counts is not None and counted is not None:
            counts.update(counted)
    except BenchError:
        raise
    except Exception as exc:
        case.error = f"turn: {type(exc).__name__}: {exc}"
        return None
    case.after(result)
    return elapsed, cpu_ms


RoundTrips = dict[tuple[str, str, int], dict[str, int]]


def run(cases: list[Case], reps: int, warmup: int, seed: int, say: Say) -> RoundTrips:
    """Round-robin: each repetition runs one turn of every live case, lengths in turn, the
    cases of a length in a fresh random order, so drift and noise reach every side alike.
    The first ``warmup`` repetitions are not kept; the last of them (connections open by then)
    also counts each case's round trips."""
    warmup = max(2, warmup)  # the counted turn must not pay for opening connections
    rng = random.Random(seed)
    lengths = sorted({c.length for c in cases})
    round_trips: RoundTrips = {}
    began = time.monotonic()
    for rep in range(warmup + reps):
        for length in lengths:
            live = [c for c in cases if c.length == length and c.error is None]
            rng.shuffle(live)
            for case in live:
                if rep == warmup - 1:
                    counts: dict[str, int] = {}
                    elapsed = _one(case, counts)
                    round_trips[case.key] = counts
                else:
                    elapsed = _one(case)
                if elapsed is not None and rep >= warmup:
                    case.samples.append(elapsed[0])
                    case.cpu_samples.append(elapsed[1])
        done = rep + 1
        if done in (warmup, warmup + reps) or done % max(1, (warmup + reps) // 10) == 0:
            say(f"  repetition {done}/{warmup + reps} ({time.monotonic() - began:.0f} s)")
    return round_trips


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(samples: list[float]) -> dict[str, float | int]:
    return {
        "median_ms": round(percentile(samples, 50), 4),
        "p99_ms": round(percentile(samples, 99), 4),
        "mean_ms": round(sum(samples) / len(samples), 4),
        "min_ms": round(min(samples), 4),
        "samples": len(samples),
    }
