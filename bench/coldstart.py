"""Cold start: each function's initialisation in a fresh interpreter, next to a naive handler.

The child imports the handler module from the function's CodeUri as the Lambda runtime (and
``local.lambda_runtime.load_handler``) does, then calls ``chatmemory.services.get_services()``
with the environment pointing at local endpoints: that is the work done before the first
event. Clients are created, not connected (neither boto3 nor redis-py connects before the
first call). Run as ``python -m bench.coldstart NAME`` it prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

NAIVE = "NaiveHandler"
NAIVE_FILE = Path(__file__).with_name("naive_handler.py")


def _child(name: str) -> None:
    import importlib.util

    from local.lambda_runtime import load_handler  # stdlib only
    from local.template import load_template  # yaml: read before the clock starts

    functions = load_template().functions()
    if name == NAIVE:
        start = time.perf_counter()
        spec = importlib.util.spec_from_file_location("naive_handler", NAIVE_FILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        end = time.perf_counter()
        imported = module.IMPORTED_AT
    else:
        function = functions[name]
        start = time.perf_counter()
        load_handler(function)
        imported = time.perf_counter()
        from chatmemory.services import get_services

        get_services()
        end = time.perf_counter()
    print(
        json.dumps(
            {
                "import_ms": 1000 * (imported - start),
                "clients_ms": 1000 * (end - imported),
                "init_ms": 1000 * (end - start),
            }
        )
    )


def _env(redis_url: str, dynamodb_url: str) -> dict[str, str]:
    from bench.infra import BENCH_ENV

    return {
        **os.environ,
        **BENCH_ENV,
        "REDIS_URL": redis_url,
        "DYNAMODB_ENDPOINT_URL": dynamodb_url,
        "PYTHONHASHSEED": "0",
    }


def names() -> list[str]:
    from local.template import load_template

    return [*sorted(load_template().functions()), NAIVE]


def measure(runs: int, redis_url: str, dynamodb_url: str, say: Any) -> list[dict[str, Any]]:
    """``runs`` fresh interpreters per function, round-robin; medians per function."""
    env = _env(redis_url, dynamodb_url)
    samples: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in range(runs):
        for name in names():
            began = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "bench.coldstart", name],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = 1000 * (time.perf_counter() - began)
            if out.returncode != 0:
                raise RuntimeError(f"cold start of {name} failed:\n{out.stderr[-2000:]}")
            sample = json.loads(out.stdout.strip().splitlines()[-1])
            sample["process_ms"] = wall
            samples[name].append(sample)
        say(f"  cold start run {run + 1}/{runs}")
    from bench.runner import percentile

    rows = []
    for name, runs_of in samples.items():
        row: dict[str, Any] = {"function": name, "runs": len(runs_of)}
        for field in ("import_ms", "clients_ms", "init_ms", "process_ms"):
            row[field] = round(percentile([s[field] for s in runs_of], 50), 1)
        rows.append(row)
    return rows


def import_profile(
    name: str, redis_url: str, dynamodb_url: str, top: int = 10, runs: int = 3
) -> list[dict[str, Any]]:
    """Where a cold start's import time goes (``python -X importtime``): self time summed by
    top-level package for the imports made after the probe starts its clock, median of
    ``runs`` fresh interpreters."""
    from bench.runner import percentile

    per_run: list[dict[str, int]] = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "bench.coldstart", name],
            env=_env(redis_url, dynamodb_url),
            capture_output=True,
            text=True,
            check=True,
        )
        by_package: dict[str, int] = defaultdict(int)
        seen_probe = False
        for line in out.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            parts = [p.strip() for p in line.split(":", 1)[1].split("|")]
            if not parts[0].isdigit():
                continue
            module = parts[2].strip()
            if module.startswith("local.template"):
                seen_probe = True  # what the probe itself imports comes before
                continue
            if seen_probe:
                by_package[module.split(".")[0]] += int(parts[0])
        per_run.append(by_package)
    packages = {pkg for run in per_run for pkg in run}
    medians = {pkg: percentile([run.get(pkg, 0) for run in per_run], 50) for pkg in packages}
    ranked = sorted(medians.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": pkg, "self_ms": round(us / 1000, 1)} for pkg, us in ranked]


if __name__ == "__main__":
    _child(sys.argv[1])
