"""The token estimator's error against the model's own counts.

Two measurements, both against whatever model the run uses (the offline model, or Claude when
``ANTHROPIC_API_KEY`` is set):

* **uncalibrated**: the estimator as a cold start has it (``chars / MEMORY__CHARS_PER_TOKEN``,
  plus the per-message overhead) on whole requests of the runs, against the model's count of the
  same request (the Messages API's ``count_tokens``);
* **per turn, calibrated**: what each turn's ``TokenEstimateErrorPercent`` metric reported during
  the runs: the budget's count of the request (stored turns at the model's own counts, the new
  text estimated with the calibration so far) against the model's reported input.
"""

from __future__ import annotations

from statistics import mean
from typing import Any, Protocol

from chatmemory.llm.base import Prompt
from chatmemory.memory.tokens import MESSAGE_OVERHEAD, TokenEstimator

from evaluation.runner import Run

SAMPLE_EVERY = 10  # requests counted per run: 1, 11, 21, ...


class TokenCounter(Protocol):
    def count_tokens(self, prompt: Prompt) -> int: ...


def whole_prompt_estimate(prompt: Prompt, estimator: TokenEstimator) -> int:
    return estimator.estimate(prompt.system) + sum(
        estimator.estimate(m["content"]) + MESSAGE_OVERHEAD for m in prompt.messages
    )


def _stats(errors: list[float]) -> dict[str, float | int]:
    if not errors:
        return {"requests": 0}
    return {
        "requests": len(errors),
        "mean_error_percent": round(mean(errors), 1),
        "mean_abs_error_percent": round(mean(abs(e) for e in errors), 1),
        "max_abs_error_percent": round(max(abs(e) for e in errors), 1),
    }


def measure(
    runs: list[Run], counter: TokenCounter, chars_per_token: float, counted_by: str
) -> dict[str, Any]:
    cold = TokenEstimator(chars_per_token)
    uncalibrated: list[float] = []
    for run in runs:
        for request in run.requests[::SAMPLE_EVERY]:
            if request.prompt is None:
                continue
            counted = counter.count_tokens(request.prompt)
            uncalibrated.append(100 * (whole_prompt_estimate(request.prompt, cold) - counted) / counted)
    per_turn: dict[str, Any] = {}
    for run in runs:
        errors = [r.estimate_error_percent for r in run.requests if r.estimate_error_percent is not None]
        per_turn[run.strategy] = {
            "turns_1_10": _stats(errors[:10]),
            "turns_11_on": _stats(errors[10:]),
            "estimator_scale_at_end": round(run.estimator_scale, 3),
        }
    return {
        "counted_by": counted_by,
        "chars_per_token": chars_per_token,
        "uncalibrated_whole_request": _stats(uncalibrated),
        "per_turn_calibrated": per_turn,
    }


def markdown(figures: dict[str, Any]) -> str:
    cold = figures["uncalibrated_whole_request"]
    lines = [
        "## Token estimator error",
        "",
        f"Against: {figures['counted_by']}. Error = (estimate - model's count) / model's count; "
        "positive means the estimate was high (the budget errs on the safe side).",
        "",
        f"Uncalibrated (`chars / {figures['chars_per_token']}` + {MESSAGE_OVERHEAD} per message), whole "
        f"requests, {cold.get('requests', 0)} sampled: mean {cold.get('mean_error_percent', 0):+.1f}%, "
        f"mean absolute {cold.get('mean_abs_error_percent', 0):.1f}%, "
        f"worst {cold.get('max_abs_error_percent', 0):.1f}%.",
        "",
        "Per turn, as the `TokenEstimateErrorPercent` metric reports it (the budget's count of each "
        "request, stored turns at the model's counts and new text estimated with the calibration "
        "from the replies before it, against the model's count):",
        "",
        "| strategy | turns 1-10: mean | mean abs | worst | turns 11+: mean | mean abs | worst "
        "| estimator scale at the end |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for strategy, parts in figures["per_turn_calibrated"].items():
        cells = []
        for part in ("turns_1_10", "turns_11_on"):
            s = parts[part]
            if not s.get("requests"):
                cells += ["-", "-", "-"]
                continue
            cells += [
                f"{s['mean_error_percent']:+.1f}%",
                f"{s['mean_abs_error_percent']:.1f}%",
                f"{s['max_abs_error_percent']:.1f}%",
            ]
        cells.append(f"{parts['estimator_scale_at_end']:.2f}")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
