"""Render the fault matrix the e2e tests measured (``docs/resilience.json``) as
``docs/resilience.md``. Numbers come only from that file: rerun the tests to refresh them.

    RESILIENCE_RESULTS=docs/resilience.json .venv/bin/pytest -q tests/e2e/test_fault_matrix.py
    .venv/bin/python scripts/resilience_table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "resilience.json"
OUTPUT = ROOT / "docs" / "resilience.md"

INTRO = """# Resilience: the fault matrix

Measured by `tests/e2e/test_fault_matrix.py` against real processes: `python -m local` running the
template's handlers, DynamoDB (moto over HTTP) behind a fault proxy, the real Redis behind its own,
and the offline model through the anthropic SDK. Each row is one fault injected mid-conversation
(after a first turn with full memory). "First answer" is the wall-clock time from sending the
message to its last frame, on the first turn under the fault; "later answer" is the
{turns}th turn under the same fault, once the breaker has opened. "Stored" is read back from
DynamoDB itself, bypassing the proxy. Every row is also asserted by the test.

Machine: {machine}. Model: {model}. Measured {measured_at} with:

```bash
{command}
.venv/bin/python scripts/resilience_table.py
```

Settings of that stack (fast on purpose, so the suite stays quick): {settings}. Deployed
defaults are slower to give up (DynamoDB read timeout 1 s with 2 attempts, breaker reset 30 s),
so first answers under a stall take longer there; later answers do not wait on a failing store.
"""

OUTBOX = """
## No lost turns: the outbox

A turn answered while DynamoDB is unavailable (`cache_only`, or `stateless` with a known session)
is sent, once finished, to an SQS FIFO queue (`TurnOutboxQueue`, one message group per session,
behind its own breaker and 0.5 s/1 s botocore timeouts), and the user is told it will be saved
when the store is back. The outbox replay function (an SQS event source mapping with
`ReportBatchItemFailures`, Powertools' `SqsFifoPartialProcessor` with `skip_group_on_error`)
stores each turn when DynamoDB answers again:

- **Order, no holes**: a session's turns are delivered one at a time, in the order they were
  answered; each gets the next free turn number at the time it is written (the highest stored
  number, expired or not, plus one) with a conditional put. The numbers the user saw while memory
  was degraded are provisional (the session's last number was not known for sure). A turn
  answered live after DynamoDB came back but before the queue drained is stored before the
  queued ones.
- **Exactly once**: each queued turn carries an `outbox_id`, stored on its item; a redelivered
  message finds it and is not written again. A message is deleted only once its turn is stored and
  the session's Redis window dropped (Redis failing in between keeps it queued), so the cache never
  serves a history without it.
- **Poison and long outages**: a failing message is retried at the queue's visibility timeout
  (180 s) and dead-lettered after 30 receives (about 90 min); other sessions carry on meanwhile.
  Replaying the dead-letter queue (`aws sqs start-message-move-task`) is safe for the same reason.
- **Not covered**: when SQS fails too, the turn is answered and a `not_remembered` notice says it
  was not kept; a session erased (`deleteSession`) after an outage but before its queued turns
  were replayed gets them back.

The local stack runs the same: the queues are created on moto from the template and a poller
hands batches to the same handler as Lambda's event source mapping would
(`--queue-retry-seconds`, `--max-receive-count`). The rows "DynamoDB stalled/refused",
"DynamoDB outage, then back (outbox)" and "DynamoDB and the outbox (SQS) stalled" above are
measured through it; `tests/integration/test_outbox.py` covers redelivery, a turn number taken
meanwhile, Redis failing between the write and the cache drop, and the dead-letter queue.
"""

LONG_REPLIES = """
## Long replies and API Gateway's 29 s integration timeout

API Gateway waits at most 29 s for a route's Lambda. After that it sends the client
`{"message": "Endpoint request timed out", "connectionId": …, "requestId": …}` and stops waiting,
but the Lambda is not stopped: it runs on to its own timeout (`SendMessageTimeoutSeconds`, 120 s)
and can still post frames through `@connections`. The local gateway does the same
(`python -m local --integration-timeout SECONDS`, 29 by default);
`test_the_integration_timeout_tells_the_client_and_the_lambda_runs_on` proves it with 0.3 s.

So a reply longer than 29 s still streams and is stored, but the client gets that extra message
(clients ignore frames without a `type`), and the turn is bounded by the sendMessage Lambda's
timeout. `ReplyHandoff=lambda` (`STREAM__HANDOFF`) removes the message: the handler acknowledges
at once and the turn runs in an asynchronous invocation of the same function
(`InvocationType=Event`, payload up to 1 MB, `{"handoff": <the API Gateway event>}`), answered
exactly as in the synchronous path; a handoff that cannot be made is answered in place. Async
events may be delivered more than once: `MaximumRetryAttempts: 0` stops Lambda's retries, and a
rare duplicate would be answered as a second turn (not yet de-duplicated by request id). Locally,
`STREAM__HANDOFF=thread` runs the turn in a thread;
`test_a_handed_off_turn_outlives_the_integration_timeout_quietly` proves no timeout message reaches
the client and the turn completes, and
`test_a_40_second_reply_arrives_whole_without_the_integration_timeout` (the row "reply of … s"
above) does it with the real 29 s timeout and a reply the model takes 40 s to give.
Not yet proven on AWS: the handoff's IAM statement names the
function by its generated name (`<stack>-SendMessageFunction-*`).
"""

COLUMNS = ("fault", "what the user sees", "memoryMode", "first answer (s)", "later answer (s)", "stored")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(data: dict[str, Any]) -> str:
    rows = data["rows"]
    settings = ", ".join(f"`{k}={v}`" for k, v in data["settings"].items())
    turns = max((len(r.get("extra", {}).get("answers_s", [])) for r in rows), default=0)
    lines = [
        INTRO.format(
            machine=data["machine"],
            model=data.get("model", "the offline model (its mode was not recorded)"),
            measured_at=data["measured_at"],
            command=data["command"],
            settings=settings,
            turns=turns,
        ),
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join(["---"] * 3 + ["---:"] * 2 + ["---"]) + " |",
    ]
    for r in rows:
        cells = [
            r["fault"],
            f"`{r['frames']}`",
            r["memory_mode"],
            _seconds(r["first_answer_s"]),
            _seconds(r["later_answer_s"]),
            r["stored"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{r['fault']}**: {r['notes']}" for r in rows if r.get("notes")]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n" + OUTBOX + LONG_REPLIES


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else RESULTS
    OUTPUT.write_text(render(json.loads(source.read_text())))
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
