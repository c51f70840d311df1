"""template.yaml: valid for cfn-lint, wired to the handlers that exist, least privilege, and in
step with what the domain code reads and writes."""

from __future__ import annotations

import ast
import tomllib
from typing import Any

import pytest
from chatmemory.config import Settings
from pydantic import BaseModel

from local.template import ROOT, TEMPLATE, load_template

ROUTES = {
    "$connect",
    "$disconnect",
    "$default",
    "sendMessage",
    "getSession",
    "newSession",
    "deleteSession",
    "exportSession",
}

# What each handler really calls (read from chatmemory's store, connections and sender modules),
# and nothing more: resource -> actions. "@connections" is the stage's management API.
LEAST_PRIVILEGE: dict[str, dict[str, set[str]]] = {
    "ConnectFunction": {
        "ChatSessionsTable": {"dynamodb:Query"},  # does the requested session have history?
        "ConnectionsTable": {"dynamodb:PutItem"},  # bind
    },
    "DisconnectFunction": {
        "ConnectionsTable": {"dynamodb:DeleteItem"},  # unbind
    },
    "SendMessageFunction": {
        # GetItem: the session's memory state (summary, facts) on a cache miss
        "ChatSessionsTable": {
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:GetItem",
        },
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
        "TurnOutboxQueue": {"sqs:SendMessage"},  # a turn DynamoDB could not take now
    },
    "GetSessionFunction": {
        "ChatSessionsTable": {"dynamodb:Query"},
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    "NewSessionFunction": {
        "ConnectionsTable": {"dynamodb:GetItem", "dynamodb:PutItem"},  # look up, rebind
        "@connections": {"execute-api:ManageConnections"},
    },
    "DeleteSessionFunction": {
        # Query: every item and whose it is; BatchWriteItem: delete them (turns and meta item)
        "ChatSessionsTable": {"dynamodb:Query", "dynamodb:BatchWriteItem"},
        "ConnectionsTable": {"dynamodb:GetItem", "dynamodb:PutItem"},  # look up, rebind
        "@connections": {"execute-api:ManageConnections"},
    },
    "ExportSessionFunction": {
        "ChatSessionsTable": {"dynamodb:Query"},  # every item: the turns and the meta item
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    "DefaultFunction": {
        "@connections": {"execute-api:ManageConnections"},
    },
    "AuthorizerFunction": {},  # reads only its signing key (see the secrets test)
    "OutboxReplayFunction": {
        # Query: is this queued turn stored already, and the last turn number; PutItem: store it
        "ChatSessionsTable": {"dynamodb:Query", "dynamodb:PutItem"},
        # what its SQS event source mapping needs, on the outbox only
        "TurnOutboxQueue": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"},
    },
    "SummarizeFunction": {
        # ConditionCheckItem: the update's transaction checks that its last turn still exists
        "ChatSessionsTable": {
            "dynamodb:GetItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "dynamodb:ConditionCheckItem",
        },
    },
}
CONNECTIONS_ARN = (
    "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
    "${WebSocketApi}/${StageName}/POST/@connections/*"
)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_template().raw


def resources_of(raw: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in raw["Resources"].items() if res["Type"] == kind}


def statements(policies: list[Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(condition, statement) of every inline statement, through Fn::If branches."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    for entry in policies:
        condition, policy = None, entry
        if isinstance(entry, dict) and "Fn::If" in entry:
            condition, policy, otherwise = entry["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}, "a conditional policy has no else branch"
        assert isinstance(policy, dict) and set(policy) == {"Statement"}, (
            f"only explicit statements, no SAM policy templates or managed policies: {policy}"
        )
        out.extend((condition, statement) for statement in policy["Statement"])
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resource_name(resource: Any) -> str:
    if resource == {"Fn::GetAtt": ["ChatSessionsTable", "Arn"]}:
        return "ChatSessionsTable"
    if resource == {"Fn::GetAtt": ["ConnectionsTable", "Arn"]}:
        return "ConnectionsTable"
    if resource == {"Fn::Sub": CONNECTIONS_ARN}:
        return "@connections"
    if resource == {"Fn::GetAtt": ["TurnOutboxQueue", "Arn"]}:
        return "TurnOutboxQueue"
    return str(resource)


# ---- validity -------------------------------------------------------------------------------


def test_cfn_lint_finds_no_errors_or_warnings() -> None:
    from cfnlint.api import lint_file

    matches = lint_file(TEMPLATE)
    problems = [m for m in matches if m.rule.id[0] in "EW"]
    assert not problems, "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in problems)


def test_every_route_invokes_a_handler_that_exists() -> None:
    template = load_template()
    routes = template.routes()
    assert set(routes) == ROUTES
    assert template.route_selection_expression() == "$request.body.action"
    for route, function in routes.items():
        assert function.code_uri.is_relative_to(ROOT / "functions"), route
        assert function.module_file.is_file(), f"{route}: no {function.module_file}"
        tree = ast.parse(function.module_file.read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert function.function_name in defined, f"{route}: {function.handler} is not defined"


def test_each_route_has_its_own_function_and_a_permission_scoped_to_it(raw: dict[str, Any]) -> None:
    routes = load_template().routes()
    assert len({f.logical_id for f in routes.values()}) == len(routes)
    permissions = {
        res["Properties"]["FunctionName"]["Ref"]: res["Properties"]
        for res in resources_of(raw, "AWS::Lambda::Permission").values()
    }
    for route, function in routes.items():
        permission = permissions[function.logical_id]
        assert permission["Principal"] == "apigateway.amazonaws.com"
        assert permission["Action"] == "lambda:InvokeFunction"
        assert permission["SourceArn"] == {
            "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
            f"${{WebSocketApi}}/${{StageName}}/{route}"
        }


def test_the_stage_auto_deploys_with_throttling_from_parameters(raw: dict[str, Any]) -> None:
    ((_, stage),) = resources_of(raw, "AWS::ApiGatewayV2::Stage").items()
    props = stage["Properties"]
    assert props["AutoDeploy"] is True
    assert props["StageName"] == {"Ref": "StageName"}
    assert props["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"},
    }


# ---- functions ------------------------------------------------------------------------------


def test_globals_are_the_runtime_the_layers_are_built_for(raw: dict[str, Any]) -> None:
    function = raw["Globals"]["Function"]
    assert function["Runtime"] == "python3.12"
    assert function["Tracing"] == "Active"
    (arch,) = function["Architectures"]
    for name, layer in resources_of(raw, "AWS::Serverless::LayerVersion").items():
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"], name
        assert layer["Properties"]["CompatibleArchitectures"] == [arch], name
        # sam build picks the wheels' platform from BuildArchitecture, not from the functions.
        assert layer["Metadata"] == {"BuildMethod": "python3.12", "BuildArchitecture": arch}, name
    env = function["Environment"]["Variables"]
    for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"):
        assert name in env


def test_every_function_has_its_own_log_group_with_retention(raw: dict[str, Any]) -> None:
    groups = resources_of(raw, "AWS::Logs::LogGroup")
    by_name = {str(res["Properties"]["LogGroupName"]): res for res in groups.values()}
    for name in resources_of(raw, "AWS::Serverless::Function"):
        group = by_name.get(str({"Fn::Sub": f"/aws/lambda/${{{name}}}"}))
        assert group is not None, f"{name} has no log group /aws/lambda/<its name>"
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
        assert "Condition" not in group, name


def test_functions_get_exactly_the_table_and_connection_actions_their_code_uses(raw: dict[str, Any]) -> None:
    functions = resources_of(raw, "AWS::Serverless::Function")
    assert set(functions) == set(LEAST_PRIVILEGE)
    for name, function in functions.items():
        granted: dict[str, set[str]] = {}
        for _, statement in statements(function["Properties"]["Policies"]):
            actions = as_list(statement["Action"])
            if not any(a.startswith(("dynamodb:", "execute-api:", "sqs:")) for a in actions):
                continue
            assert statement["Effect"] == "Allow"
            for resource in as_list(statement["Resource"]):
                assert resource != "*" and "*" not in str(resource).replace("@connections/*", ""), (
                    f"{name}: {actions} on {resource}"
                )
                granted.setdefault(resource_name(resource), set()).update(actions)
        assert granted == LEAST_PRIVILEGE[name], name


def test_no_statement_grants_every_resource(raw: dict[str, Any]) -> None:
    for name, function in resources_of(raw, "AWS::Serverless::Function").items():
        for _, statement in statements(function["Properties"]["Policies"]):
            for resource in as_list(statement["Resource"]):
                assert resource != "*", f"{name}: {statement['Action']} on *"


def secret_readers(raw: dict[str, Any]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    readers = {}
    for name, function in resources_of(raw, "AWS::Serverless::Function").items():
        for condition, statement in statements(function["Properties"]["Policies"]):
            if any(a.startswith("secretsmanager:") for a in as_list(statement["Action"])):
                readers[name] = (condition, statement)
    return readers


def test_only_the_authorizer_reads_the_guest_token_key(raw: dict[str, Any]) -> None:
    readers = {
        name: s
        for name, (_, s) in secret_readers(raw).items()
        if s["Resource"] == {"Ref": "GuestTokenSecret"}
    }
    assert list(readers) == ["AuthorizerFunction"]
    assert readers["AuthorizerFunction"]["Action"] == "secretsmanager:GetSecretValue"
    route = raw["Resources"]["ConnectRoute"]["Properties"]
    assert route["AuthorizationType"] == "CUSTOM" and route["AuthorizerId"] == {"Ref": "ConnectAuthorizer"}


def test_only_the_model_callers_read_the_api_key_and_only_when_a_secret_is_named(raw: dict[str, Any]) -> None:
    readers = {
        n: r for n, r in secret_readers(raw).items() if r[1]["Resource"] != {"Ref": "GuestTokenSecret"}
    }
    # a turn (its client is built on first use) and the summary/facts update
    assert set(readers) == {"SendMessageFunction", "SummarizeFunction"}
    for condition, statement in readers.values():
        assert condition == "HasApiKeySecret"
        assert statement["Action"] == "secretsmanager:GetSecretValue"
        # Secrets Manager appends six random characters to a secret's name in its ARN.
        assert statement["Resource"] == {
            "Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:"
            "secret:${AnthropicApiKeySecretName}-??????"
        }


# ---- configuration --------------------------------------------------------------------------


def _settings_field(name: str) -> Any:
    """The Settings field an environment variable sets (GROUP__FIELD or a conventional name)."""
    if "__" in name:
        group, field_name = name.lower().split("__", 1)
        model = Settings.model_fields[group].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), name
        return model.model_fields[field_name]
    (field,) = [f for f in Settings.model_fields.values() if f.validation_alias == name]
    return field


def test_every_setting_variable_names_a_real_setting_with_the_same_default(raw: dict[str, Any]) -> None:
    parameters = raw["Parameters"]
    env = raw["Globals"]["Function"]["Environment"]["Variables"]
    settings_vars = {k: v for k, v in env.items() if not k.startswith("POWERTOOLS_")}
    for name, value in settings_vars.items():
        try:
            field = _settings_field(name)
        except (KeyError, ValueError) as exc:
            raise AssertionError(f"{name} is not read by chatmemory.config.Settings") from exc
        if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
            default = parameters[value["Ref"]].get("Default")
            if field.default not in (None, "") and default not in (None, ""):
                assert type(field.default)(default) == field.default, (
                    f"{name}: parameter {value['Ref']} defaults to {default}, the code to {field.default}"
                )


def test_the_template_defaults_make_valid_settings(raw: dict[str, Any], monkeypatch: Any) -> None:
    parameters = raw["Parameters"]
    env = raw["Globals"]["Function"]["Environment"]["Variables"]
    for name, value in env.items():
        if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
            monkeypatch.setenv(name, str(parameters[value["Ref"]]["Default"]))
        elif isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.llm.provider == "offline" and settings.cache.redis_url is None
    assert settings.storage.dynamodb_endpoint_url is None and settings.stream.connections_endpoint_url is None


def test_the_anthropic_provider_requires_a_secret_name(raw: dict[str, Any]) -> None:
    (rule,) = raw["Rules"].values()
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "LlmProvider"}, "anthropic"]}
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AnthropicApiKeySecretName"}, ""]}]}


# ---- tables ---------------------------------------------------------------------------------


def test_chat_sessions_table_is_keyed_as_the_turn_store_expects(raw: dict[str, Any]) -> None:
    props = raw["Resources"]["ChatSessionsTable"]["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "session_id", "KeyType": "HASH"},
        {"AttributeName": "turn_number", "KeyType": "RANGE"},
    ]
    assert sorted(props["AttributeDefinitions"], key=str) == [
        {"AttributeName": "session_id", "AttributeType": "S"},
        {"AttributeName": "turn_number", "AttributeType": "N"},
    ]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True}
    assert raw["Resources"]["ChatSessionsTable"]["DeletionPolicy"] == "Retain"


def test_connections_table_is_keyed_by_connection_id_with_a_ttl(raw: dict[str, Any]) -> None:
    props = raw["Resources"]["ConnectionsTable"]["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "connection_id", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "connection_id", "AttributeType": "S"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"


def test_functions_are_told_the_table_names(raw: dict[str, Any]) -> None:
    env = raw["Globals"]["Function"]["Environment"]["Variables"]
    assert env["SESSIONS_TABLE"] == {"Ref": "ChatSessionsTable"}
    assert env["CONNECTIONS_TABLE"] == {"Ref": "ConnectionsTable"}


def test_outputs_give_the_urls_and_table_names(raw: dict[str, Any]) -> None:
    outputs = raw["Outputs"]
    assert outputs["WebSocketUrl"]["Value"]["Fn::Sub"].startswith("wss://${WebSocketApi}.execute-api.")
    assert outputs["ConnectionsUrl"]["Value"]["Fn::Sub"].startswith("https://${WebSocketApi}.execute-api.")
    assert outputs["ChatSessionsTableName"]["Value"] == {"Ref": "ChatSessionsTable"}
    assert outputs["ConnectionsTableName"]["Value"] == {"Ref": "ConnectionsTable"}


# ---- the turn outbox ------------------------------------------------------------------------


def test_the_turn_outbox_is_fifo_with_a_dead_letter_queue(raw: dict[str, Any]) -> None:
    queue = raw["Resources"]["TurnOutboxQueue"]["Properties"]
    dlq = raw["Resources"]["TurnOutboxDeadLetterQueue"]["Properties"]
    # One message group per session keeps a session's turns in order; the DLQ of a FIFO queue is FIFO.
    assert queue["FifoQueue"] is True and dlq["FifoQueue"] is True
    assert queue["ContentBasedDeduplication"] is False  # the turn path sets MessageDeduplicationId
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["TurnOutboxDeadLetterQueue", "Arn"]
    }
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 2
    assert queue["SqsManagedSseEnabled"] is True and dlq["SqsManagedSseEnabled"] is True
    replay = raw["Resources"]["OutboxReplayFunction"]["Properties"]
    # AWS's advice: a visibility timeout of at least six times the consumer's timeout.
    assert queue["VisibilityTimeout"] >= 6 * replay["Timeout"]
    assert queue["MessageRetentionPeriod"] == dlq["MessageRetentionPeriod"] == 14 * 86_400


def test_the_outbox_is_consumed_by_its_replay_function_reporting_item_failures(raw: dict[str, Any]) -> None:
    (mapping,) = resources_of(raw, "AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["TurnOutboxQueue", "Arn"]}
    assert props["FunctionName"] == {"Ref": "OutboxReplayFunction"}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= props["BatchSize"] <= 10  # a FIFO queue's largest batch
    # No SAM SQS event: it would attach a managed policy granting every queue.
    assert "Events" not in raw["Resources"]["OutboxReplayFunction"]["Properties"]
    function = load_template().functions()["OutboxReplayFunction"]
    assert function.module_file.is_file()


def test_only_send_message_is_told_the_outbox_queue(raw: dict[str, Any]) -> None:
    told = {
        name
        for name, function in resources_of(raw, "AWS::Serverless::Function").items()
        if "OUTBOX__QUEUE_URL" in function["Properties"].get("Environment", {}).get("Variables", {})
    }
    assert told == {"SendMessageFunction"}
    env = raw["Resources"]["SendMessageFunction"]["Properties"]["Environment"]["Variables"]
    assert env["OUTBOX__QUEUE_URL"] == {"Ref": "TurnOutboxQueue"}
    assert _settings_field("OUTBOX__QUEUE_URL").default is None  # unset: turns are not queued


# ---- samconfig.toml -------------------------------------------------------------------------


def test_samconfig_deploys_each_environment_with_known_parameters(raw: dict[str, Any]) -> None:
    with (ROOT / "samconfig.toml").open("rb") as handle:
        config = tomllib.load(handle)
    assert {"default", "dev", "prod"} <= set(config)
    stacks = set()
    for env in ("default", "dev", "prod"):
        glob = config[env]["global"]["parameters"]
        deploy = config[env]["deploy"]["parameters"]
        stacks.add(glob["stack_name"])
        assert glob["region"] == "us-east-1"
        assert deploy["resolve_s3"] is True and deploy["capabilities"] == "CAPABILITY_IAM"
        overrides = dict(item.split("=", 1) for item in deploy["parameter_overrides"])
        for name, value in overrides.items():
            assert name in raw["Parameters"], f"{env}: {name} is not a template parameter"
            allowed = raw["Parameters"][name].get("AllowedValues")
            assert allowed is None or value in map(str, allowed), f"{env}: {name}={value}"
        if overrides.get("LlmProvider", "offline") == "anthropic":
            assert overrides.get("AnthropicApiKeySecretName"), env
        assert config[env].get("local_invoke", {}).get("parameters", {}).get("env_vars") in (
            None,
            "events/env.json",
        )
    assert len(stacks) == 3
    assert config["prod"]["deploy"]["parameters"]["confirm_changeset"] is True
