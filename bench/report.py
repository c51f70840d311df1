"""results.json, results.md and the plots, from the measured cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.runner import percentile, summary
from bench.sides import Case

ORDER = [
    ("project", "cache_hit"),
    ("project", "cache_miss"),
    ("project", "stateless"),
    ("floor", "cache_hit"),
    ("floor", "cache_miss"),
    ("langchain_dynamodb", "turn"),
    ("langchain_redis", "turn"),
    ("naive_blob", "turn"),
]
LABELS = {
    ("project", "cache_hit"): "this project, cache hit",
    ("project", "cache_miss"): "this project, cache miss (DynamoDB)",
    ("project", "stateless"): "this project, stateless (breakers open)",
    ("floor", "cache_hit"): "floor, cache hit (raw clients)",
    ("floor", "cache_miss"): "floor, cache miss (raw clients)",
    ("langchain_dynamodb", "turn"): "LangChain DynamoDBChatMessageHistory",
    ("langchain_redis", "turn"): "LangChain RedisChatMessageHistory",
    ("naive_blob", "turn"): "naive blob (Redis GET + SETEX)",
}
# Each figure is read against the floor of the same work: the project's hit and miss against
# their own floor, the peers against the floor of the project's usual turn (a cache hit).
FLOOR_OF = {
    ("project", "cache_hit"): ("floor", "cache_hit"),
    ("project", "cache_miss"): ("floor", "cache_miss"),
    ("floor", "cache_hit"): ("floor", "cache_hit"),
    ("floor", "cache_miss"): ("floor", "cache_miss"),
    ("langchain_dynamodb", "turn"): ("floor", "cache_hit"),
    ("langchain_redis", "turn"): ("floor", "cache_hit"),
    ("naive_blob", "turn"): ("floor", "cache_hit"),
}
PROJECT_OF = {
    ("project", "cache_miss"): ("project", "cache_miss"),
    ("floor", "cache_miss"): ("project", "cache_miss"),
}  # everything else compares with the project's cache hit


def rows(cases: list[Case], round_trips: dict[tuple[str, str, int], dict[str, int]]) -> list[dict[str, Any]]:
    by_key = {c.key: c for c in cases}
    stats = {c.key: summary(c.samples) for c in cases if c.samples and c.error is None}
    out = []
    for case in sorted(cases, key=lambda c: (c.length, ORDER.index((c.side, c.operation)))):
        side_op = (case.side, case.operation)
        row: dict[str, Any] = {
            "side": case.side,
            "operation": case.operation,
            "length": case.length,
            "label": LABELS[side_op],
            "round_trips": round_trips.get(case.key),
            "error": case.error,
            "note": case.note,
        }
        own = stats.get(case.key)
        if own is not None:
            row.update(own)
            row["client_cpu_median_ms"] = round(percentile(case.cpu_samples, 50), 4)
        project_key = (*PROJECT_OF.get(side_op, ("project", "cache_hit")), case.length)
        floor_key = (*FLOOR_OF[side_op], case.length) if side_op in FLOOR_OF else None
        project = stats.get(project_key)
        floor = stats.get(floor_key) if floor_key else None
        row["compared_with"] = {
            "project": "/".join(project_key[:2]),
            "floor": "/".join(floor_key[:2]) if floor_key else None,
        }
        row["floor_median_ms"] = floor["median_ms"] if floor else None
        row["floor_p99_ms"] = floor["p99_ms"] if floor else None
        if own is not None:
            row["ratio_to_project"] = _ratio(own["median_ms"], project)
            row["ratio_to_project_p99"] = _ratio(own["p99_ms"], project, "p99_ms")
            row["ratio_to_floor"] = _ratio(own["median_ms"], floor)
            row["ratio_to_floor_p99"] = _ratio(own["p99_ms"], floor, "p99_ms")
        assert by_key[case.key] is case
        out.append(row)
    return out


def _ratio(value: float, other: dict[str, Any] | None, field: str = "median_ms") -> float | None:
    if not other or not other[field]:
        return None
    return round(value / float(other[field]), 3)


def _find(table: list[dict[str, Any]], side: str, op: str, length: int) -> dict[str, Any] | None:
    for row in table:
        if (row["side"], row["operation"], row["length"]) == (side, op, length):
            return row
    return None


def targets(table: list[dict[str, Any]], lengths: list[int]) -> list[dict[str, Any]]:
    out = []
    worst = []
    for op in ("cache_hit", "cache_miss"):
        for length in lengths:
            row = _find(table, "project", op, length)
            if row and row.get("ratio_to_floor") is not None:
                worst.append((row["ratio_to_floor"], op, length))
    if worst:
        ratio, op, length = max(worst)
        out.append(
            {
                "target": "per-turn memory work within 1.3x of the floor at every length (median)",
                "met": ratio <= 1.3,
                "measured": {f"{o}@{n}": r for r, o, n in sorted(worst, key=lambda w: (w[1], w[2]))},
                "worst": f"{ratio:.2f}x ({op}, {length} turns)",
            }
        )
    lo, hi = min(lengths), max(lengths)
    small, large = _find(table, "project", "cache_hit", lo), _find(table, "project", "cache_hit", hi)
    if small and large and small.get("median_ms") and large.get("median_ms") and lo != hi:
        ratio = large["median_ms"] / small["median_ms"]
        out.append(
            {
                "target": f"cache hit at {hi} turns within 1.2x of {lo} turns (median)",
                "met": ratio <= 1.2,
                "measured": f"{large['median_ms']:.3f} ms / {small['median_ms']:.3f} ms = {ratio:.2f}x",
            }
        )
    mid = 100 if 100 in lengths else sorted(lengths)[len(lengths) // 2]
    peer, ours = _find(table, "langchain_dynamodb", "turn", mid), _find(table, "project", "cache_hit", mid)
    if peer and ours and peer.get("median_ms") and ours.get("median_ms"):
        ratio = peer["median_ms"] / ours["median_ms"]
        out.append(
            {
                "target": f"at {mid} turns at least 50x below LangChain's DynamoDB history (median)",
                "met": ratio >= 50,
                "measured": f"{peer['median_ms']:.2f} ms / {ours['median_ms']:.2f} ms = {ratio:.1f}x",
            }
        )
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _trips(rt: dict[str, int] | None) -> str:
    if not rt:
        return "-"
    return f"{rt['redis'] + rt['dynamodb']} ({rt['redis']} R + {rt['dynamodb']} D)"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    lines = [
        "# Per-turn memory cost: this project, LangChain's chat histories, the naive blob",
        "",
        f"Command: `{results['command']}`  ",
        f"Code measured: commit {str((results.get('source') or {}).get('commit'))[:10]}"
        + (
            " with uncommitted changes in the domain"
            if (results.get("source") or {}).get("uncommitted_changes_in_domain")
            else ""
        )
        + "  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['implementation']} {m['python']}, {m['os']}, "
        f"redis-server {m['redis_server']}, moto {m['packages'].get('moto')} over HTTP (own process)  ",
        f"Run: {cfg['reps']} measured repetitions (+{cfg['warmup']} warm-up) of every side at every length, "
        f"round-robin in a fresh random order; messages of {cfg['message_chars']} characters each way; "
        f"window N = {cfg['window']} turns; {results['duration_s']:.0f} s in all.",
        "",
        "One turn's memory work, everything but the model: for this project `begin_turn` + "
        "`finish_turn` of `chatmemory.history.SessionMemory` built by `Services.from_settings`; for "
        "LangChain `history.messages` then `add_messages([user, assistant])`; for the naive blob "
        "`GET`, append, `SETEX`. The floor is the project's round trips made with raw clients and "
        "nothing else. Round trips: R = Redis commands or pipelines, D = DynamoDB requests "
        "(counted on the wire during a warm-up turn). Client CPU: the median CPU time of the "
        "measuring process during the turn, the side's own work whatever the backend (moto and "
        "redis-server run in processes of their own). x project compares with the project's cache "
        "hit at the same length (a cache miss with the project's miss); x floor with the floor of the "
        "same operation (peers: the cache-hit floor). moto's Query and item handling grow with "
        "partition and item size where DynamoDB's latency does not: read every figure against the "
        "floor beside it.",
        "",
        "| length | side | median ms | p99 ms | client CPU ms | round trips | x project | floor ms "
        "| x floor |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in results["per_turn"]:
        if row.get("error"):
            lines.append(
                f"| {row['length']} | {row['label']} | **breaks** | | | {_trips(row['round_trips'])} | | "
                f"{_fmt(row['floor_median_ms'])} | |"
            )
            continue
        lines.append(
            f"| {row['length']} | {row['label']} | "
            f"{_fmt(row.get('median_ms'), 3)} | {_fmt(row.get('p99_ms'), 3)} | "
            f"{_fmt(row.get('client_cpu_median_ms'), 3)} | "
            f"{_trips(row['round_trips'])} | {_fmt(row.get('ratio_to_project'))} | "
            f"{_fmt(row['floor_median_ms'], 3)} | {_fmt(row.get('ratio_to_floor'))} |"
        )
    errors = [r for r in results["per_turn"] if r.get("error")]
    if errors or results.get("langchain_dynamodb_limit"):
        lines += ["", "## Where a peer breaks", ""]
        for row in errors:
            lines.append(f"- {row['label']} at {row['length']} turns: `{row['error']}`")
        limit = results.get("langchain_dynamodb_limit")
        if limit:
            lines.append(
                f"- LangChain DynamoDBChatMessageHistory keeps the whole conversation in one item: it "
                f"holds at most {limit['max_turns']} turns of {cfg['message_chars']}-character messages; "
                f"the next turn's append fails with `{limit['next_turn_error']}` "
                "(the user's messages are lost)."
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in results["targets"]:
        measured = t.get("worst") or t["measured"]
        if isinstance(t["measured"], dict):
            measured = f"worst {t['worst']}; " + ", ".join(f"{k} {v:.2f}x" for k, v in t["measured"].items())
        lines.append(f"| {t['target']} | {measured} | {'yes' if t['met'] else '**no**'} |")
    if results.get("cold_start"):
        lines += [
            "",
            "## Cold start",
            "",
            f"Fresh interpreter per run, median of {results['cold_start'][0]['runs']} runs: the handler "
            "module imported from its CodeUri (as the Lambda runtime does), then "
            "`chatmemory.services.get_services()` with local endpoints (clients created, not connected). "
            "process = the whole child, interpreter start to exit. "
            "Tracing disabled (no X-Ray daemon locally).",
            "",
            "| function | import ms | clients ms | init ms | process ms |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for row in results["cold_start"]:
            lines.append(
                f"| {row['function']} | {row['import_ms']:.0f} | {row['clients_ms']:.0f} | "
                f"{row['init_ms']:.0f} | {row['process_ms']:.0f} |"
            )
        if results.get("cold_start_imports"):
            name, prof = results["cold_start_imports"]["function"], results["cold_start_imports"]["top"]
            lines += [
                "",
                f"Import time of {name} by top-level package (`-X importtime`, self time summed): "
                + ", ".join(f"{p['package']} {p['self_ms']:.0f} ms" for p in prof)
                + ".",
            ]
    plots_md = "Plots: [per_turn.png](per_turn.png)"
    if results.get("cold_start"):
        plots_md += ", [cold_start.png](cold_start.png)"
    lines += ["", plots_md]
    return "\n".join(lines) + "\n"


STYLE = {
    ("project", "cache_hit"): {"color": "#1b6ac9", "marker": "o", "linestyle": "-", "linewidth": 2.4},
    ("project", "cache_miss"): {"color": "#1b9e77", "marker": "s", "linestyle": "-", "linewidth": 2.4},
    ("project", "stateless"): {"color": "#7f7f7f", "marker": "v", "linestyle": "-", "linewidth": 1.6},
    ("floor", "cache_hit"): {"color": "#1b6ac9", "marker": "", "linestyle": "--", "linewidth": 1.4},
    ("floor", "cache_miss"): {"color": "#1b9e77", "marker": "", "linestyle": "--", "linewidth": 1.4},
    ("langchain_dynamodb", "turn"): {"color": "#d95f02", "marker": "^", "linestyle": "-", "linewidth": 2},
    ("langchain_redis", "turn"): {"color": "#e7298a", "marker": "D", "linestyle": "-", "linewidth": 2},
    ("naive_blob", "turn"): {"color": "#b8860b", "marker": "P", "linestyle": "-", "linewidth": 2},
}


def plots(results: dict[str, Any], out_dir: Path) -> list[str]:  # noqa: PLR0915
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    table = results["per_turn"]
    lengths = sorted({r["length"] for r in table})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 7), gridspec_kw={"width_ratios": [1.35, 1]})
    for index, side_op in enumerate(ORDER):
        pts = [r for r in table if (r["side"], r["operation"]) == side_op and r.get("median_ms")]
        if not pts:
            continue
        xs = [r["length"] for r in pts]
        style = STYLE[side_op]
        medians = [r["median_ms"] for r in pts]
        ax.plot(xs, medians, label=LABELS[side_op], markersize=7, **style)
        # p99 as a whisker above each median, nudged sideways so the whiskers do not overlap
        nudged = [x * 1.045 ** (index - len(ORDER) / 2) for x in xs]
        upper = [r["p99_ms"] - r["median_ms"] for r in pts]
        ax.errorbar(
            nudged,
            medians,
            yerr=[[0.0] * len(pts), upper],
            fmt="none",
            ecolor=style["color"],
            elinewidth=1.1,
            capsize=3,
            alpha=0.55,
        )
        if side_op[0] != "floor" and any(r.get("ratio_to_floor") for r in pts):
            ys = [(r["length"], r["ratio_to_floor"]) for r in pts if r.get("ratio_to_floor")]
            ax2.plot([x for x, _ in ys], [y for _, y in ys], label=LABELS[side_op], markersize=7, **style)
    for row in table:
        if row.get("error") and row["side"] == "langchain_dynamodb":
            color = STYLE[("langchain_dynamodb", "turn")]["color"]
            fits = [r for r in table if r["side"] == "langchain_dynamodb" and r.get("median_ms")]
            y = max(r["p99_ms"] for r in fits) if fits else ax.get_ylim()[1] / 3
            ax.plot([row["length"]], [y], marker="X", markersize=13, color=color, linestyle="none")
            ax.annotate(
                "LangChain DynamoDB breaks:\n400 KB item limit",
                xy=(row["length"], y),
                xytext=(-14, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                color=color,
                fontsize=9.5,
                fontweight="bold",
            )
    for axis in (ax, ax2):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(lengths)
        axis.set_xticklabels([str(n) for n in lengths])
        axis.set_xlim(min(lengths) / 1.6, max(lengths) * 1.6)
        axis.grid(True, which="major", alpha=0.35)
        axis.grid(True, which="minor", alpha=0.12)
        axis.set_xlabel("conversation length (turns already stored)")
    ax.set_ylabel("memory work per turn, ms (median; whisker up to p99)")
    ax.set_title("Time per turn (log-log)")
    ax2.axhline(1.0, color="black", linewidth=0.8)
    ax2.axhline(1.3, color="#1b6ac9", linewidth=0.8, linestyle=":")
    ax2.text(min(lengths) / 1.5, 1.33, "1.3x target", fontsize=8, color="#1b6ac9")
    ax2.set_ylabel("median / floor of the same work")
    ax2.text(
        0.98,
        0.02,
        "floor: the project's round trips made with raw clients.\n"
        "Redis-only peers sit below it: they write no durable copy.",
        transform=ax2.transAxes,
        ha="right",
        va="bottom",
        fontsize=8.5,
        color="#444444",
    )
    ax2.set_title("Multiple of the floor (raw clients, same round trips)")
    m = results["machine"]
    fig.suptitle(
        f"Per-turn memory work — {m['cpu']}, {m['cores']} cores, Python {m['python']}; "
        f"Redis {m['redis_server']} + moto over HTTP; `{results['command']}`",
        fontsize=10,
    )
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = out_dir / "per_turn.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    cold = results.get("cold_start")
    if cold:
        fig, ax = plt.subplots(figsize=(10, 0.55 * len(cold) + 1.6))
        names = [r["function"] for r in cold]
        imports = [r["import_ms"] for r in cold]
        clients = [r["clients_ms"] for r in cold]
        colors = ["#b8860b" if n == "NaiveHandler" else "#1b6ac9" for n in names]
        ax.barh(names, imports, color=colors, alpha=0.85, label="import handler module")
        ax.barh(names, clients, left=imports, color=colors, alpha=0.4, label="create clients (get_services)")
        for i, r in enumerate(cold):
            ax.text(r["init_ms"] + 5, i, f"{r['init_ms']:.0f} ms", va="center", fontsize=9)
        ax.set_xlabel("initialisation before the first event, ms (median of fresh interpreters)")
        ax.set_title("Cold start: init per function vs a naive eager handler")
        ax.invert_yaxis()
        ax.set_xlim(0, max(r["init_ms"] for r in cold) * 1.18)
        ax.legend(fontsize=8.5, loc="upper right")
        fig.tight_layout()
        path = out_dir / "cold_start.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def write(results: dict[str, Any], out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
    return ["results.json", "results.md", *plots(results, out_dir)]
