"""``python -m local.load``: many chat sessions at once against the local stack, then a check
that DynamoDB holds every acknowledged turn exactly once and in order.

    python -m local.load                          # starts python -m local, 500 sessions x 20 turns
    python -m local.load --sessions 20 --turns 3  # the quick version CI runs
    python -m local.load --url ws://127.0.0.1:8080/ws --dynamodb-url http://127.0.0.1:PORT

Each session is one WebSocket (a guest): ``getSession`` learns its id, then it sends its turns
one after the other, each waiting for ``done``. A turn is *acknowledged* when its ``done`` frame
arrives without a ``not_remembered`` notice. Latencies are measured from sending
``sendMessage`` to the first ``delta`` and to ``done``, minus the offline model's own pauses:
it sleeps ``--model-delay`` seconds before each chunk of three words, so ``delay`` is
subtracted from the first delta and ``delay x ceil(words of the reply / 3)`` from ``done``.

Afterwards every session's items are read back from DynamoDB (the stack's moto server itself,
not the fault proxy): an acknowledged turn missing from the table is *lost*, one stored more than
once is *duplicated*, and the stored turns must be numbered 1..n with the acknowledged messages in
the order they were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from boto3.dynamodb.conditions import Key

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"WebSocket: (ws://127\.0\.0\.1:\d+/ws)")
MOTO = re.compile(r"DynamoDB:  moto on (http://\S+)")
SETTING_GROUPS = ("STORAGE__", "CACHE__", "BREAKER__", "OUTBOX__", "MEMORY__")
CHUNK_WORDS = 3  # the offline model's chunk (chatmemory.llm.offline.CHUNK_WORDS)
FRAME_TIMEOUT = 120.0


@dataclass
class TurnResult:
    message: str
    turn: int | None = None  # the turn number ``done`` gave; None if not acknowledged
    first_delta_s: float | None = None
    done_s: float | None = None
    model_delay_s: float = 0.0  # the model's pauses in this turn, subtracted from done_s
    memory_mode: str | None = None
    not_kept: bool = False  # a not_remembered notice: the user was told this turn is not kept
    timed_out: bool = False  # API Gateway's "Endpoint request timed out" came (the turn goes on)
    error: str | None = None
    frames: list[str] = field(default_factory=list)  # the types received, to tell how a turn stalled


@dataclass
class SessionResult:
    index: int
    session_id: str | None = None
    turns: list[TurnResult] = field(default_factory=list)
    error: str | None = None

    @property
    def acknowledged(self) -> list[TurnResult]:
        """Turns answered (``done``) without being told they are not kept: they must be stored."""
        return [t for t in self.turns if t.turn is not None and not t.not_kept]


@dataclass
class Verdict:
    acknowledged: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order_sessions: int = 0
    problems: list[str] = field(default_factory=list)


def verify(sessions: list[SessionResult], stored: dict[str, list[dict[str, Any]]]) -> Verdict:
    """Every acknowledged turn stored exactly once, under the number ``done`` gave, in order."""
    verdict = Verdict()
    for session in sessions:
        acked = session.acknowledged
        verdict.acknowledged += len(acked)
        if session.session_id is None:
            continue
        items = sorted(stored.get(session.session_id, []), key=lambda i: int(i["turn_number"]))
        verdict.stored += len(items)
        counts = Counter(str(i.get("user_message")) for i in items)
        for turn in acked:
            seen = counts.get(turn.message, 0)
            if seen == 0:
                verdict.lost += 1
                verdict.problems.append(f"{session.session_id}: lost {turn.message!r}")
            elif seen > 1:
                verdict.duplicated += seen - 1
                verdict.problems.append(f"{session.session_id}: {turn.message!r} stored {seen} times")
        numbers = [int(i["turn_number"]) for i in items]
        by_number = {int(i["turn_number"]): str(i.get("user_message")) for i in items}
        acked_messages = {t.message for t in acked}
        stored_order = [by_number[n] for n in numbers if by_number[n] in acked_messages]
        in_order = (
            numbers == list(range(1, len(items) + 1))
            and stored_order == [t.message for t in acked]
            # a turn answered without DynamoDB (outbox) had a provisional number
            and all(by_number.get(t.turn or 0) == t.message for t in acked if t.memory_mode == "full")
        )
        if not in_order:
            verdict.out_of_order_sessions += 1
            verdict.problems.append(f"{session.session_id}: numbers {numbers}, stored {stored_order}")
    return verdict


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 by nearest rank, in milliseconds."""
    ordered = sorted(values)

    def rank(p: float) -> float | None:
        if not ordered:
            return None
        return round(1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 1)

    return {"p50_ms": rank(50), "p95_ms": rank(95), "p99_ms": rank(99), "max_ms": rank(100)}


# ---- the sessions ---------------------------------------------------------------------------


class _Gate:
    """Counts sessions that are connected (or gave up); opens when all are."""

    def __init__(self, total: int) -> None:
        self.total, self.arrived, self.acknowledged = total, 0, 0
        self.all_in = asyncio.Event()
        self.go = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.total:
            self.all_in.set()


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        msg = await ws.receive(timeout=FRAME_TIMEOUT)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {msg.type.name} {msg.data!r}")
        frame: dict[str, Any] = json.loads(msg.data)
        return frame


async def run_session(
    http: aiohttp.ClientSession,
    url: str,
    index: int,
    turns: int,
    model_delay: float,
    connecting: asyncio.Semaphore,
    gate: _Gate,
) -> SessionResult:
    result = SessionResult(index)
    arrived = False
    try:
        async with connecting:
            ws = await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=10), max_msg_size=0)
        async with ws:
            await ws.send_json({"action": "getSession"})
            session = await _frame(ws)
            result.session_id = str(session["sessionId"])
            arrived = True
            gate.arrive()
            await gate.go.wait()
            for number in range(1, turns + 1):
                turn = TurnResult(message=f"load session {index} message {number}: tell me something")
                result.turns.append(turn)
                began = time.monotonic()
                await ws.send_json(
                    {
                        "action": "sendMessage",
                        "message": turn.message,
                        "clientMessageId": f"l{index}-{number}",
                    }
                )
                text: list[str] = []
                while True:
                    frame = await _frame(ws)
                    kind = frame.get("type")
                    turn.frames.append(str(kind if "type" in frame else frame.get("message")))
                    if kind == "delta":
                        if turn.first_delta_s is None:
                            turn.first_delta_s = time.monotonic() - began - model_delay
                        text.append(str(frame["text"]))
                    elif kind == "done":
                        chunks = math.ceil(len("".join(text).split(" ")) / CHUNK_WORDS)
                        turn.model_delay_s = model_delay * chunks
                        turn.done_s = time.monotonic() - began - turn.model_delay_s
                        turn.turn = int(frame["turn"])
                        turn.memory_mode = str(frame.get("memoryMode"))
                        gate.acknowledged += 1
                        break
                    elif kind == "notice" and frame.get("code") == "not_remembered":
                        turn.not_kept = True
                    elif "type" not in frame:
                        # API Gateway's own message after 29 s; the Lambda runs on, and clients
                        # ignore frames without a type (docs/protocol.md): keep waiting.
                        turn.timed_out = True
                    elif kind == "error":
                        turn.error = str(frame.get("code"))
                        break
                if turn.error:
                    break
    except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not arrived:
            gate.arrive()
    return result


def stored_items(dynamodb_url: str, table: str, session_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    resource = boto3.resource(
        "dynamodb",
        endpoint_url=dynamodb_url,
        region_name="us-east-1",
        aws_access_key_id="local",  # moto takes any
        aws_secret_access_key="local",
    )
    sessions = resource.Table(table)
    out: dict[str, list[dict[str, Any]]] = {}
    for session_id in session_ids:
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id) & Key("turn_number").gt(0),
            "ConsistentRead": True,
        }
        items: list[dict[str, Any]] = []
        while True:
            page = sessions.query(**query)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        out[session_id] = items
    return out


def wait_for_outbox(sqs_url: str, timeout: float = 300.0) -> float | None:
    """Seconds until the turn outbox is empty (its turns stored), ``None`` if there is none."""
    sqs = boto3.client(
        "sqs",
        endpoint_url=sqs_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    try:
        url = sqs.get_queue_url(QueueName="TurnOutboxQueue.fifo")["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return None
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if not int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        ):
            return round(time.monotonic() - began, 2)
        time.sleep(0.5)
    return round(time.monotonic() - began, 2)


# ---- the stack --------------------------------------------------------------------------------


def _stop(process: subprocess.Popen[Any]) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


@dataclass
class StartedStack:
    process: subprocess.Popen[str]
    ws_url: str
    dynamodb_url: str
    output: list[str]
    moto: subprocess.Popen[bytes] | None = None

    def stop(self) -> int:
        code = _stop(self.process)
        if self.moto is not None:
            _stop(self.moto)
        return code


def start_moto(stock: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """moto's server in a process of its own, so it does not hold the stack's GIL:
    ``local.moto_server`` (moto without its whole-table Query and transaction costs) unless
    ``stock``."""
    from local.stack import free_port

    port = free_port()
    command = (
        ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        if stock
        else ["-m", "local.moto_server", str(port)]
    )
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, url
        except OSError:
            time.sleep(0.1)
    _stop(process)
    raise RuntimeError("moto's server did not start")


LOAD_QUOTAS = {
    "QUOTA__GUESTS_PER_SOURCE_BURST": "1000000",
    "QUOTA__GUESTS_PER_SOURCE_PER_HOUR": "1000000",
    "QUOTA__MESSAGES_PER_WINDOW": "1000000",
    "QUOTA__TOKENS_PER_DAY": "1000000000",
}


def start_stack(
    workers: int,
    model_delay: float,
    env: dict[str, str] | None = None,
    separate_moto: bool = True,
    stock_moto: bool = False,
) -> StartedStack:
    environ = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "LLM__PROVIDER")}
    moto, moto_url = start_moto(stock_moto) if separate_moto else (None, "")
    if moto is not None:
        environ["DYNAMODB_ENDPOINT_URL"] = environ["SQS_ENDPOINT_URL"] = moto_url
    # Every session is a new guest from this one loopback address, as no real user is, and a
    # session may send faster than a person: the limits are lifted for the run (still counted,
    # so the run measures what counting costs a turn).
    for name, value in LOAD_QUOTAS.items():
        environ.setdefault(name, value)
    environ.update(
        LLM__OFFLINE_DELAY_SECONDS=str(model_delay),
        POWERTOOLS_LOG_LEVEL=os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "--port", "0", "--workers", str(workers)],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if READY.search(line):
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60) or not READY.search("".join(output)):
        _stop(process)
        if moto is not None:
            _stop(moto)
        raise RuntimeError("python -m local did not start:\n" + "".join(output))
    log = "".join(output)
    ws = READY.search(log)
    own_moto = MOTO.search(log)
    assert ws is not None
    if moto is not None:
        return StartedStack(process, ws.group(1), moto_url, output, moto)
    if own_moto is None:
        raise RuntimeError("the stack does not run moto: pass --url and --dynamodb-url instead")
    return StartedStack(process, ws.group(1), own_moto.group(1), output)


# ---- the run ----------------------------------------------------------------------------------


async def drive(args: argparse.Namespace, url: str) -> tuple[list[SessionResult], dict[str, float | None]]:
    connector = aiohttp.TCPConnector(limit=0)
    connecting = asyncio.Semaphore(args.connect_concurrency)
    gate = _Gate(args.sessions)
    async with aiohttp.ClientSession(connector=connector) as http:
        began = time.monotonic()
        tasks = [
            asyncio.create_task(run_session(http, url, i, args.turns, args.model_delay, connecting, gate))
            for i in range(args.sessions)
        ]
        # Every session connected (or failed) before the first message: then all chat at once.
        await gate.all_in.wait()
        connect_s = time.monotonic() - began
        chat_began = time.monotonic()
        gate.go.set()
        progress = asyncio.create_task(_progress(gate, args.sessions * args.turns))
        results = await asyncio.gather(*tasks)
        progress.cancel()
        chat_s = time.monotonic() - chat_began
    return list(results), {"connect_s": round(connect_s, 2), "chat_s": round(chat_s, 2)}


async def _progress(gate: _Gate, total: int) -> None:
    began = time.monotonic()
    while True:
        await asyncio.sleep(15)
        elapsed = time.monotonic() - began
        print(f"{elapsed:5.0f} s: {gate.acknowledged}/{total} turns", file=sys.stderr, flush=True)


def _moto_description(args: argparse.Namespace) -> str:
    if args.url:
        return f"the given stack's, {args.dynamodb_url}"
    if args.moto_in_stack:
        return "moto's server, started by the stack"
    if args.stock_moto:
        return "`python -m moto.server`"
    return "`python -m local.moto_server`: moto without its whole-table Query and transaction costs"


def report(
    args: argparse.Namespace,
    results: list[SessionResult],
    timings: dict[str, float | None],
    verdict: Verdict,
) -> dict[str, Any]:
    turns = [t for s in results for t in s.turns]
    answered = [t for t in turns if t.turn is not None]
    acked = [t for t in answered if not t.not_kept]
    return {
        "command": "python -m local.load " + " ".join(args.argv),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}",
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "workers": args.workers,
        "model_delay_s": args.model_delay,
        "moto": _moto_description(args),
        # settings the stack got from this environment (the template's defaults otherwise)
        "stack_settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith(SETTING_GROUPS)},
        "connect_s": timings["connect_s"],
        "chat_s": timings["chat_s"],
        "turns_sent": len(turns),
        "turns_answered": len(answered),
        "turns_told_not_kept": len(answered) - len(acked),
        "turns_acknowledged": len(acked),
        "turns_per_second": round(len(answered) / timings["chat_s"], 1) if timings["chat_s"] else None,
        "first_delta": percentiles([t.first_delta_s for t in answered if t.first_delta_s is not None]),
        "done": percentiles([t.done_s for t in answered if t.done_s is not None]),
        "memory_modes": Counter(t.memory_mode for t in answered),
        "integration_timeouts": sum(1 for t in turns if t.timed_out),
        "outbox_drained_s": timings.get("outbox_drained_s"),
        "session_errors": Counter(s.error.split(":")[0] for s in results if s.error),
        "turn_errors": Counter(t.error for t in turns if t.error),
        "verification": {k: v for k, v in asdict(verdict).items() if k != "problems"},
        "problems": verdict.problems[:20],
        # how each session that failed got stuck: its unfinished turn's frames, in order
        "failed_sessions": [
            {
                "session": s.session_id,
                "error": s.error,
                "turns_answered": len(s.acknowledged),
                "last_turn_frames": s.turns[-1].frames[-12:] if s.turns else [],
            }
            for s in results
            if s.error
        ][:20],
    }


MARKDOWN = """# Load: {sessions} concurrent sessions x {turns_per_session} turns

Measured with `{command}` on {machine}, {measured_at}. The driver (`local/load.py`) started
`python -m local --workers {workers}` (the real handlers behind the local API Gateway, DynamoDB
behind the fault proxy, Redis, the offline model) in its own process, DynamoDB and SQS in
another ({moto}), and opened {sessions} WebSocket sessions at once, each sending
{turns_per_session} messages one after the other.

| | |
|---|---|
| sessions connected in | {connect_s} s |
| chat phase | {chat_s} s |
| turns sent / answered (`done`) | {turns_sent} / {turns_answered} |
| of which the user was told they are not kept (`not_remembered`) | {turns_told_not_kept} |
| throughput | **{turns_per_second} turns/s** |
| first delta p50 / p95 / p99 | {fd50} / {fd95} / {fd99} ms |
| done p50 / p95 / p99 | {d50} / {d95} / {d99} ms |
| memory mode of the answered turns | {memory_modes} |
| API Gateway "Endpoint request timed out" (turn went on) | {integration_timeouts} |
| session / turn errors | {session_errors} / {turn_errors} |
| stack settings from the environment | {stack_settings} |

Latencies exclude the offline model's own pauses: it sleeps `LLM__OFFLINE_DELAY_SECONDS`
({model_delay_s} s here) before each chunk of three words, so that much is subtracted from the first
delta and that much times the reply's chunks from `done`. What is left is the backend's own time:
the gateway, the handler threads, DynamoDB, Redis, the SDK and the @connections posts, queued
behind {sessions} sessions on one process.

## Exactly once, in order

Read back from the stack's DynamoDB (the moto server itself, bypassing the fault proxy) after
the run, once the turn outbox is empty: every acknowledged turn (answered, and not announced as
`not_remembered`) must be stored once, numbered 1..n in the order it was sent.

| acknowledged | stored | lost | duplicated | sessions out of order |
|---|---|---|---|---|
| {acknowledged} | {stored} | **{lost}** | **{duplicated}** | {out_of_order_sessions} |

{notes}
"""


def render(data: dict[str, Any], notes: str = "") -> str:
    fd, done, check = data["first_delta"], data["done"], data["verification"]
    return MARKDOWN.format(
        **{k: v for k, v in data.items() if not isinstance(v, dict)},
        fd50=fd["p50_ms"],
        fd95=fd["p95_ms"],
        fd99=fd["p99_ms"],
        d50=done["p50_ms"],
        d95=done["p95_ms"],
        d99=done["p99_ms"],
        memory_modes=", ".join(f"{k} {v}" for k, v in data["memory_modes"].items()),
        stack_settings=", ".join(f"`{k}={v}`" for k, v in data["stack_settings"].items()) or "none",
        session_errors=sum(data["session_errors"].values()),
        turn_errors=sum(data["turn_errors"].values()),
        notes=notes,
        **check,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--url", help="a running stack's WebSocket URL (default: start one)")
    parser.add_argument("--dynamodb-url", help="its DynamoDB endpoint, to verify what is stored")
    parser.add_argument("--table", default="ChatSessions")
    parser.add_argument(
        "--workers",
        type=int,
        default=16,
        help="the started stack's handler threads: Lambda concurrency of this one process. More "
        "threads on 2 cores starve each other of the GIL until Redis and DynamoDB calls miss their "
        "timeouts and memory degrades (64: most turns stateless)",
    )
    parser.add_argument("--model-delay", type=float, default=0.01, help="LLM__OFFLINE_DELAY_SECONDS")
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes in flight")
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md (e.g. docs/load)")
    parser.add_argument("--notes", default="", help="a paragraph appended to the markdown report")
    parser.add_argument("--stack-log", type=Path, help="write the started stack's output there")
    parser.add_argument(
        "--moto-in-stack",
        action="store_true",
        help="let the stack run moto in its own process (default: moto in a process of its own)",
    )
    parser.add_argument(
        "--stock-moto",
        action="store_true",
        help="moto's own server, whose Query sorts the whole table and whose transactions copy it "
        "(default: local.moto_server, which does neither)",
    )
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = None
    url, dynamodb_url = args.url, args.dynamodb_url
    if url is None:
        stack = start_stack(
            args.workers, args.model_delay, separate_moto=not args.moto_in_stack, stock_moto=args.stock_moto
        )
        url, dynamodb_url = stack.ws_url, stack.dynamodb_url
        print(f"stack: {url}, DynamoDB {dynamodb_url}", flush=True)
    try:
        results, timings = asyncio.run(drive(args, url))
        if dynamodb_url is None:
            print("no --dynamodb-url: nothing verified", file=sys.stderr)
            return 2
        if stack is not None:
            timings["outbox_drained_s"] = wait_for_outbox(stack.dynamodb_url)
        ids = [s.session_id for s in results if s.session_id]
        verdict = verify(results, stored_items(dynamodb_url, args.table, ids))
    finally:
        if stack is not None:
            stack.stop()
            if args.stack_log:
                args.stack_log.write_text("".join(stack.output))
    data = report(args, results, timings, verdict)
    print(json.dumps(data, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(render(data, args.notes))
    failed = verdict.lost or verdict.duplicated or verdict.out_of_order_sessions
    return 1 if failed or data["turns_answered"] < args.sessions * args.turns else 0


if __name__ == "__main__":
    sys.exit(main())
