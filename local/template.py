"""Read ``template.yaml``: the functions, WebSocket routes and tables it declares.

The local stack and the tests take everything from here, so nothing restates the template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


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


@lru_cache(maxsize=1)
def load_template(path: Path = TEMPLATE) -> Template:
    with path.open() as handle:
        return Template(yaml.load(handle, Loader=_CfnLoader))


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
