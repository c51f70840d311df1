"""``python -m bench.retrieval``: what retrieval adds to a turn's planning, by session length.

For each length, a session's corpus sits in a private redis-server (random unit vectors: the
cost does not depend on their values) and the same message is planned two ways, in one run:
``plan``, the newest turns that fit the budget (``token_budget``'s plan, no search), and
``plan + retrieval``, the corpus read (one LRANGE), the query embedded, both rankings, fusion
and the fill. The model, DynamoDB and the write-through are left out: this is the part of a
turn retrieval changes. Medians over ``--reps``, wall clock and this process's CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import redis

from bench.infra import RedisServer, machine
from bench.sides import text


def _passages(length: int, dimensions: int) -> list[Any]:
    from chatmemory.embeddings import normalise, pack
    from chatmemory.memory.corpus import Passage
    from chatmemory.turns import Turn

    rng = np.random.default_rng(length)
    vectors = normalise(rng.normal(size=(length, dimensions)))
    return [
        Passage(
            Turn(
                session_id="bench",
                turn=n,
                user=text(n, 300),
                assistant=text(n + 10_000, 600),
                status="complete",
                at=1_700_000_000 + 60 * n,
                expires_at=2_000_000_000,
                user_tokens=80,
                output_tokens=160,
            ),
            pack(vectors[n - 1]),
        )
        for n in range(1, length + 1)
    ]


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def run(lengths: list[int], reps: int, provider: str) -> list[dict[str, Any]]:
    from chatmemory.breakers import Breakers
    from chatmemory.cache import corpus_key
    from chatmemory.config import BreakerSettings, EmbeddingSettings, MemorySettings
    from chatmemory.embeddings import build_embedder
    from chatmemory.memory.context import plan_context
    from chatmemory.memory.corpus import CorpusRepository
    from chatmemory.memory.retrieval import Recall
    from chatmemory.memory.state import MemoryState
    from chatmemory.memory.strategies import STRATEGIES
    from chatmemory.memory.tokens import TokenEstimator
    from chatmemory.store import TurnStore

    server = RedisServer().start()
    rows: list[dict[str, Any]] = []
    try:
        client = redis.Redis.from_url(server.url)
        embedder = build_embedder(EmbeddingSettings(provider=provider), "us-east-1")  # type: ignore[arg-type]
        dimensions = 384 if provider == "offline" else 256
        settings = MemorySettings()
        estimator = TokenEstimator(settings.chars_per_token)
        breakers = Breakers.from_settings(BreakerSettings())
        store = TurnStore(None)  # type: ignore[arg-type]  # never reached: the corpus is cached
        recall = Recall(CorpusRepository(store, client, breakers, 3_600, time.time), embedder, breakers)
        message = "What did we decide about the winter roads and the saga of the village?"
        for length in lengths:
            passages = _passages(length, dimensions)
            client.delete(corpus_key("bench"))
            client.rpush(corpus_key("bench"), *(p.to_json() for p in passages))
            window = [p.turn for p in passages[-settings.context_turns :]]

            def plain(window: list[Any] = window) -> None:
                plan_context(
                    STRATEGIES["token_budget"], MemoryState(), window, "s", message, settings, estimator
                )

            def searching(window: list[Any] = window) -> None:
                found = recall.search("bench", message, set())
                plan_context(
                    STRATEGIES["retrieval"],
                    MemoryState(),
                    window,
                    "s",
                    message,
                    settings,
                    estimator,
                    None,
                    found.candidates,
                    found.mode,
                )

            row: dict[str, Any] = {"length": length}
            for name, op in (("plan", plain), ("plan + retrieval", searching)):
                op()  # warm: imports, the model, the per-process keyword index
                wall, cpu = [], []
                for _ in range(reps):
                    w, c = time.perf_counter(), time.process_time()
                    op()
                    wall.append(time.perf_counter() - w)
                    cpu.append(time.process_time() - c)
                row[name] = (_median_ms(wall), _median_ms(cpu))
            row["corpus bytes"] = sum(len(p.to_json()) for p in passages)
            rows.append(row)
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__)
    parser.add_argument("--lengths", default="10,100,1000,5000")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--provider", default="offline", help="offline (E5-small) or wordllama")
    args = parser.parse_args()
    rows = run([int(n) for n in args.lengths.split(",")], args.reps, args.provider)
    info = machine(None)
    print(
        f"machine: {info.get('cpu')}, {info.get('cpus')} CPUs; embeddings: {args.provider}; reps {args.reps}"
    )
    print("| turns | plan ms (cpu) | plan + retrieval ms (cpu) | added ms | corpus in Redis |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        plain, full = row["plan"], row["plan + retrieval"]
        print(
            f"| {row['length']:,} | {plain[0]:.2f} ({plain[1]:.2f}) | {full[0]:.2f} ({full[1]:.2f}) "
            f"| {full[0] - plain[0]:.2f} | {row['corpus bytes'] / 1e6:.2f} MB |"
        )


if __name__ == "__main__":
    main()
