"""chatmemory: the domain of a WebSocket chat backend with memory.

Knows nothing of Lambda events: handlers in ``functions/`` parse events and call in here.
"""
