"""Claude through the anthropic SDK: the direct API, Bedrock, or the offline model, which the
SDK reaches through an in-process HTTP transport so the same code path runs everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anthropic
import httpx2
from anthropic.lib.streaming import MessageStream
from anthropic.types import (
    AssistantMessageParam,
    CacheControlEphemeralParam,
    MessageParam,
    TextBlockParam,
    UserMessageParam,
)

from chatmemory.config import LlmSettings
from chatmemory.errors import LlmUnavailable
from chatmemory.llm.base import Message, Prompt, ReplyStream
from chatmemory.turns import Usage

# What the SDK raises when the model or the network to it fails, mid-stream included.
MODEL_FAULTS: tuple[type[BaseException], ...] = (anthropic.APIError, httpx2.HTTPError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, anthropic.RateLimitError):
        return "too many requests"
    if isinstance(exc, anthropic.APITimeoutError):
        return "it took too long"
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code == 529:
        return "the model is overloaded"
    if isinstance(exc, anthropic.APIStatusError):
        return f"the model service answered {exc.status_code}"
    return "the connection to the model failed"


def _message_param(message: Message, cached: bool = False) -> MessageParam:
    content: str | list[TextBlockParam] = message["content"]
    if cached:
        content = [_cached_text(message["content"])]
    if message["role"] == "user":
        return UserMessageParam(role="user", content=content)
    return AssistantMessageParam(role="assistant", content=content)


def _cached_text(text: str) -> TextBlockParam:
    return TextBlockParam(type="text", text=text, cache_control=CacheControlEphemeralParam(type="ephemeral"))


def _request(prompt: Prompt) -> tuple[str | list[TextBlockParam], list[MessageParam]]:
    """System and messages, with the prompt cache's breakpoint where the prompt asks for it."""
    system: str | list[TextBlockParam] = prompt.system
    if prompt.cache_after == -1:
        system = [_cached_text(prompt.system)]
    messages = [_message_param(m, cached=i == prompt.cache_after) for i, m in enumerate(prompt.messages)]
    return system, messages


class AnthropicChatModel:
    def __init__(self, client: anthropic.Anthropic | anthropic.AnthropicBedrock, model: str) -> None:
        self._client = client
        self._model = model

    @contextmanager
    def stream(self, prompt: Prompt) -> Iterator[ReplyStream]:
        try:
            system, messages = _request(prompt)
            manager = self._client.messages.stream(
                model=self._model, max_tokens=prompt.max_tokens, system=system, messages=messages
            )
            with manager as events:
                reply = ReplyStream(chunks=iter(()))
                reply.chunks = self._chunks(events, reply)
                yield reply
        except MODEL_FAULTS as exc:
            raise LlmUnavailable(_describe(exc)) from exc

    def count_tokens(self, prompt: Prompt) -> int:
        """The model's own count of the prompt's input tokens (the Messages API's
        ``count_tokens``), without generating anything: what the estimator is measured against."""
        try:
            system, messages = _request(prompt)
            counted = self._client.messages.count_tokens(model=self._model, system=system, messages=messages)
        except MODEL_FAULTS as exc:
            raise LlmUnavailable(_describe(exc)) from exc
        return counted.input_tokens

    @staticmethod
    def _chunks(events: MessageStream, reply: ReplyStream) -> Iterator[str]:
        try:
            yield from events.text_stream
            final = events.get_final_message()
        except MODEL_FAULTS as exc:
            raise LlmUnavailable(_describe(exc)) from exc
        if final.stop_reason not in ("end_turn", "max_tokens", "stop_sequence"):
            raise LlmUnavailable(f"the reply stopped early ({final.stop_reason})")
        reply.truncated = final.stop_reason == "max_tokens"
        reply.usage = Usage(
            input_tokens=final.usage.input_tokens,
            output_tokens=final.usage.output_tokens,
            cache_read_input_tokens=final.usage.cache_read_input_tokens or 0,
            cache_creation_input_tokens=final.usage.cache_creation_input_tokens or 0,
        )


def build_chat_model(settings: LlmSettings, api_key: str | None) -> AnthropicChatModel:
    """The configured provider. ``api_key`` is resolved by the caller (Secrets Manager on AWS)."""
    timeout = httpx2.Timeout(settings.timeout_seconds, connect=min(3.0, settings.timeout_seconds))
    client: anthropic.Anthropic | anthropic.AnthropicBedrock
    if settings.provider == "bedrock":
        client = anthropic.AnthropicBedrock(timeout=timeout, max_retries=settings.max_retries)
        return AnthropicChatModel(client, settings.bedrock_model)
    if settings.provider == "anthropic":
        client = anthropic.Anthropic(
            api_key=api_key, base_url=settings.base_url, timeout=timeout, max_retries=settings.max_retries
        )
        return AnthropicChatModel(client, settings.model)
    from chatmemory.llm.offline import OfflineMessagesApi

    client = anthropic.Anthropic(
        api_key="offline",
        base_url=settings.base_url or "http://offline.invalid",
        timeout=timeout,
        max_retries=settings.max_retries,
        http_client=httpx2.Client(
            transport=OfflineMessagesApi(
                delay_seconds=settings.offline_delay_seconds, mode=settings.offline_mode
            )
        ),
    )
    return AnthropicChatModel(client, f"offline-{settings.offline_mode}-1")
