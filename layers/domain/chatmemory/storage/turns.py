"""The turn items of ``ChatSessions``: the only code that speaks DynamoDB for turns.

Items: ``session_id`` (S, partition), ``turn_number`` (N, sort, from 1), ``ttl`` (N, epoch
seconds). The user's message is written first, with a conditional put that allocates the turn
number, and the reply is added to the same item when it is complete. The session's other items
(its meta item at ``turn_number`` 0, its tombstone) are ``chatmemory.storage.session_meta``'s;
every turn query starts at ``turn_number > 0``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.conditions import Attr, ConditionBase, Key
from botocore.exceptions import ClientError

from chatmemory.errors import TurnConflict
from chatmemory.storage.keys import META_TURN, PRINCIPAL_INDEX
from chatmemory.turns import Turn, TurnStatus, Usage

_FIRST_TURN = Key("turn_number").gt(META_TURN)


if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table


class TurnStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    def put_user_message(self, turn: Turn) -> None:
        """Persist the user's message under a new turn number; ``TurnConflict`` if it is taken."""
        self._put_new_turn(turn, {})

    def _put_new_turn(self, turn: Turn, extra: dict[str, Any]) -> None:
        """One conditional put of a turn under its number: a taken number is a ``TurnConflict``,
        never an overwrite.

        botocore retries a put whose reply was lost (a timeout, a dropped connection), and the
        retry then finds the item its own first attempt wrote. The put's token, returned with
        the item that failed the condition, tells that success apart from a real conflict."""
        put_token = uuid.uuid4().hex
        item: dict[str, Any] = {
            "session_id": turn.session_id,
            "turn_number": turn.turn,
            "user_message": turn.user,
            "status": turn.status,
            "created_at": turn.at,
            "ttl": turn.expires_at,
            "put_token": put_token,
            **extra,
        }
        if turn.principal:
            item["principal"] = turn.principal
        if turn.client_message_id:
            item["client_message_id"] = turn.client_message_id
        if turn.message_id:
            item["message_id"] = turn.message_id
        try:
            self._table.put_item(
                Item=item,
                ConditionExpression=Attr("turn_number").not_exists(),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            # The error carries the item in DynamoDB's wire form (the resource does not convert it).
            found = exc.response.get("Item", {}).get("put_token", {})  # type: ignore[attr-defined]
            if found.get("S") == put_token:
                return  # this put's own first attempt
            raise TurnConflict(f"turn {turn.turn} of {turn.session_id} exists") from exc

    def finish_turn(
        self,
        session_id: str,
        turn: int,
        reply: str,
        status: TurnStatus,
        usage: Usage,
        expires_at: int,
        user_tokens: int = 0,
    ) -> None:
        self._table.update_item(
            Key={"session_id": session_id, "turn_number": turn},
            UpdateExpression=(
                "SET assistant_reply = :r, #s = :s, input_tokens = :i, output_tokens = :o, #t = :t,"
                " user_tokens = :u, cache_read_tokens = :cr, cache_creation_tokens = :cc"
            ),
            ExpressionAttributeNames={"#s": "status", "#t": "ttl"},
            ExpressionAttributeValues={
                ":r": reply,
                ":s": status,
                ":i": usage.input_tokens,
                ":o": usage.output_tokens,
                ":t": expires_at,
                ":u": user_tokens,
                ":cr": usage.cache_read_input_tokens,
                ":cc": usage.cache_creation_input_tokens,
            },
            ConditionExpression=Attr("turn_number").exists(),
        )

    def last_turn_number(self, session_id: str) -> int:
        """The highest turn number stored, expired or not (0 for none): the next free number."""
        response = self._table.query(
            KeyConditionExpression=Key("session_id").eq(session_id) & _FIRST_TURN,
            ProjectionExpression="turn_number",
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = response["Items"]
        return int(items[0]["turn_number"]) if items else 0  # type: ignore[arg-type]

    def newest_answered_turn(self, session_id: str) -> int:
        """The number of the newest turn that is not still being answered (0 for none): the
        last turn a cached window should end with."""
        response = self._table.query(
            KeyConditionExpression=Key("session_id").eq(session_id) & _FIRST_TURN,
            ProjectionExpression="turn_number, #s",
            ExpressionAttributeNames={"#s": "status"},
            ScanIndexForward=False,
            Limit=2,  # a session has one turn being answered at most
            ConsistentRead=True,
        )
        answered = [i for i in response["Items"] if i.get("status") != "pending"]
        return int(answered[0]["turn_number"]) if answered else 0  # type: ignore[arg-type]

    def extend_expiry(self, session_id: str, expires_at: int, now: int) -> int:
        """Move the TTL of every live item of the session (its turns and its meta item) up to
        ``expires_at``; returns how many moved. Turns expire one by one otherwise: a session in
        use for longer than its TTL would lose its oldest turns while it is still alive. An item
        already expired (DynamoDB deletes them up to two days late) stays expired, and one
        deleted since the query (an erasure) stays deleted: an unconditional update would
        bring it back as an item of a key and a TTL."""
        moved = 0
        live = Attr("ttl").gt(now) & Attr("ttl").lt(expires_at)
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id),
            "FilterExpression": live,
            "ProjectionExpression": "turn_number",
        }
        while True:
            page = self._table.query(**query)
            for item in page["Items"]:
                try:
                    self._table.update_item(
                        Key={"session_id": session_id, "turn_number": item["turn_number"]},
                        UpdateExpression="SET #t = :t",
                        ConditionExpression=Attr("turn_number").exists() & live,
                        ExpressionAttributeNames={"#t": "ttl"},
                        ExpressionAttributeValues={":t": expires_at},
                    )
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                        raise
                    continue
                moved += 1
            if "LastEvaluatedKey" not in page:
                return moved
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def oldest_live_turn(self, session_id: str, now: int) -> tuple[int, int] | None:
        """The number and expiry of the session's oldest turn not expired yet; ``None`` if it
        has none. TTLs never decrease with the turn number, so that expiry is the session's
        earliest: a read of the first few items, not of the session."""
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id) & Key("turn_number").gt(META_TURN),
            "FilterExpression": Attr("ttl").gt(now),
            "ProjectionExpression": "turn_number, #t",
            "ExpressionAttributeNames": {"#t": "ttl"},
            "Limit": 25,
            "ConsistentRead": True,
        }
        while True:
            page = self._table.query(**query)
            if page["Items"]:
                item = page["Items"][0]
                return int(item["turn_number"]), int(item["ttl"])  # type: ignore[arg-type]
            if "LastEvaluatedKey" not in page:
                return None
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def latest_turns(self, session_id: str, limit: int, now: int) -> list[Turn]:
        """The last ``limit`` turns, oldest first, without items whose TTL has passed.

        DynamoDB deletes expired items up to two days late, so they are filtered here. TTLs grow
        with the turn number, so the filter only ever drops the oldest of the window.
        """
        response = self._table.query(
            KeyConditionExpression=Key("session_id").eq(session_id) & _FIRST_TURN,
            FilterExpression=Attr("ttl").gt(now),
            ScanIndexForward=False,
            Limit=limit,
            ConsistentRead=True,
        )
        return [item_turn(item) for item in reversed(response["Items"])]

    def turns_between(self, session_id: str, first: int, last: int) -> list[Turn]:
        """Turns ``first..last`` (expired or not), oldest first: what a summary update reads."""
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id)
            & Key("turn_number").between(max(first, 1), last),
            "ConsistentRead": True,
        }
        turns: list[Turn] = []
        while True:
            page = self._table.query(**query)
            turns.extend(item_turn(item) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return turns
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def turns_before(self, session_id: str, before: int, limit: int) -> list[Turn]:
        """Up to ``limit`` turns numbered below ``before`` (expired or not), newest first: one
        page back through a session's history. Ask for one more than you show to know if
        there are older ones.

        Nothing is numbered below the first turn: ``before <= 1`` is an empty page without a
        request (DynamoDB rejects ``BETWEEN 1 AND 0`` with a ValidationException)."""
        if before <= 1:
            return []
        response = self._table.query(
            KeyConditionExpression=Key("session_id").eq(session_id)
            & Key("turn_number").between(1, before - 1),
            ScanIndexForward=False,
            Limit=limit,
            ConsistentRead=True,
        )
        return [item_turn(item) for item in response["Items"]]

    def session_items(self, session_id: str) -> tuple[list[Turn], dict[str, Any] | None]:
        """Every item of the session, paging through the whole partition: its turns (oldest
        first, expired or not) and its meta item (``None`` if it has none)."""
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id),
            "ConsistentRead": True,
        }
        turns: list[Turn] = []
        meta: dict[str, Any] | None = None
        while True:
            page = self._table.query(**query)
            for item in page["Items"]:
                if int(item["turn_number"]) == META_TURN:  # type: ignore[arg-type]
                    meta = dict(item)
                else:
                    turns.append(item_turn(item))
            if "LastEvaluatedKey" not in page:
                return turns, meta
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def searchable_turns(self, session_id: str, now: int) -> list[tuple[Turn, bytes | None]]:
        """Every answered, unexpired turn of the session with its stored vector (``None`` if
        not embedded yet), oldest first: what retrieval searches when Redis does not have it."""
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id) & _FIRST_TURN,
            "FilterExpression": Attr("ttl").gt(now) & Attr("status").eq("complete"),
            "ConsistentRead": True,
        }
        found: list[tuple[Turn, bytes | None]] = []
        while True:
            page = self._table.query(**query)
            for item in page["Items"]:
                vector = item.get("vec")
                found.append((item_turn(item), bytes(vector) if vector is not None else None))  # type: ignore[arg-type]
            if "LastEvaluatedKey" not in page:
                return found
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def put_vector(self, session_id: str, turn_number: int, vector: bytes) -> None:
        """Keep a turn's embedding on its item (erased with it); never creates an item."""
        try:
            self._table.update_item(
                Key={"session_id": session_id, "turn_number": turn_number},
                UpdateExpression="SET vec = :v",
                ConditionExpression=Attr("session_id").exists(),
                ExpressionAttributeValues={":v": vector},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise  # else: erased meanwhile, nothing to keep

    def derived(self, session_id: str) -> tuple[list[int], list[int]]:
        """What retrieval keeps of the session's turns, for its export: the turns whose
        embedding is on their item (``vec``), and those also in the cross-session vector index
        (``owner`` and ``fvec``, see ``memory.crosssession``)."""
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id) & _FIRST_TURN,
            "FilterExpression": Attr("vec").exists() | Attr("fvec").exists(),
            "ProjectionExpression": "turn_number, #o, fvec, vec",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ConsistentRead": True,
        }
        embedded: list[int] = []
        across: list[int] = []
        while True:
            page = self._table.query(**query)
            for item in page["Items"]:
                number = int(item["turn_number"])  # type: ignore[arg-type]
                embedded.append(number)
                if "owner" in item and "fvec" in item:
                    across.append(number)
            if "LastEvaluatedKey" not in page:
                return embedded, across
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def item_owners(self, session_id: str) -> dict[int, str | None]:
        """Every item's turn number (the meta item's is 0) and the principal it was written
        for (``None`` for the meta item, which records none)."""
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id),
            "ProjectionExpression": "turn_number, principal",
            "ConsistentRead": True,
        }
        owners: dict[int, str | None] = {}
        while True:
            page = self._table.query(**query)
            for item in page["Items"]:
                principal = item.get("principal")
                owners[int(item["turn_number"])] = str(principal) if principal else None  # type: ignore[arg-type]
            if "LastEvaluatedKey" not in page:
                return owners
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def delete_items(self, session_id: str, turn_numbers: list[int]) -> None:
        """Delete these items of the session (BatchWriteItem, 25 a request, unprocessed items
        retried by boto3's batch writer)."""
        with self._table.batch_writer() as batch:
            for number in turn_numbers:
                batch.delete_item(Key={"session_id": session_id, "turn_number": number})

    # ---- erasure of everything of a principal -------------------------------------------

    def principal_sessions(self, principal: str) -> set[str]:
        """Every partition holding a turn written for ``principal`` (the index is eventually
        consistent: a turn written this instant may be missing)."""
        query: dict[str, Any] = {
            "IndexName": PRINCIPAL_INDEX,
            "KeyConditionExpression": Key("principal").eq(principal),
            "ProjectionExpression": "session_id",
        }
        found: set[str] = set()
        while True:
            page = self._table.query(**query)
            found.update(str(item["session_id"]) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return found
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # ---- turns replayed from the outbox (chatmemory.outbox) -------------------------------

    def put_turn(self, turn: Turn, outbox_id: str) -> None:
        """Store a whole finished turn in one conditional put, marked with the outbox message
        it came from; ``TurnConflict`` if its number is taken."""
        extra: dict[str, Any] = {
            "input_tokens": turn.input_tokens,
            "output_tokens": turn.output_tokens,
            "user_tokens": turn.user_tokens,
            "cache_read_tokens": turn.cache_read_tokens,
            "cache_creation_tokens": turn.cache_creation_tokens,
            "outbox_id": outbox_id,
        }
        if turn.assistant is not None:
            extra["assistant_reply"] = turn.assistant
        self._put_new_turn(turn, extra)

    def find_outbox_turn(
        self, session_id: str, outbox_id: str, client_message_id: str | None = None
    ) -> tuple[int, bool, str] | None:
        """The turn stored from this outbox message, or for the same client message (a write
        of the turn path that timed out yet happened): ``(number, from the outbox, status)``,
        ``None`` if there is none (a strongly consistent read, newest first)."""
        found: ConditionBase = Attr("outbox_id").eq(outbox_id)
        if client_message_id:
            found = found | Attr("client_message_id").eq(client_message_id)
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id) & _FIRST_TURN,
            "FilterExpression": found,
            "ProjectionExpression": "turn_number, outbox_id, #s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ScanIndexForward": False,
            "ConsistentRead": True,
        }
        while True:
            page = self._table.query(**query)
            if page["Items"]:
                item = page["Items"][0]
                number = int(item["turn_number"])  # type: ignore[arg-type]
                return number, item.get("outbox_id") == outbox_id, str(item.get("status", "pending"))
            if "LastEvaluatedKey" not in page:
                return None
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def item_turn(item: dict[str, Any]) -> Turn:
    """A turn item (or a projection of one that has its text, date and expiry) as a ``Turn``."""
    return Turn(
        session_id=str(item["session_id"]),
        turn=int(item["turn_number"]),
        user=str(item["user_message"]),
        assistant=str(item["assistant_reply"]) if "assistant_reply" in item else None,
        status=item.get("status", "pending"),
        at=int(item["created_at"]),
        expires_at=int(item["ttl"]),
        principal=item.get("principal"),
        client_message_id=item.get("client_message_id"),
        message_id=item.get("message_id"),
        input_tokens=int(item.get("input_tokens", 0)),
        output_tokens=int(item.get("output_tokens", 0)),
        user_tokens=int(item.get("user_tokens", 0)),
        cache_read_tokens=int(item.get("cache_read_tokens", 0)),
        cache_creation_tokens=int(item.get("cache_creation_tokens", 0)),
    )
