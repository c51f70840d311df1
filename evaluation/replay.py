"""LoCoMo replayed through the real turn pipeline, then its questions asked without storing them.

For each memory strategy the domain registers (``chatmemory.memory.strategies.STRATEGIES``) and
each conversation: a fresh moto DynamoDB with the template's tables and the real Redis behind
``Services``, as a deployed turn has them. Every recorded turn goes through
``Conversation.send_message``: the first speaker's line as the user's message, the recorded
reply as the assistant's (``ScriptedModel``), on a clock that reads the session's date, so each
stored turn carries the day it was said. Memory updates (summary, facts) run inline after each
turn, on the configured model (the offline one unless ``ANTHROPIC_API_KEY``).

Then each question of categories 1-4 goes to ``Conversation.preview`` (the context the message
would be answered with, nothing stored, no model call), once per token budget, and is scored on
whether the dialog turns that hold its answer (LoCoMo's ``evidence``) reached the prompt.

The baselines (``evaluation.baselines``) rank the same stored turns, read back from the store,
for the same questions and budgets.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import boto3
from chatmemory.config import Settings
from chatmemory.conversation import Conversation
from chatmemory.llm.base import ChatModel, Prompt, ReplyStream
from chatmemory.llm.offline import estimate_tokens
from chatmemory.memory.manager import MemoryManager
from chatmemory.memory.scheduler import InlineScheduler
from chatmemory.memory.strategies import STRATEGIES
from chatmemory.memory.tasks import FACTS_TASK, SUMMARY_TASK
from chatmemory.observability import metrics
from chatmemory.services import Services, redis_client
from chatmemory.storage.bindings import Binding
from chatmemory.turns import Turn, Usage
from moto import mock_aws

from evaluation import baselines
from evaluation.judge import Judge
from evaluation.locomo import Question, Sample

TABLE_NAMES = {"ChatSessionsTable": "ChatSessions", "ConnectionsTable": "ChatConnections"}
TWENTY_YEARS = 20 * 365 * 86_400  # the replay's clock is the conversation's: nothing expires in it
BASELINES = ("recency", "bm25", "dense", "fused")


class ScriptedModel:
    """A chat model that answers each turn with the reply it is given (``script``); memory tasks
    (summary, facts) go to ``inner``, the configured model. Its usage is the offline model's
    count of the request."""

    def __init__(self, inner: ChatModel) -> None:
        self._inner = inner
        self._reply = ""

    def script(self, reply: str) -> None:
        self._reply = reply

    @contextmanager
    def _scripted(self, prompt: Prompt) -> Iterator[ReplyStream]:
        reply = self._reply
        usage = Usage(
            input_tokens=baselines.prompt_tokens(prompt),
            output_tokens=estimate_tokens(reply) if reply else 0,
        )
        yield ReplyStream(chunks=iter([reply] if reply else []), usage=usage)

    def stream(self, prompt: Prompt) -> AbstractContextManager[ReplyStream]:
        if SUMMARY_TASK in prompt.system or FACTS_TASK in prompt.system:
            return self._inner.stream(prompt)
        return self._scripted(prompt)


class ReplayClock:
    """The conversation's time: set to each turn's moment before it is sent."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Discard:
    """The frames of a turn: nobody reads them here."""

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class Outcome:
    """One question asked of one method at one budget."""

    method: str
    budget: int
    sample: str
    question: int  # its index in the sample's questions of categories 1-4
    category: int
    evidence: int
    found: int
    prompt_tokens: int
    plan_ms: float
    correct: bool | None = None  # the LLM judge's grade of the answer, when a real model judged

    @property
    def recall(self) -> float:
        return self.found / self.evidence

    @property
    def complete(self) -> bool:
        return self.found == self.evidence


@dataclass
class Timing:
    """Per method: what the replay's turns cost (``send_message``, memory updates inline)."""

    turns: int = 0
    seconds: float = 0.0
    index_seconds: float = 0.0  # baselines: building the keyword or vector index of the turns


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    timings: dict[str, Timing] = field(default_factory=dict)
    skipped_questions: int = 0  # no evidence id the conversation has
    unmapped_evidence: int = 0
    samples: list[str] = field(default_factory=list)
    stored: dict[str, list[Turn]] = field(default_factory=dict)  # per sample, as read back from the store
    summary_quality: dict[str, list[float]] = field(default_factory=dict)  # per strategy, the judge's scores


@dataclass(frozen=True)
class Judging:
    """Which methods the judge answers and grades, at the first budget (two model calls a
    question: judging every method would multiply the bill for little)."""

    judge: Judge
    methods: frozenset[str] = frozenset({"hybrid", "fused"})

    def of(self, method: str, budget: int, budgets: Sequence[int]) -> Judge | None:
        return self.judge if method in self.methods and budget == budgets[0] else None


def score(request: Prompt, question: Question, sample: Sample) -> int:
    """How many of the question's evidence turns are in the request, outside the question's own
    text (retrieved turns open the last message, before it): the side's whole text
    (``Speaker: line``) must be there."""
    last = request.messages[-1]["content"].removesuffix(question.text)
    context = request.system + "\n".join([*(m["content"] for m in request.messages[:-1]), last])
    return sum(sample.sides[dia_id].text in context for dia_id in question.evidence)


def eval_settings(base: Settings, strategy: str, budget: int, redis_url: str | None) -> Settings:
    memory = base.memory.model_copy(
        update={"strategy": strategy, "budget_tokens": budget, "session_ttl_seconds": TWENTY_YEARS}
    )
    llm = base.llm.model_copy(update={"offline_delay_seconds": 0})
    cache = base.cache.model_copy(update={"redis_url": redis_url})
    return base.model_copy(update={"memory": memory, "llm": llm, "cache": cache})


def replay(
    conversation: Conversation, model: ScriptedModel, clock: ReplayClock, binding: Binding, sample: Sample
) -> float:
    """Send every turn of ``sample``; the seconds it took."""
    started = time.perf_counter()
    previous_session, offset = 0, 0
    for turn in sample.turns:
        offset = offset + 1 if turn.session == previous_session else 0
        previous_session = turn.session
        clock.now = turn.at.timestamp() + offset
        model.script(turn.assistant.text if turn.assistant else "")
        conversation.send_message(binding, turn.user.text, None)
        metrics.clear_metrics()  # a Lambda flushes them per invocation; here nobody reads them
    return time.perf_counter() - started


def ask(
    method: str,
    budget: int,
    sample: Sample,
    plan: Callable[[str], Prompt],
    judge: Judge | None = None,
) -> list[Outcome]:
    outcomes = []
    for number, question in enumerate(sample.questions):
        if not question.evidence:
            continue
        began = time.perf_counter()
        request = plan(question.text)
        elapsed = 1000 * (time.perf_counter() - began)
        metrics.clear_metrics()
        outcomes.append(
            Outcome(
                method,
                budget,
                sample.sample_id,
                number,
                question.category,
                len(question.evidence),
                score(request, question, sample),
                baselines.prompt_tokens(request),
                elapsed,
                judge.grade(request, question.text, question.answer) if judge is not None else None,
            )
        )
    return outcomes


def run_baselines(
    turns: Sequence[Turn],
    sample: Sample,
    system: str,
    budgets: Sequence[int],
    embedder: baselines.Embedder,
    results: Results,
    judging: Judging | None = None,
) -> None:
    costs = [baselines.turn_cost(t) for t in turns]
    rankers: dict[str, baselines.Ranker] = {}
    for name, build in (
        ("recency", lambda: baselines.Recency(turns)),
        ("bm25", lambda: baselines.BM25Ranker(turns)),
        ("dense", lambda: baselines.DenseRanker(turns, embedder)),
    ):
        began = time.perf_counter()
        rankers[name] = build()
        timing = results.timings.setdefault(name, Timing())
        timing.index_seconds += time.perf_counter() - began
        timing.turns += len(turns)
    rankers["fused"] = baselines.Fused(rankers["bm25"], rankers["dense"])
    fused = results.timings.setdefault("fused", Timing())
    fused.turns += len(turns)
    fused.index_seconds = results.timings["bm25"].index_seconds + results.timings["dense"].index_seconds
    for budget in budgets:
        for name, ranker in rankers.items():
            plan = partial(_baseline, ranker, turns, system, budget, costs)
            judge = judging.of(name, budget, budgets) if judging is not None else None
            results.outcomes += ask(name, budget, sample, plan, judge)


def _baseline(
    ranker: baselines.Ranker,
    turns: Sequence[Turn],
    system: str,
    budget: int,
    costs: Sequence[int],
    message: str,
) -> Prompt:
    return baselines.baseline_prompt(ranker, turns, system, message, budget, costs)[0]


def run(
    samples: Sequence[Sample],
    base: Settings,
    redis_url: str | None,
    budgets: Sequence[int] = (8_000, 4_000),
    strategies: Sequence[str] | None = None,
    embedder: baselines.Embedder | None = None,
    log: Callable[[str], None] = lambda _: None,
    judging: Judging | None = None,
) -> Results:
    """Every strategy (default: all the domain registers) and every baseline, on ``samples``."""
    names = list(strategies or STRATEGIES)
    embedder = embedder or baselines.WordLlamaEmbedder()
    results = Results(samples=[s.sample_id for s in samples])
    run_id = uuid.uuid4().hex[:8]
    for sample in samples:
        results.skipped_questions += sum(not q.evidence for q in sample.questions)
        results.unmapped_evidence += sum(len(q.unmapped) for q in sample.questions)
        for index, strategy in enumerate(names):
            session_id = f"locomo-{run_id}-{sample.sample_id}-{strategy}"
            stored = run_strategy(
                sample, strategy, session_id, base, redis_url, budgets, results, log, judging
            )
            if index == 0:  # the stored turns are the same whatever the strategy: read back once
                results.stored[sample.sample_id] = stored
                run_baselines(stored, sample, base.llm.system_prompt, budgets, embedder, results, judging)
    return results


def run_strategy(
    sample: Sample,
    strategy: str,
    session_id: str,
    base: Settings,
    redis_url: str | None,
    budgets: Sequence[int],
    results: Results,
    log: Callable[[str], None],
    judging: Judging | None = None,
) -> list[Turn]:
    """Replay ``sample`` with ``strategy`` on a fresh moto, ask its questions at each budget;
    the session's turns as the store holds them at the end."""
    from chatmemory.llm.anthropic_model import build_chat_model

    from local.template import create_tables

    settings = eval_settings(base, strategy, budgets[0], redis_url)
    binding = Binding(connection_id="eval", session_id=session_id, principal="eval", connected_at=0)
    clock = ReplayClock()
    model = ScriptedModel(build_chat_model(settings.llm, settings.llm.api_key))
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name=settings.aws_region)
        create_tables(dynamodb, TABLE_NAMES)
        redis = redis_client(settings)
        try:
            by_budget = {
                budget: Services(
                    eval_settings(base, strategy, budget, redis_url),
                    dynamodb,
                    redis,
                    model,
                    clock=clock,
                    scheduler_factory=lambda updater: InlineScheduler(updater.update_quietly),
                )
                for budget in budgets
            }
            services = by_budget[budgets[0]]
            conversation = Conversation(
                services.memory, model, Discard(), settings, manager=services.memory_manager
            )
            seconds = replay(conversation, model, clock, binding, sample)
            timing = results.timings.setdefault(strategy, Timing())
            timing.turns += len(sample.turns)
            timing.seconds += seconds
            log(f"{sample.sample_id} {strategy}: {len(sample.turns)} turns in {seconds:.1f}s")
            clock.now = sample.last_date.timestamp() + 86_400  # the questions come a day later
            stored = services.memory.store.turns_between(session_id, 1, len(sample.turns))
            if judging is not None:
                _check_summary(judging.judge, services, session_id, strategy, stored, results)
            for budget, asking in by_budget.items():
                previewer = Conversation(
                    asking.memory, model, Discard(), asking.settings, manager=calibrated(asking, services)
                )
                judge = judging.of(strategy, budget, budgets) if judging is not None else None
                results.outcomes += ask(
                    strategy, budget, sample, partial(_preview, previewer, binding), judge
                )
            return stored
        finally:
            if redis is not None:
                for key in redis.scan_iter(match=f"*{session_id}*"):
                    redis.delete(key)
            metrics.clear_metrics()


def calibrated(asking: Services, replayed: Services) -> MemoryManager:
    """``asking``'s memory with the estimator the replay calibrated: a deployed process plans
    every turn with the one estimator its earlier replies calibrated, whatever the budget, and
    only the first budget's services replayed the conversation."""
    if asking is replayed:
        return asking.memory_manager
    return MemoryManager(
        asking.settings.memory,
        replayed.memory_manager.estimator,
        asking.memory_state,
        asking.scheduler,
        asking.user_memory,
        asking.recall,
        asking.cross_session,
    )


def _check_summary(
    judge: Judge, services: Services, session_id: str, strategy: str, stored: list[Turn], results: Results
) -> None:
    """The judge's score of the session's final summary against turns it covers."""
    state = services.memory_state.get(session_id)
    if state is None or not state.summary:
        return
    covered = [t for t in stored if t.turn <= state.summarized_through]
    score = judge.summary_quality(state.summary, covered, seed=len(stored))
    if score is not None:
        results.summary_quality.setdefault(strategy, []).append(score)


def _preview(conversation: Conversation, binding: Binding, message: str) -> Prompt:
    return conversation.preview(binding, message).prompt
