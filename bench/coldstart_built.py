"""Cold start of the functions as ``sam build`` packaged them: each handler in a fresh
interpreter whose path is only its built directory and its built layers (``python -I -S``,
as ``/var/task`` and ``/opt/python`` on Lambda), so what is measured is what the layers
really contain (not the development environment, which has more packages installed). ``-B``:
no bytecode is written, as on Lambda's read-only layers, so a layer shipped without .pyc
files pays their compilation at every cold start here too.

Build for this machine first, then measure::

    LAMBDA_PYTHON_VERSION=3.11 LAMBDA_PLATFORMS="manylinux_2_28_x86_64 manylinux2014_x86_64" \\
        .tools/sam/bin/sam build --no-cached --build-dir /tmp/chat-build
    .venv/bin/python -m bench.coldstart_built /tmp/chat-build --runs 7

Per function, medians over ``--runs`` interpreters: the handler module's import, then the
clients its first event creates (``get_services()``; the authorizer: its authenticator),
wall-clock and CPU time, how many modules were loaded, and the whole process (interpreter
start to exit, as a new Lambda instance pays it). Clients are created, not connected.
Tracing is disabled (no X-Ray daemon here). The reference row, measured in the same rounds:
``import boto3`` and one client from the same layers, nothing of ours; x = a function's whole
process over the reference's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from local.template import read_template

PROBE = """
import json, sys, time
sys.path[:0] = json.loads(sys.argv[1])
wall, cpu = time.perf_counter(), time.process_time()
module = __import__(sys.argv[2])
imported_wall, imported_cpu = time.perf_counter(), time.process_time()
if sys.argv[2] == "boto3":  # the reference: boto3 and one client, nothing of ours
    module.client("dynamodb", region_name="us-east-1", endpoint_url="http://127.0.0.1:1")
elif hasattr(module, "authenticator"):
    module.authenticator()
else:
    from chatmemory.services import get_services
    get_services()
end_wall, end_cpu = time.perf_counter(), time.process_time()
print(json.dumps({
    "import_ms": 1000 * (imported_wall - wall),
    "init_ms": 1000 * (end_wall - wall),
    "init_cpu_ms": 1000 * (end_cpu - cpu),
    "import_cpu_ms": 1000 * (imported_cpu - cpu),
    "modules": len(sys.modules),
    "anthropic": "anthropic" in sys.modules,
    "redis": "redis" in sys.modules,
}))
"""

ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "POWERTOOLS_SERVICE_NAME": "chat-memory",
    "POWERTOOLS_METRICS_NAMESPACE": "ChatMemoryBench",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "LLM__PROVIDER": "offline",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "DYNAMODB_ENDPOINT_URL": "http://127.0.0.1:1",
    "IDENTITY__GUEST_TOKEN_KEY": "a-development-key-of-enough-length-for-hs256!",
    "PYTHONHASHSEED": "0",
}


def functions(build: Path) -> dict[str, tuple[Path, str, list[Path]]]:
    """Logical id -> (code directory, handler module, layer python directories)."""
    template = read_template(build / "template.yaml")  # its Fn::ForEach loops expanded
    resources = template["Resources"]
    default_layers = template.get("Globals", {}).get("Function", {}).get("Layers", [])
    out = {}
    for name, res in resources.items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        props = res["Properties"]
        layers = [
            build / resources[layer["Ref"]]["Properties"]["ContentUri"] / "python"
            for layer in props.get("Layers", default_layers)
        ]
        out[name] = (build / props["CodeUri"], props["Handler"].rsplit(".", 1)[0], layers)
    return out


REFERENCE = "boto3 + one client (reference)"


def measure(build: Path, runs: int) -> list[dict[str, Any]]:
    found = functions(build)
    code, _, layers = found["ConnectFunction"]
    found[REFERENCE] = (code, "boto3", layers)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in found}
    for _ in range(runs):
        for name, (code, module, layers) in found.items():
            path = json.dumps([str(code), *map(str, layers)])
            began = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-I", "-S", "-B", "-c", PROBE, path, module],
                cwd=code,
                env={**ENV, "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                check=True,
            )
            sample = json.loads(out.stdout.strip().splitlines()[-1])
            sample["process_ms"] = 1000 * (time.perf_counter() - began)
            samples[name].append(sample)
    rows = []
    for name, got in sorted(samples.items(), key=lambda kv: (kv[0] == REFERENCE, kv[0])):
        row: dict[str, Any] = {"function": name, "runs": len(got)}
        for key in ("import_ms", "init_ms", "import_cpu_ms", "init_cpu_ms", "process_ms"):
            row[key] = round(statistics.median(s[key] for s in got))
        row["modules"] = got[0]["modules"]
        row["anthropic"] = got[0]["anthropic"]
        row["redis"] = got[0]["redis"]
        rows.append(row)
    reference = rows[-1]["process_ms"]
    for row in rows:
        row["x_reference"] = round(row["process_ms"] / reference, 2)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| function | import ms | init ms | init CPU ms | process ms | x reference | modules "
        "| anthropic | redis |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | :---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['function']} | {r['import_ms']} | {r['init_ms']} | {r['init_cpu_ms']} | {r['process_ms']} "
            f"| {r['x_reference']} | {r['modules']} "
            f"| {'yes' if r['anthropic'] else 'no'} | {'yes' if r['redis'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("build", type=Path, help="a sam build directory built for this machine")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = measure(args.build, args.runs)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
