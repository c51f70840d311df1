"""Where each aggregate lives: its keys in ``ChatSessions`` and in Redis.

Redis keys put the session (or the principal) in a hash tag, so a session's keys share one
cluster slot and a ``MULTI`` over them works on ElastiCache Serverless.
"""

from __future__ import annotations

# ---- ChatSessions -----------------------------------------------------------------------

META_TURN = 0
# The index of every turn by the principal it was written for (KEYS_ONLY): how ``deleteMyData``
# finds all of a principal's sessions, including those whose oldest turns have expired.
PRINCIPAL_INDEX = "by_principal"
# A principal's sessions by their last activity: the meta items that carry ``listed_by``.
LISTING_INDEX = "by_activity"


def erased_key(session_id: str) -> str:
    """The partition of an erased session's tombstone: its id and an expiry, nothing else."""
    return f"erased#{session_id}"


def user_memory_partition(principal: str) -> str:
    """The partition of a principal's long-term memory (every session's, not one's)."""
    return f"user#{principal}"


# ---- Redis ------------------------------------------------------------------------------


def turns_key(session_id: str) -> str:
    return f"chat:{{{session_id}}}:turns"


def state_key(session_id: str) -> str:
    return f"chat:{{{session_id}}}:memory"


def corpus_key(session_id: str) -> str:
    """Every turn of the session as retrieval searches it (``chatmemory.storage.corpus``)."""
    return f"chat:{{{session_id}}}:corpus"


def ended_key(session_id: str) -> str:
    """The number of the session's last turn that ended without its reply stored (a number,
    no text): not "being answered", though DynamoDB still says pending."""
    return f"chat:{{{session_id}}}:ended"


def stop_key(session_id: str) -> str:
    """When the user last asked to stop the session's reply (epoch milliseconds): the turn being
    answered stops if it began before then."""
    return f"chat:{{{session_id}}}:stop"


def user_memory_key(principal: str) -> str:
    """A principal's long-term memory (across sessions)."""
    return f"user:{{{principal}}}:memory"
