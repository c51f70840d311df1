"""No lost turns: turns answered while DynamoDB is down wait in the SQS FIFO outbox and are
stored, in order and exactly once, when it is back. Real processes: a moto server over HTTP for
DynamoDB that the tests stop and restart, another for SQS and @connections, a real
redis-server; the replay runs the template's outbox function through the local SQS event source
(the same handler Lambda's event source mapping invokes)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from boto3.dynamodb.conditions import Key
from chatmemory.outbox import OutboxRecord
from chatmemory.services import Services, use_services
from chatmemory.turns import Turn

from local.event_sources import QueuePoller
from local.template import create_queues, create_tables, load_template
from tests.conftest import TABLE_NAMES, make_settings
from tests.support.gateway import Client
from tests.support.processes import MotoHttpServer, RedisProcess
from tests.support.waiting import wait_for_probes, wait_until

RESET_TIMEOUT = 0.5
MAX_RECEIVES = 3


@dataclass
class Outage:
    services: Services
    redis: RedisProcess
    dynamodb: MotoHttpServer
    sqs: Any
    queues: dict[str, str]
    poller: QueuePoller

    def client(self) -> Client:
        client = Client(f"conn-{uuid.uuid4().hex[:12]}")
        assert client.connect() == {"statusCode": 200}
        return client

    def session_of(self, client: Client) -> str:
        frame = client.send({"action": "getSession"})[-1]
        return str(frame["sessionId"])

    def items(self, session_id: str) -> list[dict[str, Any]]:
        table = boto3.resource("dynamodb", endpoint_url=self.dynamodb.url, region_name="us-east-1").Table(
            "ChatSessions"
        )
        response = table.query(
            KeyConditionExpression=Key("session_id").eq(session_id) & Key("turn_number").gt(0)
        )
        return list(response["Items"])

    def queued(self, logical_id: str = "TurnOutboxQueue") -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queues[logical_id],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def drain(self) -> None:
        """Deliver batches until a receive finds nothing and the queue is empty (fails loudly
        if it never empties)."""
        wait_until(lambda: not self.poller.poll_once() and self.queued() == 0, "the outbox drained")

    def recover(self) -> None:
        """Until every breaker that opened during the outage lets its next call probe."""
        wait_for_probes(*vars(self.services.breakers).values())


@pytest.fixture
def outage() -> Iterator[Outage]:
    with RedisProcess() as redis_proc, MotoHttpServer() as dynamodb, MotoHttpServer() as aws:
        create_tables(
            boto3.resource("dynamodb", endpoint_url=dynamodb.url, region_name="us-east-1"), TABLE_NAMES
        )
        sqs = boto3.client("sqs", endpoint_url=aws.url, region_name="us-east-1")
        queues = create_queues(sqs, MAX_RECEIVES)
        settings = make_settings(
            redis_proc.url,
            storage={
                "dynamodb_endpoint_url": dynamodb.url,
                "connect_timeout_seconds": 0.3,
                "read_timeout_seconds": 0.5,
            },
            stream={"connections_endpoint_url": aws.url},
            breaker={"fail_max": 2, "reset_timeout_seconds": RESET_TIMEOUT},
            outbox={"queue_url": queues["TurnOutboxQueue"], "endpoint_url": aws.url},
        )
        services = Services.from_settings(settings)
        use_services(services)
        (mapping,) = load_template().queue_mappings()
        poller = QueuePoller(sqs, queues[mapping.queue], mapping, retry_seconds=0, say=lambda _: None)
        yield Outage(services, redis_proc, dynamodb, sqs, queues, poller)
        use_services(None)


def done_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    assert frames and frames[-1]["type"] == "done", frames
    return frames[-1]


def test_turns_answered_while_dynamodb_is_down_are_stored_in_order_when_it_is_back(outage: Outage) -> None:
    client = outage.client()
    session_id = outage.session_of(client)
    done_of(client.say("My name is Ada"))

    # DynamoDB goes away: three turns are answered from the cache, and the user is told they
    # will be saved.
    outage.dynamodb.stop()
    answers = [client.say(f"while down {i}") for i in range(3)]
    for frames in answers:
        notice = frames[0]
        assert notice["type"] == "notice" and notice["code"] == "memory_degraded", frames
        assert "will be saved" in notice["message"]
        assert done_of(frames)["memoryMode"] == "cache_only"
        assert "not_remembered" not in [f.get("code") for f in frames]
    assert outage.queued() == 3

    # While it is still down, the replay fails and keeps every turn queued.
    outage.poller.poll_once()
    assert outage.queued() == 3

    outage.dynamodb.start()
    outage.recover()
    outage.drain()

    assert outage.queued() == 0
    items = outage.items(session_id)
    assert [int(i["turn_number"]) for i in items] == [1, 2, 3, 4]
    assert [i["user_message"] for i in items] == ["My name is Ada"] + [f"while down {i}" for i in range(3)]
    assert all(i["status"] == "complete" and i["assistant_reply"] for i in items)
    # The cache window (turn 1 only) was dropped: the history the next turn and getSession see
    # is DynamoDB's, with the replayed turns.
    history = client.send({"action": "getSession"})[-1]["history"]
    assert [t["user"] for t in history][-3:] == [f"while down {i}" for i in range(3)]
    assert done_of(client.say("and now?"))["turn"] == 5


def test_a_redelivered_turn_is_stored_once(outage: Outage) -> None:
    session_id = f"s-{uuid.uuid4().hex}"
    record = OutboxRecord(
        turn=Turn(
            session_id=session_id, turn=1, user="hi", assistant="hello", status="complete", at=1, expires_at=2
        )
    )
    first = outage.services.outbox_replayer.replay(record)
    again = outage.services.outbox_replayer.replay(record)  # SQS delivers at least once
    assert first == again == 1
    assert [i["user_message"] for i in outage.items(session_id)] == ["hi"]


def test_a_turn_queued_before_its_session_was_erased_is_never_stored(outage: Outage) -> None:
    client = outage.client()
    session_id = outage.session_of(client)
    done_of(client.say("My name is Ada"))
    outage.dynamodb.stop()
    done_of(client.say("queued while down"))
    assert outage.queued() == 1
    outage.dynamodb.start()
    outage.recover()
    # The user erases the conversation before the outbox has drained.
    assert [f["type"] for f in client.send({"action": "deleteSession"})][:1] == ["deleted"]
    outage.drain()
    assert outage.queued() == 0
    assert outage.items(session_id) == []  # the erased conversation does not come back


def test_a_turn_number_taken_meanwhile_goes_to_the_next_free_one(outage: Outage) -> None:
    client = outage.client()
    session_id = outage.session_of(client)
    done_of(client.say("first"))
    # A queued turn whose provisional number (2) a live turn took before the replay ran.
    record = OutboxRecord(
        turn=Turn(
            session_id=session_id,
            turn=2,
            user="queued",
            assistant="ok",
            status="complete",
            at=1,
            expires_at=2,
        )
    )
    done_of(client.say("live"))
    assert outage.services.outbox_replayer.replay(record) == 3
    assert [i["user_message"] for i in outage.items(session_id)] == ["first", "live", "queued"]


def test_redis_failing_after_the_write_keeps_the_turn_queued_until_the_stale_window_is_gone(
    outage: Outage,
) -> None:
    client = outage.client()
    session_id = outage.session_of(client)
    done_of(client.say("My name is Ada"))
    outage.dynamodb.stop()
    client.say("while down")
    outage.dynamodb.start()
    outage.recover()

    # Redis stalls between the DynamoDB write and the cache invalidation: the turn is stored,
    # the message stays on the queue (its batch item failed).
    outage.redis.stall()
    try:
        outage.poller.poll_once()
        assert outage.queued() == 1
        assert [i["user_message"] for i in outage.items(session_id)] == ["My name is Ada", "while down"]
    finally:
        outage.redis.resume()
    outage.recover()
    outage.drain()

    # Redelivered: not stored again, and the stale window (turn 1 only) is gone.
    assert outage.queued() == 0
    assert [i["user_message"] for i in outage.items(session_id)] == ["My name is Ada", "while down"]
    history = client.send({"action": "getSession"})[-1]["history"]
    assert [t["user"] for t in history] == ["My name is Ada", "while down"]


def test_a_poison_message_ends_in_the_dead_letter_queue_without_blocking_other_sessions(
    outage: Outage,
) -> None:
    url = outage.queues["TurnOutboxQueue"]
    outage.sqs.send_message(
        QueueUrl=url, MessageBody="{not a turn", MessageGroupId="poisoned", MessageDeduplicationId="p1"
    )
    session_id = f"s-{uuid.uuid4().hex}"
    for i in range(2):
        record = OutboxRecord(
            turn=Turn(session_id=session_id, turn=i + 1, user=f"m{i}", status="complete", at=1, expires_at=2)
        )
        outage.sqs.send_message(
            QueueUrl=url,
            MessageBody=record.model_dump_json(),
            MessageGroupId=session_id,
            MessageDeduplicationId=record.outbox_id,
        )

    outage.drain()

    assert [i["user_message"] for i in outage.items(session_id)] == ["m0", "m1"]
    assert outage.queued() == 0
    dead = outage.sqs.receive_message(
        QueueUrl=outage.queues["TurnOutboxDeadLetterQueue"], MaxNumberOfMessages=10
    )
    assert [m["Body"] for m in dead.get("Messages", [])] == ["{not a turn"]


def test_a_write_that_timed_out_yet_happened_is_finished_not_repeated(outage: Outage) -> None:
    client = outage.client()
    session_id = outage.session_of(client)
    done_of(client.say("first"))
    # The turn path's put of turn 2 reached the table but its answer did not (a read timeout):
    # the turn was answered as not stored and queued with the same client message id.
    pending = Turn(
        session_id=session_id, turn=2, user="again", at=1, expires_at=2**31, client_message_id="c-1"
    )
    outage.services.memory.store.put_user_message(pending)
    record = OutboxRecord(
        turn=pending.model_copy(update={"assistant": "the reply", "status": "complete", "output_tokens": 3})
    )
    assert outage.services.outbox_replayer.replay(record) == 2
    items = outage.items(session_id)
    assert [(int(i["turn_number"]), i["user_message"], i["status"]) for i in items] == [
        (1, "first", "complete"),
        (2, "again", "complete"),
    ]
    assert items[1]["assistant_reply"] == "the reply"


def test_a_reply_dynamodb_could_not_take_is_put_on_its_stored_message_later(outage: Outage) -> None:
    client = outage.client()
    session_id = outage.session_of(client)
    done_of(client.say("first"))
    # The message is stored, then DynamoDB goes away while the model is still answering.
    answer: list[list[dict[str, Any]]] = []
    speaking = threading.Thread(target=lambda: answer.append(client.say("[offline:slow=0.15] second")))
    speaking.start()
    wait_until(lambda: len(outage.items(session_id)) >= 2, "the second message stored")
    outage.dynamodb.stop()
    speaking.join()
    (frames,) = answer
    assert done_of(frames)["turn"] == 2
    notices = [f["message"] for f in frames if f["type"] == "notice"]
    assert any("this reply will be saved" in n for n in notices), frames
    assert outage.queued() == 1

    outage.dynamodb.start()
    outage.recover()
    outage.drain()
    items = outage.items(session_id)
    assert [(int(i["turn_number"]), i["user_message"], i["status"]) for i in items] == [
        (1, "first", "complete"),
        (2, "[offline:slow=0.15] second", "complete"),
    ]
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == items[1]["assistant_reply"]
