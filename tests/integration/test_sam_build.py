"""``sam build`` works without Docker and without the runtime's Python, and what it builds runs.

The stack is built twice through the very same path (``sam build`` -> packaging/Makefile):

* for Lambda (the defaults, arm64 and Python 3.12): every compiled wheel in the dependencies
  layer must be for aarch64 and CPython 3.12, which this machine cannot import;
* for this machine (``LAMBDA_PLATFORMS``/``LAMBDA_PYTHON_VERSION`` set to the host's): every
  built handler is imported, and its services created, in a fresh interpreter whose path is
  only the function's directory and the two built layers, as on Lambda (``/var/task`` and
  ``/opt/python``), so a dependency missing from the layer or a wrong layout fails here.

Needs the SAM CLI in $SAM_VENV, default .tools/sam (``make test`` installs it first).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from local.template import ROOT, TEMPLATE, read_template

# Where `make sam-cli` put the SAM CLI (make test passes SAM_VENV on; CI keeps it in a cache).
SAM = ROOT / os.environ.get("SAM_VENV", ".tools/sam") / "bin" / "sam"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    # Skipped only outside CI: `make test` installs the SAM CLI first.
    pytest.mark.skipif(not SAM.exists() and not os.environ.get("CI"), reason="no SAM CLI (run make sam-cli)"),
]


@dataclass(frozen=True)
class BuiltFunction:
    logical_id: str
    code_dir: Path
    handler: str
    layer_dirs: tuple[Path, ...]  # /opt/python of each layer, in the template's order


@dataclass(frozen=True)
class Build:
    directory: Path
    template: dict[str, object]

    def resource_dir(self, logical_id: str) -> Path:
        return self.directory / logical_id

    def functions(self) -> list[BuiltFunction]:
        resources = self.template["Resources"]
        assert isinstance(resources, dict)
        globals_ = self.template.get("Globals", {})
        assert isinstance(globals_, dict)
        default_layers = globals_.get("Function", {}).get("Layers", [])
        out = []
        for name, res in resources.items():
            if res["Type"] != "AWS::Serverless::Function":
                continue
            props = res["Properties"]
            layers = props.get("Layers", default_layers)
            layer_dirs = tuple(
                self.directory / resources[layer["Ref"]]["Properties"]["ContentUri"] / "python"
                for layer in layers
            )
            out.append(BuiltFunction(name, self.directory / props["CodeUri"], props["Handler"], layer_dirs))
        return out


def sam_build(build_dir: Path, **variables: str) -> Build:
    """``sam build`` as ``make build`` runs it, into ``build_dir``; Docker made unreachable."""
    env = {
        **os.environ,
        **variables,
        "SAM_CLI_TELEMETRY": "0",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
    }
    out = subprocess.run(
        [str(SAM), "build", "--no-cached", "--parallel", "--build-dir", str(build_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"sam build failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    # The built template keeps template.yaml's Fn::ForEach loops (CloudFormation expands them).
    return Build(build_dir, read_template(build_dir / "template.yaml"))


@pytest.fixture(scope="module")
def lambda_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return sam_build(tmp_path_factory.mktemp("sam-lambda"))


@pytest.fixture(scope="module")
def host_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    machine = platform.machine()
    yield sam_build(
        tmp_path_factory.mktemp("sam-host"),
        PYTHON=sys.executable,  # of the target version: the layers ship bytecode, as they would
        LAMBDA_PYTHON_VERSION=f"{sys.version_info.major}.{sys.version_info.minor}",
        LAMBDA_PLATFORMS=f"manylinux_2_28_{machine} manylinux2014_{machine}",
    )


def wheel_tags(layer: Path) -> dict[str, list[str]]:
    """Distribution -> its wheel tags, from the .dist-info/WHEEL files pip left in the layer."""
    tags: dict[str, list[str]] = {}
    for wheel in layer.glob("*.dist-info/WHEEL"):
        lines = wheel.read_text().splitlines()
        tags[wheel.parent.name] = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")]
    return tags


def test_the_lambda_build_is_for_arm64_and_python_3_12(lambda_build: Build) -> None:
    layer = lambda_build.resource_dir("DependenciesLayer") / "python"
    tags = wheel_tags(layer)
    assert {"pydantic_core", "cryptography", "jiter"} <= {name.split("-")[0] for name in tags}
    for dist, dist_tags in tags.items():
        for tag in dist_tags:
            python, abi, plat = tag.split("-")
            if plat == "any":
                continue
            assert "aarch64" in plat, f"{dist} was built for {plat}, not arm64"
            assert python in ("cp312", "cp37", "cp38", "cp39", "cp310", "cp311") or python.startswith("py3")
            assert abi in ("cp312", "abi3", "none"), f"{dist} has the ABI {abi}, not CPython 3.12's"
    extensions = [p.name for p in layer.rglob("*.so")]
    assert extensions
    assert not [name for name in extensions if "x86_64" in name or "cpython-311" in name]
    # The domain layer is a copy of the sources; bytecode, if any, is the runtime's only.
    domain = lambda_build.resource_dir("DomainLayer") / "python"
    assert (domain / "chatmemory" / "services.py").is_file()
    assert (domain / "apigw_websocket" / "__init__.py").is_file()
    for built in (domain, layer):
        assert all(".cpython-312." in pyc.name for pyc in built.rglob("*.pyc"))
    for function in lambda_build.functions():
        assert (function.code_dir / "app.py").is_file(), function.logical_id


# Run in the child: the Lambda runtime's path only, then the handler's import and its clients.
PROBE = """
import json, sys, sysconfig
sys.path[:0] = json.loads(sys.argv[1])
module = __import__(sys.argv[2])
handler = getattr(module, sys.argv[3])
assert callable(handler)
from chatmemory.services import get_services
get_services()
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
allowed = (*json.loads(sys.argv[1]), *stdlib)
outside = sorted(
    name for name, mod in list(sys.modules.items())
    if getattr(mod, "__file__", None) and not str(mod.__file__).startswith(allowed)
)
print(json.dumps({"outside": outside, "site": [p for p in sys.path if "site-packages" in p]}))
"""


def probe_env() -> dict[str, str]:
    """A deployed function's environment without AWS: clients are created, never called."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "chat-memory",
        "POWERTOOLS_METRICS_NAMESPACE": "ChatMemory",
        "SESSIONS_TABLE": "ChatSessions",
        "CONNECTIONS_TABLE": "ChatConnections",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "IDENTITY__GUEST_TOKEN_KEY": "a-development-key-of-enough-length-for-hs256!",
    }


def test_every_built_handler_imports_with_only_its_layers(host_build: Build) -> None:
    functions = host_build.functions()
    assert len(functions) >= 10
    for function in functions:
        module, attr = function.handler.rsplit(".", 1)
        path = [str(function.code_dir), *map(str, function.layer_dirs)]
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", PROBE, json.dumps(path), module, attr],
            env=probe_env(),
            cwd=function.code_dir,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert out.returncode == 0, f"{function.logical_id} does not import:\n{out.stderr[-3000:]}"
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report == {"outside": [], "site": []}, function.logical_id


LAMBDA_UNZIPPED_LIMIT = 262_144_000  # bytes: a function and all its layers, unzipped


def test_every_function_with_its_layers_fits_lambdas_unzipped_size_limit(lambda_build: Build) -> None:
    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    for function in lambda_build.functions():
        total = size(function.code_dir) + sum(size(layer) for layer in function.layer_dirs)
        assert total < LAMBDA_UNZIPPED_LIMIT, f"{function.logical_id}: {total / 1e6:.0f} MB unzipped"


# Run with SAM CLI's own Python: its expansion of template.yaml (what sam build and sam local
# read), each resource's logical id and type.
SAM_EXPANSION = """
import json, sys
from samcli.lib.cfn_language_extensions.sam_integration import expand_language_extensions
from samcli.yamlhelper import yaml_parse
template = yaml_parse(open(sys.argv[1]).read())
expanded = expand_language_extensions(template, {}, enabled=True).expanded_template
print(json.dumps({name: res["Type"] for name, res in expanded["Resources"].items()}))
"""


def test_sam_cli_expands_the_template_to_the_resources_every_other_reader_sees() -> None:
    out = subprocess.run(
        [str(SAM.parent / "python"), "-c", SAM_EXPANSION, str(TEMPLATE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    by_sam = json.loads(out.stdout.strip().splitlines()[-1])
    ours = {name: res["Type"] for name, res in read_template()["Resources"].items()}
    assert by_sam == ours
