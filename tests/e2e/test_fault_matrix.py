"""The fault matrix, proven against real processes: ``python -m local`` with its real handlers,
moto over HTTP behind the DynamoDB fault proxy, the real Redis behind its own proxy, and the
offline model through the anthropic SDK.

For each fault the tests record what the user sees (frame types, notice and error codes), the
memory mode, the wall-clock time to the answer and what DynamoDB really holds afterwards, and
assert the behaviour the README promises. With ``RESILIENCE_RESULTS=<path>`` the measured rows are
written there as JSON; ``scripts/resilience_table.py`` renders them into ``docs/resilience.md``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from boto3.dynamodb.conditions import Key
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from tests.conftest import TEST_REDIS_URL
from tests.e2e.conftest import STACK_ENV, Stack, start_stack, stop_stack
from tests.e2e.test_stack_conversation import TIMEOUT, open_socket, receive, reply, session_of, turn
from tests.support.waiting import DEADLINE, wait_until

RESET_SECONDS = float(STACK_ENV["BREAKER__RESET_TIMEOUT_SECONDS"])
FAIL_MAX = int(STACK_ENV["BREAKER__FAIL_MAX"])
READ_TIMEOUT = float(STACK_ENV["STORAGE__READ_TIMEOUT_SECONDS"])
TURNS_UNDER_FAULT = FAIL_MAX + 1  # enough to open a breaker and answer once while it is open
# Every answer under a fault comes well inside this; the libraries' defaults are far above it
# (botocore reads for 60 s, redis-py waits forever, the anthropic SDK for 10 minutes).
ANSWER_BOUND = 3.0
AT_ONCE = " [offline:slow=0]"  # a reply streamed without the model's pauses
RESULTS_ENV = "RESILIENCE_RESULTS"
# A database apart from the e2e stacks' (each flushes its own when it starts): the unit and
# integration tests', which no test uses while this module runs. The suite uses the two
# databases it is given and no other.
MATRIX_REDIS_URL = os.environ.get("MATRIX_REDIS_URL") or TEST_REDIS_URL
# The outbox: a failed message is delivered again after 1 s; after 8 receives (an outage of
# about 8 s, longer than any here) it is dead-lettered.
MAX_RECEIVES = 8
QUEUE_ARGS = ["--max-receive-count", str(MAX_RECEIVES), "--queue-retry-seconds", "1"]
REPLAY_BOUND = 10.0  # seconds from recovery until every queued turn is stored (measured, not a test)


@dataclass
class Row:
    fault: str
    frames: str
    memory_mode: str
    first_answer_s: float | None
    later_answer_s: float | None
    stored: str
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ROWS: list[Row] = []


@pytest.fixture(scope="module")
def matrix() -> Iterator[Stack]:
    """A stack of its own, on a Redis database of its own: breakers opened here cannot slow down
    other tests, and other stacks starting (they flush theirs) cannot empty this one's cache.
    Not flushed: session ids are fresh UUIDs, and a concurrent run may be using it."""
    started = start_stack(QUEUE_ARGS, extra_env={"REDIS_URL": MATRIX_REDIS_URL})
    yield started
    stop_stack(started.process)
    path = os.environ.get(RESULTS_ENV)
    if path and ROWS:
        Path(path).write_text(json.dumps(_report(), indent=2) + "\n")


def _report() -> dict[str, Any]:
    return {
        "command": f"{RESULTS_ENV}=docs/resilience.json .venv/bin/pytest -q tests/e2e/test_fault_matrix.py",
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}; shared: load average {os.getloadavg()[1]:.1f} "
        "over the last 5 minutes of the run",
        "model": f"the offline model in its {STACK_ENV['LLM__OFFLINE_MODE']} mode "
        "(`LLM__OFFLINE_MODE`) through the anthropic SDK",
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "settings": {k: v for k, v in STACK_ENV.items() if "__" in k},
        "rows": [asdict(row) for row in ROWS],
    }


# ---- helpers --------------------------------------------------------------------------------


def timed_turn(ws: ClientConnection, message: str) -> tuple[list[dict[str, Any]], float]:
    began = time.monotonic()
    frames = turn(ws, message)
    return frames, time.monotonic() - began


def shape(frames: list[dict[str, Any]]) -> str:
    """``notice:memory_degraded, delta x5, done`` — what the user saw, deltas counted."""
    parts: list[str] = []
    deltas = 0
    for frame in frames:
        if frame["type"] == "delta":
            deltas += 1
            continue
        if deltas:
            parts.append(f"delta x{deltas}")
            deltas = 0
        code = frame.get("code")
        parts.append(f"{frame['type']}:{code}" if code else frame["type"])
    if deltas:
        parts.append(f"delta x{deltas}")
    return ", ".join(parts)


def codes(frames: list[dict[str, Any]], kind: str) -> list[str]:
    return [f["code"] for f in frames if f["type"] == kind]


def stored_turns(stack: Stack, session_id: str) -> dict[str, dict[str, Any]]:
    """The session's turn items in the stack's real DynamoDB, by user message."""
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    items = table.query(KeyConditionExpression=Key("session_id").eq(session_id))["Items"]
    return {str(item["user_message"]): item for item in items if "user_message" in item}


def session_items(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    """Every turn item of the session, by turn number (duplicates and holes visible)."""
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    items = table.query(KeyConditionExpression=Key("session_id").eq(session_id) & Key("turn_number").gt(0))
    return sorted(items["Items"], key=lambda i: int(i["turn_number"]))


def wait_for_replay(stack: Stack, session_id: str, count: int) -> None:
    """Until the session has ``count`` turn items (the outbox replayed what it holds)."""
    try:
        wait_until(
            lambda: len(session_items(stack, session_id)) >= count,
            f"{count} turns of {session_id} stored",
            interval=0.05,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the stack's last lines:\n{''.join(stack.output[-60:])}") from None


def assert_stored_once_in_order(stack: Stack, session_id: str, messages: list[str]) -> None:
    items = session_items(stack, session_id)
    assert [int(i["turn_number"]) for i in items] == list(range(1, len(items) + 1)), items  # no hole
    assert [str(i["user_message"]) for i in items] == messages  # in order, each once
    assert all(i["status"] == "complete" and i["assistant_reply"] for i in items), items


def assert_fast(seconds: float, bound: float, what: str) -> None:
    """An upper bound on wall-clock time is a measurement: checked when the matrix is measured
    (``make resilience``, ``RESILIENCE_RESULTS`` set), never in the test suite, where a busy
    machine makes anything slow. The rows record the figures either way."""
    if os.environ.get(RESULTS_ENV):
        assert seconds < bound, (what, seconds, bound)


def assert_outlived(seconds: float, bound: float, what: str) -> None:
    """A lower bound on wall-clock time (a premise: the reply outlived a timeout) is checked
    when the matrix is measured too; in the suite the order of the frames proves the point."""
    if os.environ.get(RESULTS_ENV):
        assert seconds >= bound, (what, seconds, bound)


def queue_url(stack: Stack, logical_id: str) -> str:
    sqs = boto3.client("sqs", endpoint_url=stack.dynamodb_url, region_name="us-east-1")
    return str(sqs.get_queue_url(QueueName=f"{logical_id}.fifo")["QueueUrl"])


def is_cached(session_id: str) -> bool:
    """The session's turns are in Redis (a turn is written through just before ``done``)."""
    return bool(redis.Redis.from_url(MATRIX_REDIS_URL).llen(f"chat:{{{session_id}}}:turns"))


def wait_until_cached(session_id: str) -> None:
    wait_until(lambda: is_cached(session_id), "the first turn in the cache")


def recover(stack: Stack) -> None:
    """Every dependency back, and memory whole again: a turn of a fresh session answered from
    DynamoDB without a notice and written through to Redis, so neither breaker is open any
    more (each closes on the first call after its reset timeout)."""
    stack.faults(dynamodb="pass", redis="pass", sqs="pass")

    def whole() -> bool:
        try:
            with open_socket(stack) as ws:
                probe = session_of(ws)["sessionId"]
                frames = turn(ws, f"are you back?{AT_ONCE}")
        except InvalidStatus:  # $connect refused: the connections table's breaker is still open
            return False
        return frames[-1].get("memoryMode") == "full" and not codes(frames, "notice") and is_cached(probe)

    wait_until(whole, "memory back after the faults", interval=0.2)


def prove_nothing_queued(stack: Stack, ws: ClientConnection, session_id: str, kept: list[str]) -> None:
    """Absence shown by a later event, not by waiting a while: the outbox keeps a session's
    turns in one FIFO group and stores them in order, so once a turn queued now is stored, any
    turn queued before it would be too. The session then holds ``kept`` and that turn alone.

    After an outage of the queue its breaker stays open for its reset timeout: a marker sent
    meanwhile is refused and the user told so (``not_remembered``); the next one probes."""
    stack.faults(dynamodb="stall")
    markers: list[tuple[str, list[dict[str, Any]]]] = []

    def queued() -> bool:
        marker = f"queued after the fault {uuid.uuid4().hex[:8]}{AT_ONCE}"
        markers.append((marker, turn(ws, marker)))
        return codes(markers[-1][1], "notice") == ["memory_degraded"]

    try:
        wait_until(queued, "a marker turn queued", interval=RESET_SECONDS / 4)
    finally:
        stack.faults(dynamodb="pass")
    for _, refused in markers[:-1]:
        assert codes(refused, "notice") == ["memory_degraded", "not_remembered"], refused
    marker = markers[-1][0]
    wait_for_replay(stack, session_id, len(kept) + 1)
    assert_stored_once_in_order(stack, session_id, [*kept, marker])


def breaker_changes(stack: Stack, since: int) -> list[tuple[str, str, str]]:
    """(breaker, from, to) of the state changes the handlers logged after line ``since``, up to
    now (every line written before this call is read first)."""
    changes = []
    for line in stack.caught_up()[since:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == "breaker state change":
            changes.append((str(record["breaker"]), str(record["from"]), str(record["to"])))
    return changes


# ---- memory faults --------------------------------------------------------------------------

MEMORY_FAULTS = [
    ("Redis stalled", {"redis": "stall"}, "full", []),
    ("Redis refused", {"redis": "refuse"}, "full", []),
    # The turns go to the outbox and are stored when DynamoDB is back.
    ("DynamoDB stalled", {"dynamodb": "stall"}, "cache_only", ["memory_degraded"]),
    ("DynamoDB refused", {"dynamodb": "refuse"}, "cache_only", ["memory_degraded"]),
    ("both stalled", {"dynamodb": "stall", "redis": "stall"}, "stateless", ["memory_unavailable"]),
]


@pytest.mark.parametrize(
    ("fault", "modes", "memory_mode", "notices"), MEMORY_FAULTS, ids=[f[0] for f in MEMORY_FAULTS]
)
def test_memory_fault(
    matrix: Stack, fault: str, modes: dict[str, str], memory_mode: str, notices: list[str]
) -> None:
    deferred = memory_mode == "cache_only"
    remembered = memory_mode == "full"
    questions = [f"{fault} question {i}{AT_ONCE}" for i in range(TURNS_UNDER_FAULT)]
    with open_socket(matrix) as ws:
        session_id = session_of(ws)["sessionId"]
        assert turn(ws, "My name is Ada")[-1]["memoryMode"] == "full"
        wait_until_cached(session_id)
        mark = len(matrix.caught_up())  # every line of earlier turns before it
        matrix.faults(**modes)
        try:
            # streamed at once: the seconds measure the stores, not the model's pace
            answers = [timed_turn(ws, question) for question in questions]
        finally:
            recovered = time.monotonic()
            recover(matrix)
        replayed_s = None
        if deferred:
            wait_for_replay(matrix, session_id, 1 + TURNS_UNDER_FAULT)
            replayed_s = time.monotonic() - recovered
            assert_fast(replayed_s, REPLAY_BOUND, f"{fault}: replayed after recovery")
            assert_stored_once_in_order(matrix, session_id, ["My name is Ada", *questions])
        elif not remembered:
            prove_nothing_queued(matrix, ws, session_id, ["My name is Ada"])
    stored = stored_turns(matrix, session_id)

    for frames, seconds in answers:
        assert codes(frames, "notice") == notices, frames
        notice_text = " ".join(f["message"] for f in frames if f["type"] == "notice")
        # Deferred turns are announced honestly: they will be saved, not maybe forgotten.
        assert ("will be saved" in notice_text) is deferred, notice_text
        assert frames[-1]["type"] == "done" and frames[-1]["memoryMode"] == memory_mode, frames
        assert_fast(seconds, ANSWER_BOUND, fault)
        # Only stateless answers forget the first turn: the other store still has it.
        history = frames[-1]["usage"]["budget"]["historyTurns"]
        assert (history >= 1) is (memory_mode != "stateless"), frames[-1]
    for question in questions:
        item = stored.get(question)
        if remembered or deferred:
            assert item is not None and item["status"] == "complete" and item["assistant_reply"]
        else:
            assert item is None, item  # nothing reached the table, nor is on its way to it
    for dependency in (name for name, mode in modes.items() if mode == "stall"):
        # A stall costs client timeouts until the breaker opens (logged); then no answer waits on it.
        assert (dependency, "closed", "open") in breaker_changes(matrix, mark), breaker_changes(matrix, mark)
        assert_fast(answers[-1][1], answers[0][1], f"{fault}: an answer once the breaker is open")

    ROWS.append(
        Row(
            fault=fault,
            frames=shape(answers[0][0]),
            memory_mode=memory_mode,
            first_answer_s=round(answers[0][1], 3),
            later_answer_s=round(answers[-1][1], 3),
            stored="turn complete"
            if remembered
            else f"queued in the outbox; all {TURNS_UNDER_FAULT} turns stored in order, once, "
            f"{replayed_s:.2f} s after recovery"
            if deferred
            else "nothing (turn not stored)",
            extra={"answers_s": [round(s, 3) for _, s in answers]},
        )
    )


# ---- the outbox: no lost turns ---------------------------------------------------------------


def dead_letters(stack: Stack) -> list[str]:
    sqs = boto3.client("sqs", endpoint_url=stack.dynamodb_url, region_name="us-east-1")
    url = queue_url(stack, "TurnOutboxDeadLetterQueue")
    bodies = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        bodies.extend(m["Body"] for m in messages)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return bodies


def test_turns_of_an_outage_are_stored_in_order_once_it_ends_and_poison_is_dead_lettered(
    matrix: Stack,
) -> None:
    sqs = boto3.client("sqs", endpoint_url=matrix.dynamodb_url, region_name="us-east-1")
    poison = f"not a turn {uuid.uuid4().hex}"
    sqs.send_message(
        QueueUrl=queue_url(matrix, "TurnOutboxQueue"),
        MessageBody=poison,
        MessageGroupId=f"poison-{uuid.uuid4().hex}",
        MessageDeduplicationId=uuid.uuid4().hex,
    )
    poisoned = time.monotonic()
    questions = [f"during the outage {i}" for i in range(3)]
    with open_socket(matrix) as ws:
        session_id = session_of(ws)["sessionId"]
        assert turn(ws, "My name is Ada")[-1]["memoryMode"] == "full"
        wait_until_cached(session_id)
        matrix.faults(dynamodb="stall")
        try:
            answers = [timed_turn(ws, q) for q in questions]
        finally:
            matrix.faults(dynamodb="pass")
        recovered = time.monotonic()
        wait_for_replay(matrix, session_id, 1 + len(questions))
        replayed_s = time.monotonic() - recovered
        assert_fast(replayed_s, REPLAY_BOUND, "the outage's turns replayed")
        history = session_of(ws)["history"]

    for frames, _ in answers:
        assert codes(frames, "notice") == ["memory_degraded"], frames
        assert "will be saved" in frames[0]["message"]
        assert frames[-1]["type"] == "done" and frames[-1]["memoryMode"] == "cache_only"
    assert_stored_once_in_order(matrix, session_id, ["My name is Ada", *questions])
    # The session's history (DynamoDB's: the cache window without them was dropped) shows them.
    assert [t["user"] for t in history] == ["My name is Ada", *questions]
    # The poison, in a group of its own, never held these back and ends in the dead-letter queue.
    dead: list[str] = []
    wait_until(
        lambda: dead.extend(dead_letters(matrix)) or poison in dead,
        "the poison message dead-lettered",
        timeout=MAX_RECEIVES + DEADLINE,
        interval=0.2,
    )
    dead_s = time.monotonic() - poisoned

    ROWS.append(
        Row(
            fault="DynamoDB outage, then back (outbox)",
            frames=shape(answers[0][0]),
            memory_mode="cache_only",
            first_answer_s=round(answers[0][1], 3),
            later_answer_s=round(answers[-1][1], 3),
            stored=f"{len(questions)} turns queued, stored as turns 2-{1 + len(questions)} in order, once, "
            f"{replayed_s:.2f} s after DynamoDB was back; getSession shows them",
            notes=f"a poison message queued first (another session's group) reached the dead-letter "
            f"queue after {MAX_RECEIVES} receives ({dead_s:.1f} s) without holding these turns back",
        )
    )


def test_dynamodb_and_the_outbox_both_down_says_the_turn_is_not_saved(matrix: Stack) -> None:
    with open_socket(matrix) as ws:
        session_id = session_of(ws)["sessionId"]
        assert turn(ws, "My name is Ada")[-1]["memoryMode"] == "full"
        wait_until_cached(session_id)
        matrix.faults(dynamodb="stall", sqs="stall")
        try:
            answers = [timed_turn(ws, f"nowhere to keep {i}") for i in range(TURNS_UNDER_FAULT)]
        finally:
            recover(matrix)
        # Nothing is on its way: the queue never took these turns.
        prove_nothing_queued(matrix, ws, session_id, ["My name is Ada"])

    for frames, seconds in answers:
        # Said first: it will be saved; then, when the queue refused it: it was not.
        assert codes(frames, "notice") == ["memory_degraded", "not_remembered"], frames
        assert frames[-1]["type"] == "done" and frames[-1]["memoryMode"] == "cache_only"
        assert_fast(seconds, ANSWER_BOUND, "answer under fault")

    ROWS.append(
        Row(
            fault="DynamoDB and the outbox (SQS) stalled",
            frames=shape(answers[0][0]),
            memory_mode="cache_only",
            first_answer_s=round(answers[0][1], 3),
            later_answer_s=round(answers[-1][1], 3),
            stored="nothing (the user is told: not_remembered)",
            notes="the outbox has its own breaker and botocore timeouts",
        )
    )


# ---- model faults ---------------------------------------------------------------------------

RETRIED = "the SDK retries it once (LLM__MAX_RETRIES=1), then gives up"
MODEL_FAULTS = [
    ("model 429", "[offline:429] hello", RETRIED),
    ("model 529", "[offline:529] hello", RETRIED),
    ("model stream cut midway", "[offline:cut] hello", "not retried: part of the reply was generated"),
]


@pytest.mark.parametrize(("fault", "message", "notes"), MODEL_FAULTS, ids=[f[0] for f in MODEL_FAULTS])
def test_model_fault(matrix: Stack, fault: str, message: str, notes: str) -> None:
    with open_socket(matrix) as ws:
        session_id = session_of(ws)["sessionId"]
        frames, seconds = timed_turn(ws, message)
    item = stored_turns(matrix, session_id).get(message)

    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "llm_unavailable", frames
    assert not codes(frames, "notice") and "done" not in [f["type"] for f in frames]
    assert_fast(seconds, ANSWER_BOUND, "model fault")
    # The user's message is kept; what was streamed is kept as failed, never as complete.
    assert item is not None and item["status"] == "failed", item
    partial = str(item.get("assistant_reply", ""))
    # What the user was shown is exactly what was stored (the batcher is flushed before the error).
    assert partial == reply(frames)
    if "cut" in message:
        assert partial, "the cut comes midway: part of the reply was generated first"

    ROWS.append(
        Row(
            fault=fault,
            frames=shape(frames),
            memory_mode="(none: no done)",
            first_answer_s=round(seconds, 3),
            later_answer_s=None,
            stored=f"user message, status failed, partial reply of {len(partial)} chars"
            f" ({len(reply(frames))} of them sent)",
            notes=notes,
        )
    )


# ---- the client goes away mid-stream ---------------------------------------------------------

SLOW = "[offline:slow=0.2] tell me a story"
FAST = "[offline:slow=0.0] tell me a story"  # the same length: the same reply, at once


def wait_for_status(stack: Stack, session_id: str, message: str) -> dict[str, Any]:
    """The turn's item once it is no longer pending (the handler finished it)."""

    def finished() -> dict[str, Any] | None:
        item = stored_turns(stack, session_id).get(message)
        return item if item is not None and item["status"] != "pending" else None

    item: dict[str, Any] = wait_until(finished, f"the turn {message!r} finished")
    return item


def test_client_gone_mid_stream(matrix: Stack) -> None:
    with open_socket(matrix) as ws:
        session_id = session_of(ws)["sessionId"]
        began = time.monotonic()
        ws.send(json.dumps({"action": "sendMessage", "message": SLOW}))
        seen = [receive(ws)]
        while seen[-1]["type"] != "delta":
            seen.append(receive(ws))
    closed = time.monotonic()
    item = wait_for_status(matrix, session_id, SLOW)
    finished = time.monotonic()

    with open_socket(matrix) as ws:
        control_session = session_of(ws)["sessionId"]
        full = reply(turn(ws, FAST))
    control = stored_turns(matrix, control_session)[FAST]

    # The handler noticed at its next post (410 GoneException -> ClientGone), closed the model
    # stream and kept what was said as interrupted, not complete.
    assert item["status"] == "interrupted", item
    partial = str(item.get("assistant_reply", ""))
    assert reply(seen) and partial.startswith(reply(seen))
    assert control["status"] == "complete" and str(control["assistant_reply"]) == full
    assert len(partial) < len(full), (partial, full)
    # It stopped within about one chunk of the close (0.2 s apart), long before the full reply.
    full_duration = 0.2 * (len(full.split(" ")) / 3)
    assert full_duration > 1.0, full_duration
    assert_fast(finished - closed, 1.0, "finished after the close")

    ROWS.append(
        Row(
            fault="client gone mid-stream",
            frames=shape(seen) + ", (socket closed)",
            memory_mode="(none: no done)",
            first_answer_s=None,
            later_answer_s=None,
            stored=f"status interrupted, {len(partial)} of {len(full)} chars",
            notes=f"socket closed {closed - began:.2f} s after sending, at the first delta; the handler "
            f"stored the interrupted turn {finished - closed:.2f} s after the close "
            f"(the full reply takes about {full_duration:.1f} s)",
        )
    )


# ---- breakers -------------------------------------------------------------------------------


def test_breaker_opens_fails_fast_probes_and_closes(matrix: Stack) -> None:
    with open_socket(matrix) as ws:
        session_id = session_of(ws)["sessionId"]
        assert turn(ws, "My name is Ada")[-1]["memoryMode"] == "full"
        wait_until_cached(session_id)
        mark = len(matrix.caught_up())  # every line of earlier turns before it
        matrix.faults(dynamodb="stall")
        try:
            failing: list[float] = []
            while ("dynamodb", "closed", "open") not in breaker_changes(matrix, mark):
                assert len(failing) < FAIL_MAX, breaker_changes(matrix, mark)
                frames, seconds = timed_turn(ws, f"failing {len(failing)} [offline:slow=0]")
                assert frames[-1]["memoryMode"] == "cache_only"
                failing.append(seconds)
            frames, open_seconds = timed_turn(ws, "while open [offline:slow=0]")
            assert frames[-1]["memoryMode"] == "cache_only"
        finally:
            matrix.faults(dynamodb="pass")
        # DynamoDB answers again. The breaker calls it only once its reset timeout has run out
        # (half-open); that probe succeeds and closes it, and the turn has full memory again.
        # Turns until then stay cache only, however long the machine takes to get there.
        probes = 0

        def full_again() -> float | None:
            nonlocal probes
            probes += 1
            frames, seconds = timed_turn(ws, f"after the fault {probes} [offline:slow=0]")
            if frames[-1]["memoryMode"] != "full":
                assert frames[-1]["memoryMode"] == "cache_only", frames[-1]
                return None
            assert not codes(frames, "notice"), frames
            return seconds

        probe_seconds = wait_until(full_again, "full memory after the breaker's reset timeout", interval=0.1)
        # The process's breaker is shared: the probe is a turn's first DynamoDB call or the
        # outbox replay's (it retries the turns queued meanwhile), whichever comes first.
        # The breaker closed before that turn's DynamoDB calls: its change is logged by now.
        closed = ("dynamodb", "half-open", "closed")
        changes = [c for c in breaker_changes(matrix, mark) if c[0] == "dynamodb"]
        assert closed in changes, changes

    # Each failing call waited for the read timeout (a lower bound: a busy machine only adds to
    # it); while open, no call waits at all (a measurement).
    assert all(s >= READ_TIMEOUT for s in failing), failing
    assert_fast(open_seconds, READ_TIMEOUT, "a turn while the breaker is open")
    # Open, then nothing but probes: each lets one call through (half-open). A probe that met
    # the stall (the machine was slower than the reset timeout) opened it again; the one after
    # the heal closed it.
    first_close = changes.index(closed)
    assert changes[0] == ("dynamodb", "closed", "open"), changes
    assert changes[1 : first_close + 1] == [
        *[("dynamodb", "open", "half-open"), ("dynamodb", "half-open", "open")] * ((first_close - 2) // 2),
        ("dynamodb", "open", "half-open"),
        closed,
    ], changes

    ROWS.append(
        Row(
            fault="DynamoDB breaker cycle",
            frames=f"{len(failing)} failing turns, then open",
            memory_mode="cache_only → full",
            first_answer_s=round(failing[0], 3),
            later_answer_s=round(open_seconds, 3),
            stored="-",
            notes=f"opened after {len(failing)} turns; the probe after {RESET_SECONDS:g} s (the next "
            f"turn's or the outbox replay's call) closed it (the first full turn: {probe_seconds:.3f} s, "
            f"{probes} turns after the heal)",
        )
    )


# ---- API Gateway's integration timeout -------------------------------------------------------


SLOW_REPLY = "[offline:slow=0.008] take your time"  # about 150 chunks: a second or so


def slow_turn(stack: Stack) -> tuple[list[dict[str, Any]], list[float], dict[str, Any]]:
    """A reply that takes about a second: its frames, when each arrived, and the stored turn."""
    with open_socket(stack) as ws:
        session_id = session_of(ws)["sessionId"]
        began = time.monotonic()
        ws.send(json.dumps({"action": "sendMessage", "message": SLOW_REPLY}))
        frames: list[dict[str, Any]] = []
        arrived: list[float] = []
        while not frames or frames[-1].get("type") not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=TIMEOUT)))
            arrived.append(time.monotonic() - began)
    return frames, arrived, wait_for_status(stack, session_id, SLOW_REPLY)


def test_the_integration_timeout_tells_the_client_and_the_lambda_runs_on() -> None:
    stack = start_stack(["--integration-timeout", "0.3"])
    try:
        frames, arrived, stored = slow_turn(stack)
    finally:
        stop_stack(stack.process)

    timeouts = [i for i, f in enumerate(frames) if "type" not in f]
    assert len(timeouts) == 1, frames
    message = frames[timeouts[0]]
    assert message["message"] == "Endpoint request timed out"
    assert message["connectionId"] and message["requestId"]
    assert_outlived(arrived[timeouts[0]], 0.3, "the integration timeout message, not before the timeout")
    assert_fast(arrived[timeouts[0]], 1.0, "the integration timeout message")
    # The Lambda was not stopped: the reply went on after the timeout message and was stored.
    assert frames[-1]["type"] == "done" and timeouts[0] < len(frames) - 1
    assert stored["status"] == "complete"


def test_a_handed_off_turn_outlives_the_integration_timeout_quietly() -> None:
    """STREAM__HANDOFF: the handler acknowledges at once and the turn runs on elsewhere (a
    thread here; an asynchronous invocation of the function on AWS)."""
    stack = start_stack(["--integration-timeout", "0.3"], extra_env={"STREAM__HANDOFF": "thread"})
    try:
        frames, arrived, stored = slow_turn(stack)
    finally:
        stop_stack(stack.process)

    assert all("type" in f for f in frames), frames  # no "Endpoint request timed out"
    assert frames[-1]["type"] == "done", frames
    assert_outlived(arrived[-1], 0.3, "the handed-off turn, past the integration timeout")
    assert stored["status"] == "complete" and stored["assistant_reply"] == reply(frames)


# ---- a reply longer than API Gateway's 29 s, through the real default timeout -----------------

LONG_REPLY_SECONDS = 40.0
# Long enough that the offline model quotes only its first 60 characters: the directive after
# them changes how fast the reply comes, not what it says.
STORY = "Tell me the whole long story of the lighthouse keeper and the ships he saw pass by"


@pytest.mark.slow
def test_a_40_second_reply_arrives_whole_without_the_integration_timeout() -> None:
    """The one slow test of CI (about 45 s): the default 29 s integration timeout of the local
    gateway, the turn handed off (STREAM__HANDOFF=thread), a reply the model takes 40 s to give."""
    stack = start_stack(extra_env={"STREAM__HANDOFF": "thread"})
    try:
        with open_socket(stack) as ws:
            session_of(ws)
            expected = reply(turn(ws, f"{STORY} [offline:slow=0]"))
        chunks = -(-len(expected.split(" ")) // 3)  # the offline model's chunks of three words
        pause = LONG_REPLY_SECONDS / chunks
        message = f"{STORY} [offline:slow={pause:.3f}]"
        with open_socket(stack) as ws:
            session_id = session_of(ws)["sessionId"]
            began = time.monotonic()
            ws.send(json.dumps({"action": "sendMessage", "message": message}))
            frames: list[dict[str, Any]] = []
            arrived: list[float] = []
            while not frames or frames[-1].get("type") not in ("done", "error"):
                frames.append(json.loads(ws.recv(timeout=LONG_REPLY_SECONDS + 20)))
                arrived.append(time.monotonic() - began)
        item = wait_for_status(stack, session_id, message)
    finally:
        stop_stack(stack.process)

    assert all("type" in f for f in frames), [f for f in frames if "type" not in f]  # no timeout message
    assert frames[-1]["type"] == "done", frames[-1]
    assert_outlived(arrived[-1], 29.0, "the reply, past API Gateway's integration timeout")
    assert reply(frames) == expected  # whole
    first_delta = arrived[[f["type"] for f in frames].index("delta")]
    assert_fast(first_delta, 2 * pause + 2.0, "the first delta")  # it starts with the model's first chunk
    assert item["status"] == "complete" and item["assistant_reply"] == expected

    ROWS.append(
        Row(
            fault=f"reply of {arrived[-1]:.0f} s (> 29 s integration timeout), handed off",
            frames=shape(frames),
            memory_mode=str(frames[-1]["memoryMode"]),
            first_answer_s=round(arrived[-1], 3),
            later_answer_s=None,
            stored="turn complete, the whole reply",
            notes=f"first delta after {first_delta:.2f} s (the model pauses {pause:.2f} s before each "
            f"of its {chunks} chunks); no 'Endpoint request timed out' message",
        )
    )
