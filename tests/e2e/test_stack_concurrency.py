"""Several tabs of one person on one session, sending at the same moments, over real
WebSockets with ``python -m local``: every message becomes exactly one turn, numbered without
a gap, answered with its own reply; what a tab is told (``busy``) it retries."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_stack_conversation import open_socket, receive, reply, session_of, turn
from tests.e2e.test_stack_data_rights import stored
from tests.support.waiting import wait_until

TABS = 4
MESSAGES = 3  # per tab


# Twelve turns racing on a busy 2-core machine: minutes at worst, never a wall-clock bound.
@pytest.mark.timeout(600)
def test_tabs_sending_at_once_never_lose_duplicate_overwrite_or_interleave_a_turn(stack: Stack) -> None:
    with open_socket(stack) as first:
        session = session_of(first)
        session_id, token = session["sessionId"], session["guestToken"]
        assert turn(first, "We start here")[-1]["turn"] == 1

    sockets = [open_socket(stack, session_id, token) for _ in range(TABS)]
    for ws in sockets:
        assert session_of(ws)["sessionId"] == session_id  # the same person, the same session
    barrier = threading.Barrier(TABS)
    answers: dict[str, list[dict[str, Any]]] = {}
    busy = [0] * TABS
    failures: list[BaseException] = []

    def tab(i: int) -> None:
        try:
            for j in range(MESSAGES):
                message = f"tab {i} message {j}"
                barrier.wait(timeout=300)  # every tab sends its j-th message at the same moment

                def answered(i: int = i, j: int = j, message: str = message) -> list[dict[str, Any]] | None:
                    sent = {"action": "sendMessage", "message": message, "clientMessageId": f"t{i}-m{j}"}
                    sockets[i].send(json.dumps(sent))
                    frames = [receive(sockets[i])]
                    while frames[-1]["type"] not in ("done", "error"):
                        frames.append(receive(sockets[i]))
                    if frames[-1]["type"] == "error" and frames[-1]["code"] == "busy":
                        busy[i] += 1  # another tab's turn is being answered: send it again
                        return None
                    return frames

                # however long the other tabs' turns take on a busy machine
                answers[message] = wait_until(answered, f"{message} answered, not busy", timeout=300)
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=tab, args=(i,)) for i in range(TABS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=500)
    for ws in sockets:
        ws.close()
    # The first tab's own failure, not the BrokenBarrierError it caused in the others.
    assert not failures, [f for f in failures if not isinstance(f, threading.BrokenBarrierError)] or failures
    print(f"\n{TABS} tabs x {MESSAGES} messages on one session: {sum(busy)} busy answers retried")

    sent = {f"tab {i} message {j}" for i in range(TABS) for j in range(MESSAGES)}
    assert set(answers) == sent
    for message, frames in answers.items():
        assert frames[-1]["type"] == "done", (message, frames[-1])
        assert reply(frames)
        assert {f["turn"] for f in frames} == {frames[-1]["turn"]}  # no frame of another turn

    # What DynamoDB holds: turns 1..13 without a gap, each message exactly once, each with the
    # reply its tab received, complete.
    items = sorted(
        (i for i in stored(stack, session_id) if int(i["turn_number"]) > 0),
        key=lambda i: int(i["turn_number"]),
    )
    assert [int(i["turn_number"]) for i in items] == list(range(1, 2 + TABS * MESSAGES))
    users = [str(i["user_message"]) for i in items]
    assert users[0] == "We start here" and sorted(users[1:]) == sorted(sent)
    for item in items[1:]:
        frames = answers[str(item["user_message"])]
        assert item["status"] == "complete"
        assert int(item["turn_number"]) == frames[-1]["turn"]
        assert str(item["assistant_reply"]) == reply(frames)
        # and each turn was answered with every earlier turn in its context
        assert frames[-1]["usage"]["budget"]["historyTurns"] == int(item["turn_number"]) - 1, item[
            "turn_number"
        ]
