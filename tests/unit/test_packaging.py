"""The Lambda dependencies layer: exactly the runtime dependencies of pyproject.toml.

``sam build`` installs layers/dependencies/requirements.txt into the layer; dev tools (moto,
pytest, cfn-lint, ...) must never reach it, and nothing the handlers import may be missing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from local.template import ROOT

REQUIREMENTS = ROOT / "layers" / "dependencies" / "requirements.txt"
LAMBDA_CODE = [ROOT / "layers" / "domain", ROOT / "functions"]
OWN_PACKAGES = {"chatmemory", "apigw_websocket", "app"}
# Type stubs are imported under TYPE_CHECKING only; the Lambda runtime brings boto3/botocore.
TYPING_ONLY = {"mypy_boto3_dynamodb", "mypy_boto3_apigatewaymanagementapi", "mypy_boto3_sqs"}
# Imported only when installed, with a fallback: the offline embedding model ships x86_64 wheels
# only, and the deployed functions embed with Bedrock (chatmemory.embeddings).
OPTIONAL = {"wordllama"}
# Part of the Lambda Python runtimes that have SnapStart, imported with a fallback where missing
# (chatmemory.snapstart): never shipped in the layer.
RUNTIME_PROVIDED = {"snapshot_restore_py"}


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]  # type: ignore[no-any-return]


def runtime_requirements() -> list[Requirement]:
    deps = project()["dependencies"]
    assert isinstance(deps, list)
    return [Requirement(d) for d in deps]


def layer_requirements() -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def key(req: Requirement) -> tuple[str, tuple[str, ...], str, str]:
    return (
        canonicalize_name(req.name),
        tuple(sorted(req.extras)),
        str(req.specifier),
        str(req.marker or ""),
    )


def test_the_layer_lists_exactly_the_runtime_dependencies() -> None:
    layer = sorted(map(key, layer_requirements()))
    runtime = sorted(map(key, runtime_requirements()))
    assert layer == runtime, (
        "layers/dependencies/requirements.txt must equal [project.dependencies] of pyproject.toml"
    )


def test_the_layer_file_is_plain_requirements() -> None:
    for line in REQUIREMENTS.read_text().splitlines():
        stripped = line.strip()
        # no -e/-r/--index-url: sam build runs pip on this file inside the build image
        assert not stripped.startswith("-"), line


def test_no_dev_tool_reaches_the_layer() -> None:
    optional = project().get("optional-dependencies", {})
    assert isinstance(optional, dict)
    dev = {canonicalize_name(Requirement(d).name) for d in optional.get("dev", [])}
    layer = {canonicalize_name(r.name) for r in layer_requirements()}
    assert not layer & dev, f"dev tools in the layer: {sorted(layer & dev)}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _closure(requirements: list[Requirement]) -> set[str]:
    """The runtime requirements and everything they require, as installed here."""
    seen: set[str] = set()
    todo = [(r.name, set(r.extras)) for r in requirements]
    while todo:
        name, extras = todo.pop()
        seen.add(canonicalize_name(name))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in map(Requirement, requires):
            if spec.marker and not any(spec.marker.evaluate({"extra": e}) for e in extras | {""}):
                continue
            if canonicalize_name(spec.name) not in seen:
                todo.append((spec.name, set(spec.extras)))
    return seen


def test_everything_the_lambda_code_imports_comes_with_the_layer() -> None:
    providers = importlib.metadata.packages_distributions()
    available = _closure(layer_requirements())
    missing: dict[str, str] = {}
    for folder in LAMBDA_CODE:
        for path in folder.rglob("*.py"):
            imported = _imports(path) - OWN_PACKAGES - TYPING_ONLY - OPTIONAL - RUNTIME_PROVIDED
            for module in imported - set(sys.stdlib_module_names):
                dists = {canonicalize_name(d) for d in providers.get(module, [])}
                if not dists & available:
                    missing.setdefault(module, path.relative_to(ROOT).as_posix())
    assert not missing, (
        "imported by the Lambda code but provided by no runtime dependency "
        f"(add to [project.dependencies] and layers/dependencies/requirements.txt): {missing}"
    )
