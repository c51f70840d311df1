"""A session's meta item and its tombstone in ``ChatSessions``: the only code that speaks
DynamoDB for them.

``turn_number = 0`` is the session's meta item: its summary, facts, how far they reach, its
strategy and the notes of the memory worker (when its turns start to expire, failed updates).
Other attributes may live on it too, so it is only ever changed with UpdateItem, and every
write raises its ``version`` (the cached copy's rule, ``chatmemory.storage.cached_copy``).

The meta item also lists the session under its principal (``listed_by``, ``last_active``,
``turn_count``, ``created_at``, ``title``) for the table's ``by_activity`` index: a principal's
conversations, newest activity first. These attributes are not in the cached memory state, so
writing them leaves its version (and its cached copy) as it is.

An erased session leaves a tombstone (``erased#<session>``), so that a connection still bound to
it cannot bring it back by writing its next turn under the old id.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chatmemory.config import StrategyName
from chatmemory.memory.state import Fact, MemoryState
from chatmemory.storage.cached_copy import clock_version
from chatmemory.storage.keys import LISTING_INDEX, META_TURN, erased_key

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef


@dataclass(frozen=True)
class Listing:
    """One of a principal's sessions, as its list shows it."""

    session_id: str
    principal: str
    title: str | None
    created_at: int  # epoch seconds
    last_active: int  # epoch milliseconds
    turns: int
    strategy: str | None
    expires_at: int


class BadCursor(ValueError):
    """A listing cursor that this store did not make."""


class SessionMetaStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    # ---- the session's listing ------------------------------------------------------------

    def record_activity(
        self, session_id: str, principal: str, turn: int, at_ms: int, expires_at: int
    ) -> bool:
        """List the session under ``principal`` as active at ``at_ms`` (epoch milliseconds: the
        index's order, of sessions used within one second too) with ``turn`` turns (its
        creation, the first time). Only forward (an older turn's note never overwrites a newer
        one's), never for another principal, and never again once erased: False otherwise,
        nothing written.

        A listed session is noted with one conditional UpdateItem (it must be listed already:
        an erasure deletes the meta item, which this never creates). Creating the listing is a
        transaction with a check that the turn exists, so a note that raced an erasure cannot
        list the erased session again."""
        key: dict[str, Any] = {"session_id": session_id, "turn_number": META_TURN}
        values: dict[str, Any] = {":p": principal, ":a": at_ms, ":n": turn}
        if turn > 1:
            try:
                self._table.update_item(
                    Key=key,
                    UpdateExpression="SET last_active = :a, turn_count = :n",
                    ConditionExpression="listed_by = :p AND turn_count < :n",
                    ExpressionAttributeValues=values,
                )
                return True
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise  # else: not listed yet (its first note failed), or a newer note is there
        update: dict[str, Any] = {
            "TableName": self._table.name,
            "Key": {"session_id": session_id, "turn_number": META_TURN},
            "UpdateExpression": (
                "SET listed_by = :p, last_active = :a, turn_count = :n,"
                " created_at = if_not_exists(created_at, :c), #t = if_not_exists(#t, :e)"
            ),
            "ConditionExpression": (
                "(attribute_not_exists(listed_by) OR listed_by = :p)"
                " AND (attribute_not_exists(turn_count) OR turn_count < :n)"
            ),
            "ExpressionAttributeNames": {"#t": "ttl"},
            "ExpressionAttributeValues": {**values, ":c": at_ms // 1000, ":e": expires_at},
        }
        return self._update_meta_if_turn_exists(session_id, update, turn)

    def set_title(self, session_id: str, principal: str, title: str, unless_titled: bool = False) -> bool:
        """Title a session listed under ``principal``; with ``unless_titled``, only one that has
        no title yet (a made title never replaces the user's). False if not so listed (unknown,
        another principal's, erased) or already titled: nothing written."""
        condition = "listed_by = :p" + (" AND attribute_not_exists(title)" if unless_titled else "")
        try:
            self._table.update_item(
                Key={"session_id": session_id, "turn_number": META_TURN},
                UpdateExpression="SET title = :t",
                ConditionExpression=condition,
                ExpressionAttributeValues={":p": principal, ":t": title},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def listing(self, session_id: str) -> Listing | None:
        """The session's listing, if it is listed (a strongly consistent read)."""
        item = self._table.get_item(
            Key={"session_id": session_id, "turn_number": META_TURN}, ConsistentRead=True
        ).get("Item")
        return _listing(dict(item)) if item and "listed_by" in item else None

    def listed_by(self, session_id: str) -> str | None:
        listing = self._table.get_item(
            Key={"session_id": session_id, "turn_number": META_TURN},
            ProjectionExpression="listed_by",
            ConsistentRead=True,
        ).get("Item")
        return str(listing["listed_by"]) if listing and "listed_by" in listing else None

    def list_sessions(
        self, principal: str, now: int, limit: int, cursor: str | None = None
    ) -> tuple[list[Listing], str | None]:
        """A page of the principal's live sessions, newest activity first, and the cursor of
        the next page (``None`` after the last). Expired ones are left out at once, before
        DynamoDB's TTL deletes them. ``BadCursor`` for a cursor this store did not make."""
        query: dict[str, Any] = {
            "IndexName": LISTING_INDEX,
            "KeyConditionExpression": "listed_by = :p",
            "FilterExpression": "#t > :now",
            "ExpressionAttributeNames": {"#t": "ttl"},
            "ExpressionAttributeValues": {":p": principal, ":now": now},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor is not None:
            query["ExclusiveStartKey"] = {**_decode_cursor(cursor), "listed_by": principal}
        found: list[Listing] = []
        while True:
            page = self._table.query(**query)
            found.extend(_listing(dict(item)) for item in page["Items"])
            last = page.get("LastEvaluatedKey")
            if last is None:
                return found, None
            if len(found) >= limit:  # each query asks for what is missing: never more
                return found, _encode_cursor(str(last["session_id"]), int(last["last_active"]))  # type: ignore[arg-type]
            query["ExclusiveStartKey"] = last
            query["Limit"] = limit - len(found)

    def mark_erased(self, session_id: str, expires_at: int) -> None:
        """Leave a tombstone: a connection still bound to the erased session must not bring it
        back by writing its next turn under the old id."""
        self._table.put_item(
            Item={"session_id": erased_key(session_id), "turn_number": META_TURN, "ttl": expires_at}
        )

    def is_erased(self, session_id: str, now: int) -> bool:
        item = self._table.get_item(
            Key={"session_id": erased_key(session_id), "turn_number": META_TURN}, ConsistentRead=True
        ).get("Item")
        return bool(item) and int(item["ttl"]) > now  # type: ignore[arg-type, index]

    def memory_state(self, session_id: str) -> MemoryState:
        response = self._table.get_item(
            Key={"session_id": session_id, "turn_number": META_TURN},
            ProjectionExpression=(
                "#sm, summary_tokens, #f, summarized_through, #st, version, turns_expire_at,"
                " update_failures, update_retry_at"
            ),
            ExpressionAttributeNames={"#sm": "summary", "#f": "facts", "#st": "strategy"},
            ConsistentRead=True,
        )
        return _memory_state(dict(response.get("Item") or {}))

    def advance_memory(self, session_id: str, state: MemoryState, expires_at: int) -> bool:
        """Store a summary and facts reaching ``state.summarized_through``, unless the stored ones
        already reach that far, or the turn they reach no longer exists (the session was erased
        while they were written): False then, and nothing changes (updates are idempotent).

        One transaction checks the turn and updates the meta item, so an update that raced
        ``deleteSession`` cannot bring an erased session's meta item back."""
        # The resource's client takes (and serializes) plain Python values, as the table does.
        meta_key = {"session_id": session_id, "turn_number": META_TURN}
        update: dict[str, Any] = {
            "TableName": self._table.name,
            "Key": meta_key,
            "UpdateExpression": (
                "SET #sm = :s, summary_tokens = :st, #f = :f, summarized_through = :n, #t = :t,"
                " version = if_not_exists(version, :v0) + :one REMOVE update_failures, update_retry_at"
            ),
            "ConditionExpression": "attribute_not_exists(summarized_through) OR summarized_through < :n",
            "ExpressionAttributeNames": {"#sm": "summary", "#f": "facts", "#t": "ttl"},
            "ExpressionAttributeValues": {
                ":s": state.summary,
                ":st": state.summary_tokens,
                ":f": [f.model_dump() for f in state.facts],
                ":n": state.summarized_through,
                ":t": expires_at,
                **_next_version(),
            },
        }
        return self._update_meta_if_turn_exists(session_id, update, state.summarized_through)

    def record_update_failure(
        self, session_id: str, through: int, failures: int, retry_at: int, expires_at: int
    ) -> bool:
        """Note that the summary update reaching ``through`` failed ``failures`` times in a row
        and waits until ``retry_at``; False (nothing written) if the stored summary reaches that
        far already (another run succeeded) or that turn no longer exists (an erased session's
        meta item is not brought back). One transaction, like ``advance_memory``."""
        update: dict[str, Any] = {
            "TableName": self._table.name,
            "Key": {"session_id": session_id, "turn_number": META_TURN},
            "UpdateExpression": (
                "SET update_failures = :f, update_retry_at = :r, #t = if_not_exists(#t, :t),"
                " version = if_not_exists(version, :v0) + :one"
            ),
            "ConditionExpression": "attribute_not_exists(summarized_through) OR summarized_through < :n",
            "ExpressionAttributeNames": {"#t": "ttl"},
            "ExpressionAttributeValues": {
                ":f": failures,
                ":r": retry_at,
                ":t": expires_at,
                ":n": through,
                **_next_version(),
            },
        }
        return self._update_meta_if_turn_exists(session_id, update, through)

    def record_turns_expiry(self, session_id: str, oldest_turn: int, turns_expire_at: int) -> bool:
        """Note on the meta item when the session's turns start to expire (``turns_expire_at``,
        the oldest live turn's TTL, also the meta item's own), for the next turns to see
        without reading them. Only on a meta item that exists (a note alone is not worth an
        item; the summary or a strategy of its own makes one), and only if that turn still
        exists (an erased session's meta item is not brought back): False otherwise, in one
        transaction."""
        update: dict[str, Any] = {
            "TableName": self._table.name,
            "Key": {"session_id": session_id, "turn_number": META_TURN},
            "UpdateExpression": (
                "SET turns_expire_at = :e, #t = :e, version = if_not_exists(version, :v0) + :one"
            ),
            "ConditionExpression": "attribute_exists(turn_number)",
            "ExpressionAttributeNames": {"#t": "ttl"},
            "ExpressionAttributeValues": {":e": turns_expire_at, **_next_version()},
        }
        return self._update_meta_if_turn_exists(session_id, update, oldest_turn)

    def _update_meta_if_turn_exists(self, session_id: str, update: dict[str, Any], turn: int) -> bool:
        """The meta item's ``update``, in one transaction with a check that ``turn`` still
        exists (when it is a turn): an erasure between the read and this write cannot get its
        meta item back. False when a condition failed (nothing written)."""
        items: list[TransactWriteItemTypeDef] = [{"Update": update}]  # type: ignore[typeddict-item]
        if turn > META_TURN:
            check: dict[str, Any] = {
                "TableName": self._table.name,
                "Key": {"session_id": session_id, "turn_number": turn},
                "ConditionExpression": "attribute_exists(turn_number)",
            }
            items.append({"ConditionCheck": check})  # type: ignore[typeddict-item]
        try:
            self._table.meta.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "TransactionCanceledException" and any(
                reason.get("Code") == "ConditionalCheckFailed"
                for reason in exc.response.get("CancellationReasons", [])
            ):
                return False
            raise
        return True

    def set_strategy(self, session_id: str, strategy: StrategyName, expires_at: int) -> MemoryState:
        """Set the session's own strategy; the meta item as it is now (a copy to cache)."""
        response = self._table.update_item(
            Key={"session_id": session_id, "turn_number": META_TURN},
            UpdateExpression=(
                "SET #st = :s, #t = if_not_exists(#t, :t), version = if_not_exists(version, :v0) + :one"
            ),
            ExpressionAttributeNames={"#st": "strategy", "#t": "ttl"},
            ExpressionAttributeValues={":s": strategy, ":t": expires_at, **_next_version()},
            ReturnValues="ALL_NEW",
        )
        return _memory_state(dict(response.get("Attributes") or {}))


def _next_version() -> dict[str, int]:
    """The values of ``version = if_not_exists(version, :v0) + :one``: every write of the meta
    item raises its version (``chatmemory.storage.cached_copy``); a new item's first version comes from
    the clock, so an item erased and created again never repeats a version cached before."""
    return {":v0": clock_version(), ":one": 1}


def _memory_state(item: dict[str, Any]) -> MemoryState:
    return MemoryState(
        summary=str(item.get("summary", "")),
        summary_tokens=int(item.get("summary_tokens", 0)),
        facts=[
            Fact(key=str(f["key"]), value=str(f["value"]), turn=int(f["turn"])) for f in item.get("facts", [])
        ],
        summarized_through=int(item.get("summarized_through", 0)),
        strategy=item.get("strategy"),
        version=int(item.get("version", 0)),
        turns_expire_at=int(item.get("turns_expire_at", 0)),
        update_failures=int(item.get("update_failures", 0)),
        update_retry_at=int(item.get("update_retry_at", 0)),
    )


def _listing(item: dict[str, Any]) -> Listing:
    return Listing(
        session_id=str(item["session_id"]),
        principal=str(item["listed_by"]),
        title=str(item["title"]) if item.get("title") else None,
        created_at=int(item.get("created_at", 0)),
        last_active=int(item.get("last_active", 0)),
        turns=int(item.get("turn_count", 0)),
        strategy=str(item["strategy"]) if item.get("strategy") else None,
        expires_at=int(item.get("ttl", 0)),
    )


def _encode_cursor(session_id: str, last_active: int) -> str:
    raw = json.dumps({"s": session_id, "a": last_active}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    """The index position after which a page starts (the principal is the caller's own)."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        session_id, last_active = raw["s"], raw["a"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise BadCursor(cursor) from exc
    if not isinstance(session_id, str) or not isinstance(last_active, int):
        raise BadCursor(cursor)
    return {"session_id": session_id, "turn_number": META_TURN, "last_active": last_active}
