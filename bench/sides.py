"""What is measured: one turn's memory work on each side, at one conversation length.

Every side gets its own session, pre-populated with ``length`` turns by direct batch writes.
A measured turn grows the session by one turn; ``after`` (not timed) puts the session back as
it was, so the length stays exact over every repetition.

Sides and operations:

* ``project``: ``SessionMemory.begin_turn`` + ``finish_turn`` from real ``Services``
  (``cache_hit``; ``cache_miss``, the cache key dropped before the turn; ``stateless``, both
  stores unreachable and both breakers open);
* ``floor``: the same round trips made with raw clients and nothing else;
* ``langchain_dynamodb``, ``langchain_redis``: LangChain's chat histories reading the messages,
  then appending the user's and the assistant's message;
* ``naive_blob``: the whole history as one JSON value, ``GET`` then ``SETEX``.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WINDOW = 10  # MemorySettings.history_turns, the project's default
SESSION_TTL = 86_400
CACHE_TTL = 3_600
LANGCHAIN_TABLE = "LangChainSessions"
TABLE_NAMES = {"ChatSessionsTable": "ChatSessions", "ConnectionsTable": "ChatConnections"}

_PROSE = (
    "the manga series follows a young swordsman through medieval Scandinavia where every "
    "village keeps its own saga and the winter roads are long so travellers trade stories "
    "about kings raids farms ships debts and the quiet cost of revenge which the author draws "
    "with patience detail humour and an eye for landscapes that makes each chapter feel earned"
)
_WORDS = _PROSE.split(" ")


def text(seed: int, chars: int) -> str:
    """Deterministic prose of ``chars`` characters (a typical chat message is ~300)."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


class BenchError(RuntimeError):
    """The benchmark itself is wrong (a hit that did not hit, a turn not stored): abort."""


@dataclass
class Case:
    side: str
    operation: str
    length: int
    turn: Callable[[], Any]  # timed
    before: Callable[[], None] = lambda: None  # not timed
    after: Callable[[Any], None] = lambda result: None  # not timed: check, then restore
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)  # this process's CPU time, ms
    error: str | None = None
    note: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.side, self.operation, self.length)


class World:
    """The clients and settings every side shares, built once against the same endpoints."""

    def __init__(self, redis_url: str, dynamodb_url: str, message_chars: int) -> None:
        import boto3
        import redis
        from chatmemory.config import Settings

        from local.template import create_tables

        self.redis_url = redis_url
        self.dynamodb_url = dynamodb_url
        self.user_text = text(1, message_chars)
        self.reply_text = text(2, message_chars)
        self.settings = Settings(
            memory={
                "history_turns": WINDOW,
                "session_ttl_seconds": SESSION_TTL,
                "cache_ttl_seconds": CACHE_TTL,
            },
            cache={"redis_url": redis_url},
            storage={"dynamodb_endpoint_url": dynamodb_url},
            llm={"provider": "offline", "offline_delay_seconds": 0},
        )
        self.resource = boto3.resource("dynamodb", endpoint_url=dynamodb_url, region_name="us-east-1")
        create_tables(self.resource, TABLE_NAMES)
        self._create_langchain_table()
        # Bookkeeping (seeding, restoring) goes through clients of its own.
        # Turns a turn loads and caches: the window, or more where the domain's memory
        # settings say so (``MemorySettings.context_turns``, when it exists).
        memory = self.settings.memory
        self.context = int(getattr(memory, "context_turns", memory.history_turns))
        self.admin_redis = redis.Redis.from_url(redis_url)
        # A plain client: a resource's own client serializes Python types on the way out.
        self.admin_ddb = boto3.client("dynamodb", endpoint_url=dynamodb_url, region_name="us-east-1")

    def sessions_table(self, case: str) -> str:
        """A ChatSessions table (the template's schema) of the case's own.

        moto answers a Query by scanning every item of the table, so with one shared table a
        cache miss would cost more the more the other cases had seeded; DynamoDB reads only the
        partition. One table per case leaves moto scanning just the session's own turns.
        """
        from local.template import create_tables

        name = f"ChatSessions-{case}"
        create_tables(self.resource, {**TABLE_NAMES, "ChatSessionsTable": name})
        return name

    def settings_for(self, table: str) -> Any:
        return self.settings.model_copy(
            update={"storage": self.settings.storage.model_copy(update={"sessions_table": table})}, deep=True
        )

    def _create_langchain_table(self) -> None:
        client = self.resource.meta.client
        if LANGCHAIN_TABLE in client.list_tables()["TableNames"]:
            return
        client.create_table(  # the table LangChain's docs ask for: partition key SessionId
            TableName=LANGCHAIN_TABLE,
            KeySchema=[{"AttributeName": "SessionId", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "SessionId", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.get_waiter("table_exists").wait(TableName=LANGCHAIN_TABLE)

    # ---- the project's data, written directly ------------------------------------------

    def seed_project_session(self, table_name: str, length: int) -> tuple[str, list[bytes]]:
        """A session of ``length`` finished turns in DynamoDB (batch writes) and its window
        as the cache holds it; returns the id and the window's list entries."""
        from chatmemory.turns import Turn

        session_id = str(uuid.uuid4())
        now = int(time.time())
        turns = [
            Turn(
                session_id=session_id,
                turn=number,
                user=self.user_text,
                assistant=self.reply_text,
                status="complete",
                at=now - (length - number) * 30,
                expires_at=now + SESSION_TTL,
                principal="bench",
                input_tokens=120,
                output_tokens=80,
            )
            for number in range(1, length + 1)
        ]
        with self.resource.Table(table_name).batch_writer() as batch:
            for t in turns:
                batch.put_item(
                    Item={
                        "session_id": session_id,
                        "turn_number": t.turn,
                        "user_message": t.user,
                        "assistant_reply": t.assistant,
                        "status": t.status,
                        "created_at": t.at,
                        "ttl": t.expires_at,
                        "principal": t.principal,
                        "input_tokens": t.input_tokens,
                        "output_tokens": t.output_tokens,
                    }
                )
        window = [t.model_dump_json().encode() for t in turns[-self.context :]]
        self.restore_window(session_id, window)
        return session_id, window

    def restore_window(self, session_id: str, window: list[bytes]) -> None:
        from chatmemory.storage.keys import turns_key

        key = turns_key(session_id)
        with self.admin_redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if window:
                pipe.rpush(key, *window)
                pipe.expire(key, CACHE_TTL)
            pipe.execute()

    def drop_turn(self, table_name: str, session_id: str, number: int) -> None:
        self.admin_ddb.delete_item(
            TableName=table_name,
            Key={"session_id": {"S": session_id}, "turn_number": {"N": str(number)}},
        )


def _clear_metrics() -> None:
    from chatmemory.observability import metrics

    # Lambda flushes metrics once per invocation (log_metrics), outside the memory work.
    metrics.clear_metrics()


# ---- this project ----------------------------------------------------------------------


def project_case(world: World, length: int, operation: str) -> Case:
    from chatmemory.services import Services
    from chatmemory.storage.keys import turns_key
    from chatmemory.turns import Usage

    table = world.sessions_table(f"project-{operation}-{length}")
    memory = Services.from_settings(world.settings_for(table)).memory
    session_id, window = world.seed_project_session(table, length)
    usage = Usage(input_tokens=120, output_tokens=80)
    user, reply = world.user_text, world.reply_text
    expected_source = "cache" if operation == "cache_hit" else "dynamodb"

    def turn() -> Any:
        started = memory.begin_turn(session_id, "bench", user, None)
        stored = memory.finish_turn(started, reply, "complete", usage)
        return started, stored

    def before() -> None:
        if operation == "cache_miss":
            world.admin_redis.delete(turns_key(session_id))

    def after(result: Any) -> None:
        started, stored = result
        got = (started.history.source, started.turn.turn, len(started.history.turns), stored)
        want = (expected_source, length + 1, min(world.context, length), True)
        if got != want:
            raise BenchError(f"project {operation} at {length}: got {got}, want {want}")
        world.drop_turn(table, session_id, length + 1)
        world.restore_window(session_id, window)
        _clear_metrics()

    return Case("project", operation, length, turn, before, after)


def stateless_services(world: World) -> Any:
    """Services whose Redis and DynamoDB refuse connections, tripped until both breakers are
    open (for as long as the run lasts)."""
    from chatmemory.config import Settings
    from chatmemory.services import Services
    from chatmemory.turns import Usage

    from bench.infra import free_port

    settings = Settings(
        memory={"history_turns": WINDOW},
        cache={"redis_url": f"redis://127.0.0.1:{free_port()}/0"},
        storage={"dynamodb_endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1},
        breaker={"reset_timeout_seconds": 1e7},
        llm={"provider": "offline", "offline_delay_seconds": 0},
    )
    services = Services.from_settings(settings)
    for _ in range(20):
        breakers = services.breakers
        if breakers.redis.current_state == "open" and breakers.dynamodb.current_state == "open":
            break
        started = services.memory.begin_turn(str(uuid.uuid4()), "bench", "trip", None)
        services.memory.finish_turn(started, "trip", "complete", Usage())
    else:
        raise BenchError("the breakers did not open")
    _clear_metrics()
    return services


def stateless_case(world: World, services: Any, length: int) -> Case:
    from chatmemory.turns import Usage

    memory = services.memory
    session_id = str(uuid.uuid4())  # nothing can be read or stored: the length is moot
    usage = Usage(input_tokens=120, output_tokens=80)

    def turn() -> Any:
        started = memory.begin_turn(session_id, "bench", world.user_text, None)
        stored = memory.finish_turn(started, world.reply_text, "complete", usage)
        return started, stored

    def after(result: Any) -> None:
        started, stored = result
        if started.history.mode != "stateless" or started.persisted or stored:
            raise BenchError("the stateless path stored or read something")
        _clear_metrics()

    return Case("project", "stateless", length, turn, after=after)


# ---- the floor: the same round trips, raw clients, nothing else --------------------------


def raw_dynamodb(settings: Any) -> Any:
    """A low-level DynamoDB client with the project's connection settings (as
    ``services.dynamodb_resource``), so only the code between the round trips differs."""
    import boto3
    from botocore.config import Config

    storage = settings.storage
    return boto3.client(
        "dynamodb",
        region_name=settings.aws_region,
        endpoint_url=storage.dynamodb_endpoint_url,
        config=Config(
            connect_timeout=storage.connect_timeout_seconds,
            read_timeout=storage.read_timeout_seconds,
            retries={"max_attempts": storage.max_attempts, "mode": "standard"},
        ),
    )


def floor_case(world: World, length: int, operation: str) -> Case:
    from chatmemory.services import redis_client
    from chatmemory.storage.keys import turns_key

    # Raw clients with the project's connection settings (services.dynamodb_resource and
    # services.redis_client), so only the code between the round trips differs.
    r = redis_client(world.settings)
    assert r is not None
    table = world.sessions_table(f"floor-{operation}-{length}")
    ddb = raw_dynamodb(world.settings)
    session_id, window = world.seed_project_session(table, length)
    key = turns_key(session_id)
    number = str(length + 1)
    now = int(time.time())
    ttl = str(now + SESSION_TTL)
    user_item = {
        "session_id": {"S": session_id},
        "turn_number": {"N": number},
        "user_message": {"S": world.user_text},
        "status": {"S": "pending"},
        "created_at": {"N": str(now)},
        "ttl": {"N": ttl},
        "principal": {"S": "bench"},
    }
    item_key = {"session_id": {"S": session_id}, "turn_number": {"N": number}}
    tombstone_key = {"session_id": {"S": f"erased#{session_id}"}, "turn_number": {"N": "0"}}
    reply_values = {
        ":r": {"S": world.reply_text},
        ":s": {"S": "complete"},
        ":i": {"N": "120"},
        ":o": {"N": "80"},
        ":t": {"N": ttl},
    }
    entry = window[-1]  # a cache entry of the same size as the finished turn's
    miss = operation == "cache_miss"

    def turn() -> Any:
        cached: list[Any] = r.lrange(key, 0, -1)
        if miss:
            stored = ddb.query(
                TableName=table,
                KeyConditionExpression="session_id = :s",
                FilterExpression="#t > :now",
                ExpressionAttributeNames={"#t": "ttl"},
                ExpressionAttributeValues={":s": {"S": session_id}, ":now": {"N": str(now)}},
                ScanIndexForward=False,
                Limit=world.context,
                ConsistentRead=True,
            )["Items"]
            with r.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.rpush(key, *window)
                pipe.expire(key, CACHE_TTL)
                pipe.execute()
            cached = stored
        ddb.put_item(TableName=table, Item=user_item, ConditionExpression="attribute_not_exists(turn_number)")
        ddb.get_item(  # the erased session's tombstone, read after the put
            TableName=table, Key=tombstone_key, ConsistentRead=True
        )
        ddb.update_item(
            TableName=table,
            Key=item_key,
            UpdateExpression=(
                "SET assistant_reply = :r, #s = :s, input_tokens = :i, output_tokens = :o, #t = :t"
            ),
            ExpressionAttributeNames={"#s": "status", "#t": "ttl"},
            ExpressionAttributeValues=reply_values,
            ConditionExpression="attribute_exists(turn_number)",
        )
        with r.pipeline(transaction=True) as pipe:
            pipe.rpushx(key, entry)
            pipe.ltrim(key, -world.context, -1)
            pipe.expire(key, CACHE_TTL)
            pipe.execute()
        return cached

    def before() -> None:
        if miss:
            world.admin_redis.delete(key)

    def after(result: Any) -> None:
        if len(result) != min(world.context, length):
            raise BenchError(f"floor {operation} at {length} read {len(result)} turns")
        world.drop_turn(table, session_id, length + 1)
        world.restore_window(session_id, window)

    return Case("floor", operation, length, turn, before, after)


# ---- LangChain ---------------------------------------------------------------------------


def _langchain_messages(world: World, length: int) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage

    out: list[Any] = []
    for _ in range(length):
        out += [HumanMessage(content=world.user_text), AIMessage(content=world.reply_text)]
    return out


def _langchain_turn(
    world: World, history: Any, side: str, length: int, undo: Callable[[], Any]
) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """A LangChain history's turn (read the messages, append the user's and the reply) and the
    check-and-undo that keeps the conversation at ``length`` turns between repetitions."""
    from langchain_core.messages import AIMessage, HumanMessage

    user, reply = world.user_text, world.reply_text

    def turn() -> Any:
        messages = history.messages
        history.add_messages([HumanMessage(content=user), AIMessage(content=reply)])
        return messages

    def after(result: Any) -> None:
        if len(result) != 2 * length:
            raise BenchError(f"{side} at {length} read {len(result)} messages")
        undo()

    return turn, after


def langchain_dynamodb_case(world: World, length: int) -> Case:
    """``DynamoDBChatMessageHistory`` (langchain-community; langchain-aws has no chat history):
    the whole conversation is one item, read and rewritten on every append."""
    from boto3.dynamodb.types import TypeSerializer
    from langchain_community.chat_message_histories import DynamoDBChatMessageHistory
    from langchain_core.messages import messages_to_dict

    session_id = str(uuid.uuid4())
    serializer = TypeSerializer()
    item = {
        "SessionId": session_id,
        "History": messages_to_dict(_langchain_messages(world, length)),
        "expireAt": int(time.time()) + SESSION_TTL,
    }
    low_level = {k: serializer.serialize(v) for k, v in item.items()}
    case = Case("langchain_dynamodb", "turn", length, lambda: None)
    try:
        world.admin_ddb.put_item(TableName=LANGCHAIN_TABLE, Item=low_level)
    except Exception as exc:  # DynamoDB's 400 KB item limit: reported, not hidden
        case.error = f"seeding {length} turns: {type(exc).__name__}: {exc}"
        return case
    history = DynamoDBChatMessageHistory(
        table_name=LANGCHAIN_TABLE, session_id=session_id, endpoint_url=world.dynamodb_url, ttl=SESSION_TTL
    )
    turn, after = _langchain_turn(
        world,
        history,
        "langchain_dynamodb",
        length,
        undo=lambda: world.admin_ddb.put_item(TableName=LANGCHAIN_TABLE, Item=low_level),
    )

    case.turn, case.after = turn, after
    return case


def langchain_dynamodb_limit(world: World, lo: int, hi: int) -> dict[str, Any]:
    """The longest conversation ``DynamoDBChatMessageHistory`` holds (bisected on moto, which
    enforces the 400 KB item limit), and what the next turn gets."""
    from boto3.dynamodb.types import TypeSerializer
    from langchain_community.chat_message_histories import DynamoDBChatMessageHistory
    from langchain_core.messages import AIMessage, HumanMessage, messages_to_dict

    serializer = TypeSerializer()

    def seed(length: int) -> str | None:
        session_id = str(uuid.uuid4())
        item = {"SessionId": session_id, "History": messages_to_dict(_langchain_messages(world, length))}
        try:
            world.admin_ddb.put_item(
                TableName=LANGCHAIN_TABLE, Item={k: serializer.serialize(v) for k, v in item.items()}
            )
        except Exception:
            return None
        return session_id

    while hi - lo > 1:
        mid = (lo + hi) // 2
        if seed(mid) is None:
            hi = mid
        else:
            lo = mid
    session_id = seed(lo)
    assert session_id is not None
    history = DynamoDBChatMessageHistory(
        table_name=LANGCHAIN_TABLE, session_id=session_id, endpoint_url=world.dynamodb_url
    )
    error = None
    try:
        history.add_messages([HumanMessage(content=world.user_text), AIMessage(content=world.reply_text)])
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"max_turns": lo, "next_turn_error": error}


def langchain_redis_case(world: World, length: int) -> Case:
    """``RedisChatMessageHistory`` from langchain-community: plain Redis lists. (langchain-redis's
    class needs the RediSearch module, ``FT.*`` commands, which plain Redis does not have.)"""
    from langchain_community.chat_message_histories import RedisChatMessageHistory
    from langchain_core.messages import message_to_dict

    session_id = str(uuid.uuid4())
    history = RedisChatMessageHistory(session_id, url=world.redis_url, ttl=CACHE_TTL)
    key = history.key
    entries = [json.dumps(message_to_dict(m)) for m in _langchain_messages(world, length)]
    # LangChain LPUSHes each message: the newest is at the head.
    world.admin_redis.lpush(key, *entries)
    world.admin_redis.expire(key, CACHE_TTL)
    turn, after = _langchain_turn(
        world, history, "langchain_redis", length, undo=lambda: world.admin_redis.lpop(key, 2)
    )

    return Case("langchain_redis", "turn", length, turn, after=after)


# ---- the naive session blob ----------------------------------------------------------------


def naive_blob_case(world: World, length: int) -> Case:
    import redis

    r = redis.Redis.from_url(world.redis_url)
    key = f"naive:{{{uuid.uuid4()}}}"
    now = int(time.time())
    turns = [
        {"turn": n, "user": world.user_text, "assistant": world.reply_text, "at": now}
        for n in range(1, length + 1)
    ]
    blob = json.dumps(turns).encode()
    world.admin_redis.set(key, blob, ex=CACHE_TTL)
    user, reply = world.user_text, world.reply_text

    def turn() -> Any:
        history = json.loads(r.get(key) or b"[]")
        window = history[-WINDOW:]  # what the model would see
        history.append({"turn": len(history) + 1, "user": user, "assistant": reply, "at": int(time.time())})
        r.setex(key, CACHE_TTL, json.dumps(history))
        return history, window

    def after(result: Any) -> None:
        history, _ = result
        if len(history) != length + 1:
            raise BenchError(f"naive_blob at {length} held {len(history)} turns")
        world.admin_redis.set(key, blob, ex=CACHE_TTL)

    return Case("naive_blob", "turn", length, turn, after=after)
