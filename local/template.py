"""Read ``template.yaml``: the functions, WebSocket routes and tables it declares.

The local stack, the tests and the benchmarks take everything from here, so nothing restates
the template, and all of them see it as CloudFormation does once its ``AWS::LanguageExtensions``
transform has run: every ``Fn::ForEach`` loop expanded (:func:`expand`).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
LANGUAGE_EXTENSIONS = "AWS::LanguageExtensions"


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML with CloudFormation's short-form tags (!Ref, !Sub, ...) kept as plain dicts."""


def _tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> Any:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"  # !Condition: {"Condition": ...}
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@dataclass(frozen=True)
class Function:
    logical_id: str
    code_uri: Path
    handler: str
    environment: dict[str, Any]

    @property
    def module_file(self) -> Path:
        return self.code_uri / (self.handler.rsplit(".", 1)[0].replace(".", "/") + ".py")

    @property
    def function_name(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass(frozen=True)
class Authorizer:
    function: Function
    identity_sources: tuple[str, ...]  # e.g. route.request.querystring.token


@dataclass(frozen=True)
class Queue:
    """An SQS queue of the template, as CreateQueue takes it (its DLQ named by logical id)."""

    logical_id: str
    fifo: bool
    attributes: dict[str, str]  # CreateQueue attributes other than the redrive policy
    dead_letter_queue: str | None = None
    max_receive_count: int | None = None


@dataclass(frozen=True)
class QueueMapping:
    """An SQS event source mapping: the queue's batches go to the function."""

    queue: str  # logical id
    function: Function
    batch_size: int
    report_batch_item_failures: bool


@dataclass(frozen=True)
class Template:
    raw: dict[str, Any]

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.raw["Resources"])

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: res for name, res in self.resources.items() if res["Type"] == kind}

    def functions(self) -> dict[str, Function]:
        glob_env = self.raw.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        out = {}
        for name, res in self.of_type("AWS::Serverless::Function").items():
            props = res["Properties"]
            env = {**glob_env, **props.get("Environment", {}).get("Variables", {})}
            out[name] = Function(name, ROOT / props["CodeUri"], props["Handler"], env)
        return out

    def route_selection_expression(self) -> str:
        (api,) = self.of_type("AWS::ApiGatewayV2::Api").values()
        return str(api["Properties"]["RouteSelectionExpression"])

    def routes(self) -> dict[str, Function]:
        """Route key -> the function its integration invokes."""
        functions = self.functions()
        integrations = self.of_type("AWS::ApiGatewayV2::Integration")
        out = {}
        for res in self.of_type("AWS::ApiGatewayV2::Route").values():
            props = res["Properties"]
            target = props["Target"]["Fn::Sub"].split("${", 1)[1].rstrip("}")
            uri = integrations[target]["Properties"]["IntegrationUri"]["Fn::Sub"]
            out[str(props["RouteKey"])] = functions[_invoked_function(uri, functions)]
        return out

    def connect_authorizer(self) -> Authorizer | None:
        """The Lambda REQUEST authorizer of the ``$connect`` route, if it has one."""
        functions = self.functions()
        authorizers = self.of_type("AWS::ApiGatewayV2::Authorizer")
        for res in self.of_type("AWS::ApiGatewayV2::Route").values():
            props = res["Properties"]
            if props["RouteKey"] != "$connect" or props.get("AuthorizationType") != "CUSTOM":
                continue
            authorizer = authorizers[props["AuthorizerId"]["Ref"]]["Properties"]
            uri = authorizer["AuthorizerUri"]["Fn::Sub"]
            function_id = _invoked_function(uri, functions)
            return Authorizer(functions[function_id], tuple(authorizer.get("IdentitySource", [])))
        return None

    def queues(self) -> dict[str, Queue]:
        """Logical id -> each SQS queue (the attributes that have a local meaning)."""
        out = {}
        names = {
            "FifoQueue": "FifoQueue",
            "ContentBasedDeduplication": "ContentBasedDeduplication",
            "VisibilityTimeout": "VisibilityTimeout",
            "MessageRetentionPeriod": "MessageRetentionPeriod",
        }
        for name, res in self.of_type("AWS::SQS::Queue").items():
            props = res.get("Properties", {})
            attributes = {
                attr: str(props[key]).lower() if isinstance(props[key], bool) else str(props[key])
                for key, attr in names.items()
                if key in props
            }
            redrive = props.get("RedrivePolicy") or {}
            target = redrive.get("deadLetterTargetArn", {}).get("Fn::GetAtt", [None])[0]
            count = redrive.get("maxReceiveCount")
            out[name] = Queue(
                name, bool(props.get("FifoQueue")), attributes, target, int(count) if count else None
            )
        return out

    def queue_mappings(self) -> list[QueueMapping]:
        """The SQS event source mappings and the functions they invoke."""
        functions = self.functions()
        out = []
        for res in self.of_type("AWS::Lambda::EventSourceMapping").values():
            props = res["Properties"]
            source = props["EventSourceArn"].get("Fn::GetAtt", [None])[0]
            if source not in self.of_type("AWS::SQS::Queue"):
                continue
            out.append(
                QueueMapping(
                    source,
                    functions[props["FunctionName"]["Ref"]],
                    int(props.get("BatchSize", 10)),
                    "ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
                )
            )
        return out

    def table_definitions(self) -> dict[str, dict[str, Any]]:
        """Logical id -> the CreateTable arguments of each DynamoDB table (without a name)."""
        out = {}
        for name, res in self.of_type("AWS::DynamoDB::Table").items():
            props = res["Properties"]
            out[name] = {
                "KeySchema": props["KeySchema"],
                "AttributeDefinitions": props["AttributeDefinitions"],
                "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
                "GlobalSecondaryIndexes": props.get("GlobalSecondaryIndexes", []),
                "VectorIndexes": props.get("VectorIndexes", []),
                "ttl_attribute": props.get("TimeToLiveSpecification", {}).get("AttributeName"),
            }
        return out

    def parameter_default(self, name: str) -> Any:
        return self.raw["Parameters"][name].get("Default")

    def vector_indexes(self, spec: dict[str, Any], dimensions: int | None = None) -> list[dict[str, Any]]:
        """A table's vector indexes as CreateTable takes them: ``Dimensions`` (a parameter's
        Ref in the template) resolved to ``dimensions``, else to the parameter's default."""
        out = []
        for index in spec["VectorIndexes"]:
            size = index["Dimensions"]
            if isinstance(size, dict):
                size = dimensions or int(self.parameter_default(size["Ref"]))
            out.append({**index, "Dimensions": int(size)})
        return out


def read_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """A template file (``template.yaml``, or the one ``sam build`` writes) as a dict, expanded."""
    with path.open() as handle:
        return expand(yaml.load(handle, Loader=_CfnLoader))


@lru_cache(maxsize=1)
def load_template(path: Path = TEMPLATE) -> Template:
    return Template(read_template(path))


# ---- AWS::LanguageExtensions: Fn::ForEach ------------------------------------------------------

_FOR_EACH = re.compile(r"^Fn::ForEach::[A-Za-z0-9]+$")


def expand(template: dict[str, Any]) -> dict[str, Any]:
    """``template`` as the ``AWS::LanguageExtensions`` transform hands it on (a copy): every
    ``Fn::ForEach`` loop of Conditions, Resources and Outputs (at any depth) replaced by what it
    makes, and the transform taken off the list. A template without the transform is returned
    as it is.

    Each loop is ``Fn::ForEach::Name: [Identifier, [literal strings], {OutputKey: OutputValue}]``;
    for every item, ``${Identifier}`` (and ``&{Identifier}``, the item's letters and digits only)
    is replaced in every key and string of the fragment, and ``{"Ref": Identifier}`` becomes the
    item. In what a loop makes, what then no longer depends on the stack is evaluated as
    CloudFormation (and cfn-lint) would: ``Fn::FindInMap`` with literal keys becomes the mapping's
    value, a ``Fn::Sub`` string without variables becomes that string (so ``Ref`` and
    ``Fn::GetAtt`` of one take the logical id). A collection given by a parameter, a duplicate
    logical id or a missing mapping key raises ValueError: nothing is guessed."""
    transforms = template.get("Transform", [])
    transforms = transforms if isinstance(transforms, list) else [transforms]
    if LANGUAGE_EXTENSIONS not in transforms:
        return template
    out = copy.deepcopy(template)
    out["Transform"] = [t for t in transforms if t != LANGUAGE_EXTENSIONS]
    mappings = out.get("Mappings", {})
    for section in ("Conditions", "Resources", "Outputs"):
        if section in out:
            out[section] = _expand(out[section], mappings)
    return out


def _expand(node: Any, mappings: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_expand(item, mappings) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():  # what a loop makes takes its place
        if _FOR_EACH.match(key):
            for made_key, made_value in _loop(key, value, mappings).items():
                if made_key in out or made_key in node:
                    raise ValueError(f"{key} makes {made_key}, which the template has already")
                out[made_key] = made_value
        else:
            if key in out:
                raise ValueError(f"{key} is made by a loop and given as well")
            out[key] = _expand(value, mappings)
    return out


def _loop(name: str, loop: Any, mappings: dict[str, Any]) -> dict[str, Any]:
    if not (isinstance(loop, list) and len(loop) == 3 and isinstance(loop[0], str)):
        raise ValueError(f"{name}: not [Identifier, Collection, {{OutputKey: OutputValue}}]")
    identifier, collection, fragment = loop
    if not (isinstance(collection, list) and all(isinstance(item, str) for item in collection)):
        raise ValueError(f"{name}: the collection must be a list of literal strings, not {collection!r}")
    if not isinstance(fragment, dict):
        raise ValueError(f"{name}: the fragment must be a mapping of output keys")
    out: dict[str, Any] = {}
    for item in collection:
        made = _evaluate(_expand(_substitute(fragment, identifier, item), mappings), mappings)
        for key, value in made.items():
            if key in out:
                raise ValueError(f"{name} makes {key} twice")
            out[key] = value
    return out


def _substitute(node: Any, identifier: str, item: str) -> Any:
    if isinstance(node, str):
        letters = re.sub(r"[^0-9A-Za-z]", "", item)
        return node.replace("${" + identifier + "}", item).replace("&{" + identifier + "}", letters)
    if isinstance(node, list):
        return [_substitute(value, identifier, item) for value in node]
    if isinstance(node, dict):
        if node == {"Ref": identifier}:
            return item
        return {_substitute(k, identifier, item): _substitute(v, identifier, item) for k, v in node.items()}
    return node


def _evaluate(node: Any, mappings: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_evaluate(value, mappings) for value in node]
    if not isinstance(node, dict):
        return node
    node = {key: _evaluate(value, mappings) for key, value in node.items()}
    if list(node) == ["Fn::FindInMap"]:
        args = node["Fn::FindInMap"]
        if isinstance(args, list) and len(args) == 3 and all(isinstance(a, str) for a in args):
            mapping, top, second = args
            try:
                return copy.deepcopy(mappings[mapping][top][second])
            except KeyError:
                raise ValueError(f"Fn::FindInMap {args}: no such mapping entry") from None
    if list(node) == ["Fn::Sub"] and isinstance(node["Fn::Sub"], str) and "${" not in node["Fn::Sub"]:
        return node["Fn::Sub"]
    return node


def main() -> None:
    """``python -m local.template``: the expanded template as JSON, for tools that cannot
    expand ``Fn::ForEach`` themselves (checkov: ``make scan``)."""
    json.dump(read_template(), sys.stdout, indent=1)
    sys.stdout.write("\n")


def _invoked_function(uri: str, functions: dict[str, Function]) -> str:
    """The function an integration URI invokes: ``${Fn.Arn}``, or ``${FnAlias<name>}``, the
    alias SAM makes for ``AutoPublishAlias`` (the local stack runs the function's code)."""
    reference = uri.split("functions/${", 1)[1].split("}", 1)[0]
    if reference.endswith(".Arn"):
        return reference.removesuffix(".Arn")
    function_id, _, _alias = reference.partition("Alias")
    if function_id not in functions:
        raise ValueError(f"an integration invokes {reference}, not a function of the template")
    return function_id


def create_tables(
    dynamodb: Any,
    names: dict[str, str],
    time_to_live: bool = True,
    vector_dimensions: int | None = None,
    vector_indexes: bool = True,
) -> None:
    """Create the template's tables (logical id -> table name) on a DynamoDB endpoint;
    ``time_to_live=False`` for an engine without UpdateTimeToLive. Vector indexes get
    ``vector_dimensions`` (the embedding model's; default: the template parameter's);
    ``vector_indexes=False`` for an engine without them (their search keys then go too). moto
    has them once ``local.vector_search`` is imported in its process (here, for a moto in it),
    and answers one request at a time once ``local.moto_isolation`` is."""
    import local.moto_isolation  # an in-process moto safe for concurrent requests
    import local.vector_search  # noqa: F401  (SearchVectors for an in-process moto)

    template = load_template()
    client = dynamodb.meta.client
    existing = set(client.list_tables()["TableNames"])
    for logical_id, spec in template.table_definitions().items():
        name = names[logical_id]
        if name in existing:
            continue
        indexes: dict[str, Any] = (
            {"GlobalSecondaryIndexes": spec["GlobalSecondaryIndexes"]}
            if spec["GlobalSecondaryIndexes"]
            else {}
        )
        attributes = spec["AttributeDefinitions"]
        vectors = template.vector_indexes(spec, vector_dimensions)
        if vectors and vector_indexes:
            indexes["VectorIndexes"] = vectors
        elif vectors:
            searched = {e["AttributeName"] for v in vectors for e in v.get("SearchSchema", [])}
            keys = {k["AttributeName"] for k in spec["KeySchema"]}
            keys.update(k["AttributeName"] for g in spec["GlobalSecondaryIndexes"] for k in g["KeySchema"])
            attributes = [a for a in attributes if a["AttributeName"] not in searched - keys]
        client.create_table(
            TableName=name,
            KeySchema=spec["KeySchema"],
            AttributeDefinitions=attributes,
            BillingMode=spec["BillingMode"],
            **indexes,
        )
        # A short poll: emulators make a table ACTIVE within milliseconds (the default waits 20 s).
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        if spec["ttl_attribute"] and time_to_live:
            client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": spec["ttl_attribute"]},
            )


def create_queues(sqs: Any, max_receive_count: int | None = None) -> dict[str, str]:
    """Create the template's queues (dead-letter queues first) on an SQS endpoint; logical id
    -> queue URL. ``max_receive_count`` overrides the redrive policies' (tests)."""
    queues = load_template().queues()
    urls: dict[str, str] = {}
    ordered = sorted(queues.values(), key=lambda q: q.dead_letter_queue is not None)
    for queue in ordered:
        name = f"{queue.logical_id}.fifo" if queue.fifo else queue.logical_id
        attributes = dict(queue.attributes)
        if queue.dead_letter_queue:
            dlq = sqs.get_queue_attributes(
                QueueUrl=urls[queue.dead_letter_queue], AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            count = max_receive_count or queue.max_receive_count or 1
            attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": dlq, "maxReceiveCount": count})
        urls[queue.logical_id] = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return urls


if __name__ == "__main__":
    main()
