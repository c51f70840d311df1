"""One session's turns through the real ``Conversation``, without a gateway: what each message
sent back, and the memory worker's runs awaited."""

from __future__ import annotations

from typing import Any

from chatmemory.memory.scheduler import ThreadScheduler
from chatmemory.services import Services
from chatmemory.storage.bindings import Binding

from tests.support.frames import ENDPOINT, frames_sent


class Chat:
    def __init__(self, services: Services, session_id: str) -> None:
        self.services = services
        self.binding = Binding(
            connection_id=f"c-{session_id}", session_id=session_id, principal="p", connected_at=0
        )
        self._seen = 0

    def say(self, message: str) -> list[dict[str, Any]]:
        """The frames this message sent back."""
        self.services.conversation(ENDPOINT).send_message(self.binding, message, None)
        frames = frames_sent(self.binding.connection_id)
        new, self._seen = frames[self._seen :], len(frames)
        return new

    def settle(self) -> None:
        """Wait for the memory updates the turns scheduled (summary, facts, embeddings)."""
        scheduler = self.services.scheduler
        assert isinstance(scheduler, ThreadScheduler)
        scheduler.drain()
