"""DynamoDB ``ChatSessions``: the only module that speaks DynamoDB for turns.

Items: ``session_id`` (S, partition), ``turn_number`` (N, sort), ``ttl`` (N, epoch seconds).
The user's message is written first, with a conditional put that allocates the turn number,
and the reply is added to the same item when it is complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from chatmemory.errors import TurnConflict
from chatmemory.turns import Turn, TurnStatus, Usage

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table


class TurnStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    def put_user_message(self, turn: Turn) -> None:
        """Persist the user's message under a new turn number; ``TurnConflict`` if it is taken."""
        item: dict[str, Any] = {
            "session_id": turn.session_id,
            "turn_number": turn.turn,
            "user_message": turn.user,
            "status": turn.status,
            "created_at": turn.at,
            "ttl": turn.expires_at,
        }
        if turn.principal:
            item["principal"] = turn.principal
        if turn.client_message_id:
            item["client_message_id"] = turn.client_message_id
        try:
            self._table.put_item(Item=item, ConditionExpression=Attr("turn_number").not_exists())
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise TurnConflict(f"turn {turn.turn} of {turn.session_id} exists") from exc
            raise

    def finish_turn(
        self, session_id: str, turn: int, reply: str, status: TurnStatus, usage: Usage, expires_at: int
    ) -> None:
        self._table.update_item(
            Key={"session_id": session_id, "turn_number": turn},
            UpdateExpression=(
                "SET assistant_reply = :r, #s = :s, input_tokens = :i, output_tokens = :o, #t = :t"
            ),
            ExpressionAttributeNames={"#s": "status", "#t": "ttl"},
            ExpressionAttributeValues={
                ":r": reply,
                ":s": status,
                ":i": usage.input_tokens,
                ":o": usage.output_tokens,
                ":t": expires_at,
            },
            ConditionExpression=Attr("turn_number").exists(),
        )

    def last_turn_number(self, session_id: str) -> int:
        """The highest turn number stored, expired or not (0 for none): the next free number."""
        response = self._table.query(
            KeyConditionExpression=Key("session_id").eq(session_id),
            ProjectionExpression="turn_number",
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = response["Items"]
        return int(items[0]["turn_number"]) if items else 0  # type: ignore[arg-type]

    def extend_expiry(self, session_id: str, expires_at: int) -> int:
        """Move the TTL of every turn of the session up to ``expires_at``; returns how many moved.

        Turns expire one by one otherwise: a session in use for longer than its TTL would lose
        its oldest turns while it is still alive.
        """
        moved = 0
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("session_id").eq(session_id),
            "FilterExpression": Attr("ttl").lt(expires_at),
            "ProjectionExpression": "turn_number",
        }
        while True:
            page = self._table.query(**query)
            for item in page["Items"]:
                self._table.update_item(
                    Key={"session_id": session_id, "turn_number": item["turn_number"]},
                    UpdateExpression="SET #t = :t",
                    ExpressionAttributeNames={"#t": "ttl"},
                    ExpressionAttributeValues={":t": expires_at},
                )
                moved += 1
            if "LastEvaluatedKey" not in page:
                return moved
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def latest_turns(self, session_id: str, limit: int, now: int) -> list[Turn]:
        """The last ``limit`` turns, oldest first, without items whose TTL has passed.

        DynamoDB deletes expired items up to two days late, so they are filtered here. TTLs grow
        with the turn number, so the filter only ever drops the oldest of the window.
        """
        response = self._table.query(
            KeyConditionExpression=Key("session_id").eq(session_id),
            FilterExpression=Attr("ttl").gt(now),
            ScanIndexForward=False,
            Limit=limit,
            ConsistentRead=True,
        )
        return [_to_turn(item) for item in reversed(response["Items"])]


def _to_turn(item: dict[str, Any]) -> Turn:
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
        input_tokens=int(item.get("input_tokens", 0)),
        output_tokens=int(item.get("output_tokens", 0)),
    )
