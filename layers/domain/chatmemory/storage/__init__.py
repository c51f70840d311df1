"""Storage: one module per aggregate, each the only code that speaks DynamoDB (and Redis) for it.

| aggregate | DynamoDB | Redis copy |
| --- | --- | --- |
| a session's turns | ``turns.TurnStore`` (``turn_number`` >= 1) | ``turn_cache.TurnCache`` (a window) |
| a session's meta item and tombstone | ``session_meta.SessionMetaStore`` | |
| its memory state (summary, facts, strategy) | ``session_meta`` | ``memory_state.MemoryStateRepository`` |
| a session's search corpus (turns with their vectors) | ``turns`` (``vec``) | ``corpus.CorpusRepository`` |
| a principal's long-term memory | ``user_memory.UserMemoryStore`` | ``user_memory.UserMemoryRepository`` |
| the cross-session vector index | ``vector_index.VectorIndexStore`` | |
| a connection's binding | ``bindings.ConnectionRegistry`` (``Connections``) | the same |
| quota counters | ``quota_counters.QuotaCounters`` | the same |

``keys`` says where each lives. Every call goes through its dependency's guard
(``chatmemory.breakers``). A cached copy of one item follows one rule
(``cached_copy``: versioned values, compared on write); the rule for each kind of copy is in
docs/architecture.md, "What Redis holds".

Nothing is imported here: the authorizer loads only the counters, without Redis.
"""
