"""One conversation per strategy through ``Conversation.send_message``: the same domain code
as a deployed turn, on moto's DynamoDB, with summary updates run right after each turn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from chatmemory.config import Settings, StrategyName
from chatmemory.conversation import Conversation
from chatmemory.llm.anthropic_model import build_chat_model
from chatmemory.llm.base import ChatModel, Prompt, ReplyStream
from chatmemory.memory.scheduler import InlineScheduler
from chatmemory.memory.tasks import FACTS_TASK, SUMMARY_TASK
from chatmemory.observability import metrics
from chatmemory.services import Services
from chatmemory.storage.bindings import Binding
from moto import mock_aws

from evaluation.conversation import PLANTED, messages


@dataclass
class Request:
    turn: int
    context: str  # system and earlier messages: what memory gave the model
    serialized: str  # the whole request, as its prefix would be compared
    prompt_tokens: int  # as the model reported them, prompt cache included
    cache_read_tokens: int
    truncated: bool = False
    prompt: Prompt | None = None
    # The budget's count of the request against the model's, as the TokenEstimateErrorPercent
    # metric reports it (stored turns at the model's counts, new text estimated; before the
    # estimator learns from this reply).
    estimate_error_percent: float | None = None


class RecordingModel:
    """The model, with each chat request and its reported usage kept (memory tasks pass by)."""

    def __init__(self, inner: ChatModel) -> None:
        self._inner = inner
        self.requests: list[tuple[Prompt, ReplyStream]] = []

    @contextmanager
    def _recorded(self, prompt: Prompt) -> Iterator[ReplyStream]:
        with self._inner.stream(prompt) as reply:
            yield reply
        if SUMMARY_TASK not in prompt.system and FACTS_TASK not in prompt.system:
            self.requests.append((prompt, reply))

    def stream(self, prompt: Prompt) -> AbstractContextManager[ReplyStream]:
        return self._recorded(prompt)


class DoneFrames:
    def __init__(self) -> None:
        self.done: list[dict[str, Any]] = []

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        if frame["type"] == "done":
            self.done.append(frame)


@dataclass
class Run:
    strategy: StrategyName
    budget: int
    requests: list[Request] = field(default_factory=list)
    estimator_scale: float = 1.0  # the token estimator's calibration at the end of the run


def serialize(prompt: Prompt) -> str:
    return prompt.system + "".join(f"\x1e{m['role']}\x1f{m['content']}" for m in prompt.messages)


def run_strategy(strategy: StrategyName, turns: int, base: Settings) -> Run:
    settings = base.model_copy(update={"memory": base.memory.model_copy(update={"strategy": strategy})})
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name=settings.aws_region)
        dynamodb.create_table(
            TableName=settings.storage.sessions_table,
            KeySchema=[
                {"AttributeName": "session_id", "KeyType": "HASH"},
                {"AttributeName": "turn_number", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "session_id", "AttributeType": "S"},
                {"AttributeName": "turn_number", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        model = RecordingModel(build_chat_model(settings.llm, settings.llm.api_key))
        services = Services(
            settings,
            dynamodb,
            None,
            model,
            scheduler_factory=lambda updater: InlineScheduler(updater.update_quietly),
        )
        sender = DoneFrames()
        binding = Binding(
            connection_id="eval", session_id=f"eval-{strategy}", principal="eval", connected_at=0
        )
        conversation = Conversation(services.memory, model, sender, settings, manager=services.memory_manager)
        for message in messages(turns):
            conversation.send_message(binding, message, None)
            metrics.clear_metrics()  # a Lambda flushes them per invocation; here nobody reads them
    run = Run(
        strategy, settings.memory.budget_tokens, estimator_scale=services.memory_manager.estimator.scale
    )
    for n, ((prompt, reply), done) in enumerate(zip(model.requests, sender.done, strict=True), 1):
        context = prompt.system + "\n".join(m["content"] for m in prompt.messages[:-1])
        run.requests.append(
            Request(
                turn=n,
                context=context,
                serialized=serialize(prompt),
                prompt_tokens=reply.usage.prompt_tokens,
                cache_read_tokens=reply.usage.cache_read_input_tokens,
                truncated=bool(done["truncated"]),
                prompt=prompt,
                estimate_error_percent=estimate_error(done["usage"]["budget"], reply.usage.prompt_tokens),
            )
        )
    return run


def estimate_error(budget: dict[str, int], prompt_tokens: int) -> float | None:
    """100 * (the budget's count - the model's count) / the model's count, for one request."""
    estimated = sum(v for k, v in budget.items() if k != "limit")
    if estimated <= 0 or prompt_tokens <= 0:
        return None
    return 100 * (estimated - prompt_tokens) / prompt_tokens


def recall(request: Request) -> float:
    planted = [p for p in PLANTED if p.turn < request.turn]
    if not planted:
        return 1.0
    return sum(p.needle in request.context for p in planted) / len(planted)


def stable_prefix(previous: str, current: str) -> float:
    """The share of ``current`` that is a byte-identical prefix of ``previous``."""
    if not current:
        return 0.0
    low, high = 0, min(len(previous), len(current))  # binary search: slices compare in C
    while low < high:
        middle = (low + high + 1) // 2
        if previous[:middle] == current[:middle]:
            low = middle
        else:
            high = middle - 1
    return low / len(current)
