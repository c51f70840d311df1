"""``python -m bench.session_list``: what a ``listSessions`` page costs as a principal's
conversations grow.

One principal with ``count`` listed sessions (meta items as turns leave them, 80-character
titles) beside other principals' (the table holds 10,000 listings whatever ``count`` is), in a
moto server over HTTP and a private redis-server. Timed: ``SessionList.list_sessions`` for a
page of 20 (the binding read from Redis, the index query, the frame built) with a sender that
keeps nothing, the first page and one deeper page (from a cursor); sides interleaved in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.infra import MotoServer, RedisServer, apply_env, machine

OTHERS = 10_000  # listings of other principals in the same table
TITLE = "A title of eighty characters, the most a title may have, in every listing xxxxxx"


class NullSender:
    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        json.dumps(frame)  # what sending costs us: the frame encoded


def _seed(resource: Any, table: str, principal: str, count: int, now: int) -> None:
    with resource.Table(table).batch_writer() as batch:
        for n in range(count):
            batch.put_item(
                Item={
                    "session_id": f"{principal}-{n:05}",
                    "turn_number": 0,
                    "listed_by": principal,
                    "last_active": 1000 * now - n,
                    "created_at": now - n - 600,
                    "turn_count": 1 + n % 300,
                    "title": TITLE,
                    "ttl": now + 86_400,
                }
            )


def run(counts: list[int], reps: int, say: Any = print) -> dict[str, Any]:
    apply_env()
    redis_server = RedisServer().start()
    moto = MotoServer().start()
    info = machine(redis_server.version())
    rows: list[dict[str, Any]] = []
    try:
        import boto3
        import redis
        from chatmemory.config import Settings
        from chatmemory.services import Services
        from chatmemory.session_list import SessionList
        from chatmemory.storage.bindings import Binding

        from local.template import create_tables

        settings = Settings(
            cache={"redis_url": redis_server.url},
            storage={"dynamodb_endpoint_url": moto.url},
            llm={"provider": "offline", "offline_delay_seconds": 0},
        )
        resource = boto3.resource("dynamodb", endpoint_url=moto.url, region_name="us-east-1")
        create_tables(resource, {"ChatSessionsTable": "ChatSessions", "ConnectionsTable": "ChatConnections"})
        now = int(time.time())
        for n in range(OTHERS // 1000):
            _seed(resource, "ChatSessions", f"guest:other-{n}", 1000, now)
        services = Services(settings, resource, redis.Redis.from_url(redis_server.url))
        lists: dict[int, tuple[SessionList, str, str]] = {}
        for count in counts:
            principal = f"guest:bench-{count}"
            _seed(resource, "ChatSessions", principal, count, now)
            connection = f"bench-{count}"
            services.registry.bind(
                Binding(
                    connection_id=connection,
                    session_id=f"{principal}-00000",
                    principal=principal,
                    connected_at=now,
                )
            )
            session_list = SessionList(
                services.sessions("http://unused"), services.memory, NullSender(), time.time
            )
            first = session_list.list_sessions(connection, None, 20)
            lists[count] = (session_list, connection, str(first["next"]))
        wall: dict[tuple[int, str], list[float]] = {(c, p): [] for c in counts for p in ("first", "deeper")}
        for _ in range(reps):
            for count, (session_list, connection, cursor) in lists.items():
                for page, start in (("first", None), ("deeper", cursor if count > 20 else None)):
                    began = time.perf_counter()
                    session_list.list_sessions(connection, start, 20)
                    wall[(count, page)].append(time.perf_counter() - began)
        smallest = counts[0]
        for (count, page), samples in wall.items():
            median = statistics.median(samples)
            base = statistics.median(wall[(smallest, page)])
            rows.append(
                {
                    "sessions": count,
                    "page": page,
                    "median_ms": round(1000 * median, 3),
                    "x_smallest": round(median / base, 2),
                }
            )
        say("  " + ", ".join(f"{r['sessions']} {r['page']} {r['median_ms']} ms" for r in rows))
    finally:
        moto.stop()
        redis_server.stop()
    return {"command": "python -m bench.session_list", "machine": info, "reps": reps, "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# listSessions: a page as conversations grow",
        "",
        f"`{results['command']}`, {results['reps']} repetitions, on {m.get('cpu', '?')}"
        f" ({m.get('cores', '?')} cores), moto {m['packages'].get('moto')} over HTTP (which answers a"
        f" Query by scanning the table) and redis-server {m.get('redis_server')}.",
        "A page of 20; the table also holds 10,000 other principals' listings.",
        "",
        "| sessions | page | median ms | x at the fewest |",
        "| ---: | --- | ---: | ---: |",
    ]
    lines += [
        f"| {r['sessions']:,} | {r['page']} | {r['median_ms']} | {r['x_smallest']} |" for r in results["rows"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session_list", description=__doc__)
    parser.add_argument("--counts", default="10,1000")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", default=None, help="write session_list.json and session_list.md here")
    args = parser.parse_args(argv)
    results = run([int(n) for n in args.counts.split(",")], args.reps)
    report = markdown(results)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "session_list.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "session_list.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
