"""template.yaml: valid for cfn-lint, wired to the handlers that exist, least privilege, and in
step with what the domain code reads and writes."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint, lint_file
from chatmemory.config import Settings
from chatmemory.protocol import KNOWN_ACTIONS
from chatmemory.storage import vector_index
from chatmemory.storage.keys import LISTING_INDEX, PRINCIPAL_INDEX
from pydantic import BaseModel

from local.template import ROOT, TEMPLATE, load_template

# Every action the wire protocol knows has its route, besides API Gateway's own three.
ROUTES = {"$connect", "$disconnect", "$default"} | KNOWN_ACTIONS

# What each handler really calls (read from chatmemory's store, connections and sender modules),
# and nothing more: resource -> actions. "@connections" is the stage's management API.
LEAST_PRIVILEGE: dict[str, dict[str, set[str]]] = {
    "ConnectFunction": {
        "ChatSessionsTable": {"dynamodb:Query"},  # does the requested session have history?
        "ConnectionsTable": {"dynamodb:PutItem"},  # bind
    },
    "DisconnectFunction": {
        "ConnectionsTable": {"dynamodb:DeleteItem"},  # unbind
        "ChatSessionsTable": {"dynamodb:Query"},  # TurnsPerSession on a cache miss
    },
    "SendMessageFunction": {
        # GetItem: the session's memory state (summary, facts) on a cache miss
        "ChatSessionsTable": {
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:GetItem",
            "dynamodb:ConditionCheckItem",  # a new session's listing: its transaction checks the turn
        },
        # PutItem: rebind a connection whose session was erased from another connection
        "ConnectionsTable": {"dynamodb:GetItem", "dynamodb:PutItem"},
        "@connections": {"execute-api:ManageConnections"},
        "TurnOutboxQueue": {"sqs:SendMessage"},  # a turn DynamoDB could not take now
        "ChatSessionsVectorIndex": {"dynamodb:SearchVectors"},  # an opted-in user's other sessions
    },
    "GetSessionFunction": {
        "ChatSessionsTable": {"dynamodb:Query", "dynamodb:GetItem"},  # GetItem: the session's strategy
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    "NewSessionFunction": {
        "ChatSessionsTable": {"dynamodb:UpdateItem"},  # the new session's strategy (meta item)
        "ConnectionsTable": {"dynamodb:GetItem", "dynamodb:PutItem"},  # look up, rebind
        "@connections": {"execute-api:ManageConnections"},
    },
    "DeleteSessionFunction": {
        # Query: every item and whose it is; BatchWriteItem: delete them (turns and meta item);
        # PutItem: the erased session's tombstone
        "ChatSessionsTable": {"dynamodb:Query", "dynamodb:BatchWriteItem", "dynamodb:PutItem"},
        "ConnectionsTable": {"dynamodb:GetItem", "dynamodb:PutItem"},  # look up, rebind
        "@connections": {"execute-api:ManageConnections"},
    },
    "DeleteMyDataFunction": {
        "ChatSessionsIndex": {"dynamodb:Query"},  # the principal's sessions (by_principal)
        "ChatSessionsTable": {"dynamodb:Query", "dynamodb:BatchWriteItem", "dynamodb:PutItem"},
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
    # Long-term user memory: the item "user#<principal>", turn 0, of ChatSessions.
    "SetMemoryFunction": {
        # Query: the session's turns (owner); GetItem: session and user memory; UpdateItem:
        # strategy, opt-in, facts; DeleteItem: opting out erases
        "ChatSessionsTable": {
            "dynamodb:Query",
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        },
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    "GetUserMemoryFunction": {
        "ChatSessionsTable": {"dynamodb:GetItem"},
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    # The session list: the meta items in the by_activity index.
    "ListSessionsFunction": {
        "ChatSessionsListingIndex": {"dynamodb:Query"},
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    "OpenSessionFunction": {
        "ChatSessionsTable": {"dynamodb:Query", "dynamodb:GetItem"},  # the session's turns and strategy
        "ConnectionsTable": {"dynamodb:GetItem", "dynamodb:PutItem"},  # look up, rebind
        "@connections": {"execute-api:ManageConnections"},
    },
    "RenameSessionFunction": {
        "ChatSessionsTable": {"dynamodb:UpdateItem"},  # the title, conditional on the listing's principal
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    "StopReplyFunction": {  # the stop is a mark in Redis, which the streaming turn reads
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    "ForgetUserMemoryFunction": {
        "ChatSessionsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"},
        "ConnectionsTable": {"dynamodb:GetItem"},
        "@connections": {"execute-api:ManageConnections"},
    },
    # its signing key (see the secrets test), and the guests counted per source address
    "AuthorizerFunction": {"ChatSessionsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"}},
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
    if resource == {"Fn::Sub": "${ChatSessionsTable.Arn}/index/by_principal"}:
        return "ChatSessionsIndex"
    if resource == {"Fn::Sub": "${ChatSessionsTable.Arn}/index/by_activity"}:
        return "ChatSessionsListingIndex"
    if resource == {"Fn::Sub": "${ChatSessionsTable.Arn}/index/by_owner_vector"}:
        return "ChatSessionsVectorIndex"
    if resource == {"Fn::GetAtt": ["TurnOutboxQueue", "Arn"]}:
        return "TurnOutboxQueue"
    return str(resource)


# ---- validity -------------------------------------------------------------------------------


SERVERLESS_RULES = ManualArgs(append_rules=["cfn_lint_serverless.rules"])


def test_cfn_lint_finds_no_errors_or_warnings() -> None:
    # with the serverless rules (cfn-lint-serverless): log retention, tracing, dead letters, ...
    matches = lint_file(TEMPLATE, config=SERVERLESS_RULES)
    problems = [m for m in matches if m.rule.id[0] in "EW"]
    assert not problems, "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in problems)


def test_the_serverless_rules_are_loaded() -> None:
    """Else the lint above would pass without them: a queue with no redrive policy is an ES6000."""
    matches = lint("Resources:\n  Queue:\n    Type: AWS::SQS::Queue\n", config=SERVERLESS_RULES)
    assert [m.rule.id for m in matches] == ["ES6000"]


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
    # Keyed by function: a permission may name the function or the alias its route invokes.
    permissions = {
        res["Properties"]["FunctionName"]["Ref"].removesuffix(ALIAS): res["Properties"]
        for res in resources_of(raw, "AWS::Lambda::Permission").values()
    }
    integrations = resources_of(raw, "AWS::ApiGatewayV2::Integration")
    invoked = {
        props["Properties"]["IntegrationUri"]["Fn::Sub"].split("functions/${", 1)[1].split("}", 1)[0]
        for props in integrations.values()
    }
    for route, function in routes.items():
        permission = permissions[function.logical_id]
        granted = raw_permission_target(raw, function.logical_id)
        assert granted in {function.logical_id, function.logical_id + ALIAS}, route
        # the permission is for what the integration invokes: the function, or its alias
        assert (granted + ".Arn" if granted == function.logical_id else granted) in invoked, route
        assert permission["Principal"] == "apigateway.amazonaws.com"
        assert permission["Action"] == "lambda:InvokeFunction"
        assert sub_text(permission["SourceArn"]) == (
            "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
            f"${{WebSocketApi}}/${{StageName}}/{route}"
        )


ALIAS = "Aliaslive"  # the logical id suffix of the alias SAM makes for AutoPublishAlias: live


def sub_text(value: Any) -> str:
    """A ``Fn::Sub``'s string with its literal variables put in (the route loop passes its route
    key as one), as CloudFormation evaluates it; the stack's own references stay."""
    sub = value["Fn::Sub"]
    if isinstance(sub, str):
        return sub
    text, variables = sub
    for name, literal in variables.items():
        assert isinstance(literal, str), f"{name} is not a literal: {literal}"
        text = text.replace("${" + name + "}", literal)
    return str(text)


def raw_permission_target(raw: dict[str, Any], function: str) -> str:
    (target,) = {
        res["Properties"]["FunctionName"]["Ref"]
        for res in resources_of(raw, "AWS::Lambda::Permission").values()
        if res["Properties"]["FunctionName"]["Ref"].removesuffix(ALIAS) == function
    }
    return str(target)


def test_send_message_is_invoked_through_an_alias_snapstart_can_apply_to(raw: dict[str, Any]) -> None:
    """SnapStart snapshots published versions only: sendMessage publishes one behind the
    "live" alias, which its route invokes (and which its permission names); SnapStart itself
    is a parameter, off by default."""
    props = raw["Resources"]["SendMessageFunction"]["Properties"]
    assert props["AutoPublishAlias"] == "live"
    uri = raw["Resources"]["SendMessageIntegration"]["Properties"]["IntegrationUri"]["Fn::Sub"]
    assert "${SendMessageFunctionAliaslive}/invocations" in uri
    assert raw_permission_target(raw, "SendMessageFunction") == "SendMessageFunctionAliaslive"
    off = evaluate(raw)["Resources"]["SendMessageFunction"]["Properties"]["SnapStart"]
    on = evaluate(raw, SendMessageSnapStart="true")["Resources"]["SendMessageFunction"]["Properties"]
    assert off == {"ApplyOn": "None"} and on["SnapStart"] == {"ApplyOn": "PublishedVersions"}


def test_the_stage_auto_deploys_with_throttling_from_parameters(raw: dict[str, Any]) -> None:
    ((_, stage),) = resources_of(raw, "AWS::ApiGatewayV2::Stage").items()
    props = stage["Properties"]
    assert props["AutoDeploy"] is True
    assert props["StageName"] == {"Ref": "StageName"}
    assert props["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"},
    }
    # sendMessage, a model call each, has a lower ceiling of its own (the route must exist first)
    assert props["RouteSettings"] == {
        "sendMessage": {
            "ThrottlingBurstLimit": {"Ref": "SendMessageThrottlingBurstLimit"},
            "ThrottlingRateLimit": {"Ref": "SendMessageThrottlingRateLimit"},
        }
    }
    assert stage["DependsOn"] == "SendMessageRoute"


# ---- abuse and cost controls ------------------------------------------------------------------


def test_send_message_and_the_workers_take_reserved_concurrency_from_parameters(raw: dict[str, Any]) -> None:
    functions = raw["Resources"]
    expected = {
        "SendMessageFunction": ("HasSendMessageReservedConcurrency", "SendMessageReservedConcurrency"),
        "SummarizeFunction": ("HasWorkerReservedConcurrency", "WorkerReservedConcurrency"),
        "OutboxReplayFunction": ("HasWorkerReservedConcurrency", "WorkerReservedConcurrency"),
    }
    for name, (condition, parameter) in expected.items():
        assert functions[name]["Properties"]["ReservedConcurrentExecutions"] == {
            "Fn::If": [condition, {"Ref": parameter}, {"Ref": "AWS::NoValue"}]
        }, name
        # empty (the default) leaves the function unreserved
        assert raw["Parameters"][parameter]["Default"] == ""
        assert raw["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, ""]}]}


def test_every_quota_is_a_parameter_every_function_is_told(raw: dict[str, Any]) -> None:
    env = raw["Globals"]["Function"]["Environment"]["Variables"]
    quota = {k: v for k, v in env.items() if k.startswith("QUOTA__")}
    assert set(quota) == {
        "QUOTA__MESSAGES_PER_WINDOW",
        "QUOTA__MESSAGE_WINDOW_SECONDS",
        "QUOTA__TOKENS_PER_DAY",
        "QUOTA__GUESTS_PER_SOURCE_BURST",
        "QUOTA__GUEST_BURST_WINDOW_SECONDS",
        "QUOTA__GUESTS_PER_SOURCE_PER_HOUR",
        "QUOTA__FORWARDED_FOR_HOPS",
    }
    assert all(set(v) == {"Ref"} and v["Ref"] in raw["Parameters"] for v in quota.values())


def test_the_authorizer_counts_guests_in_the_cache_and_only_in_quota_items(raw: dict[str, Any]) -> None:
    authorizer = raw["Resources"]["AuthorizerFunction"]["Properties"]
    assert authorizer["VpcConfig"]["Fn::If"][0] == "CacheEnabled"
    assert "REDIS_URL" in authorizer["Environment"]["Variables"]
    (statement,) = [
        s for _, s in statements(authorizer["Policies"]) if s.get("Sid") == "CountGuestsPerSource"
    ]
    assert statement["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["quota#*"]}}


def test_every_queue_and_topic_is_encrypted_at_rest(raw: dict[str, Any]) -> None:
    for name, queue in resources_of(raw, "AWS::SQS::Queue").items():
        assert queue["Properties"].get("SqsManagedSseEnabled") is True, name
    for name, topic in resources_of(raw, "AWS::SNS::Topic").items():
        key = topic["Properties"]["KmsMasterKeyId"]
        assert key == {"Ref": "AlarmTopicKey"}, name
    # a key CloudWatch alarms may publish with (the AWS managed SNS key lets no service in)
    policy = raw["Resources"]["AlarmTopicKey"]["Properties"]["KeyPolicy"]["Statement"]
    (cloudwatch,) = [s for s in policy if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert raw["Resources"]["AlarmTopicKey"]["Properties"]["EnableKeyRotation"] is True


def test_access_logs_are_json_without_message_bodies(raw: dict[str, Any]) -> None:
    settings = raw["Resources"]["Stage"]["Properties"]["AccessLogSettings"]["Fn::If"]
    assert settings[0] == "HasAccessLogs"
    fields = json.loads(settings[1]["Format"])
    assert {"connectionId", "routeKey", "status", "integrationLatency"} <= set(fields)
    assert not any("body" in str(v).lower() for v in fields.values())


def test_the_abuse_metrics_are_alarmed_on_and_on_the_dashboard(raw: dict[str, Any]) -> None:
    watched = {a.get("MetricName") for a in alarms(raw).values()}
    assert {"RateLimited", "GuestRefused", "QuotaUnchecked"} <= watched
    (dashboard,) = resources_of(raw, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    for metric in ("RateLimited", "GuestCreated", "GuestRefused", "QuotaUnchecked"):
        assert f'"{metric}"' in body, metric


# ---- functions ------------------------------------------------------------------------------


def test_globals_are_the_runtime_the_layers_are_built_for(raw: dict[str, Any]) -> None:
    function = raw["Globals"]["Function"]
    assert function["Runtime"] == "python3.12"
    assert function["Tracing"] == "Active"
    # One architecture for functions and layers, a parameter (sam local invoke on x86_64 passes
    # x86_64); deployed stacks get its default.
    assert function["Architectures"] == [{"Ref": "Architecture"}]
    assert raw["Parameters"]["Architecture"]["AllowedValues"] == ["arm64", "x86_64"]
    arch = raw["Parameters"]["Architecture"]["Default"]
    for name, layer in resources_of(raw, "AWS::Serverless::LayerVersion").items():
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"], name
        assert layer["Properties"]["CompatibleArchitectures"] == [{"Ref": "Architecture"}], name
    # Everything is built by packaging/Makefile, whose default wheels are the runtime's.
    for name, res in {
        **resources_of(raw, "AWS::Serverless::LayerVersion"),
        **resources_of(raw, "AWS::Serverless::Function"),
    }.items():
        build = {k: v for k, v in res["Metadata"].items() if k != "checkov"}  # its skips: see the scan test
        assert build == {"BuildMethod": "makefile", "ContextPath": "packaging"}, name
    makefile = (ROOT / "packaging" / "Makefile").read_text()
    assert "LAMBDA_PYTHON_VERSION ?= " + function["Runtime"].removeprefix("python") in makefile
    platforms = re.search(r"^LAMBDA_PLATFORMS \?= (.+)$", makefile, re.MULTILINE)
    assert platforms is not None
    machine = {"arm64": "aarch64", "x86_64": "x86_64"}[arch]
    assert all(p.endswith("_" + machine) for p in platforms.group(1).split())
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


def secret_readers(
    raw: dict[str, Any], secret: str | None = None
) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """Function -> (condition, statement) reading a secret: ``secret`` (a logical id), or the
    model's API key when None."""
    readers = {}
    for name, function in resources_of(raw, "AWS::Serverless::Function").items():
        for condition, statement in statements(function["Properties"]["Policies"]):
            if not any(a.startswith("secretsmanager:") for a in as_list(statement["Action"])):
                continue
            resource = statement["Resource"]
            if (resource == {"Ref": secret}) if secret else "AnthropicApiKeySecretName" in str(resource):
                assert name not in readers, f"{name} reads {secret} twice"
                readers[name] = (condition, statement)
    return readers


def test_only_the_authorizer_reads_the_guest_token_key(raw: dict[str, Any]) -> None:
    readers = {name: s for name, (_, s) in secret_readers(raw, "GuestTokenSecret").items()}
    assert list(readers) == ["AuthorizerFunction"]
    assert readers["AuthorizerFunction"]["Action"] == "secretsmanager:GetSecretValue"
    route = raw["Resources"]["ConnectRoute"]["Properties"]
    assert route["AuthorizationType"] == "CUSTOM" and route["AuthorizerId"] == {"Ref": "ConnectAuthorizer"}


def test_only_the_model_callers_read_the_api_key_and_only_when_a_secret_is_named(raw: dict[str, Any]) -> None:
    readers = secret_readers(raw)
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


def test_every_parameter_default_is_one_sam_local_resolves(raw: dict[str, Any]) -> None:
    """sam local invoke resolves only str, int, bool and list defaults: a float default reaches
    the function as "" (a fractional tunable is a String parameter with a pattern instead)."""
    for name, spec in raw["Parameters"].items():
        default = spec.get("Default")
        assert default is None or isinstance(default, str | int | bool | list), f"{name}: {default!r}"
        if spec["Type"] == "String" and "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], str(default)), name


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
    rule = raw["Rules"]["AnthropicNeedsAKey"]
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
        {"AttributeName": "last_active", "AttributeType": "N"},
        {"AttributeName": "listed_by", "AttributeType": "S"},
        {"AttributeName": "owner", "AttributeType": "S"},
        {"AttributeName": "principal", "AttributeType": "S"},
        {"AttributeName": "session_id", "AttributeType": "S"},
        {"AttributeName": "turn_number", "AttributeType": "N"},
    ]
    # deleteMyData finds a principal's sessions here (chatmemory.storage.keys.PRINCIPAL_INDEX)
    index, listing = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == PRINCIPAL_INDEX
    assert index["KeySchema"] == [
        {"AttributeName": "principal", "KeyType": "HASH"},
        {"AttributeName": "session_id", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    # listSessions pages a principal's sessions here, newest activity first (LISTING_INDEX).
    assert listing["IndexName"] == LISTING_INDEX
    assert listing["KeySchema"] == [
        {"AttributeName": "listed_by", "KeyType": "HASH"},
        {"AttributeName": "last_active", "KeyType": "RANGE"},
    ]
    # What a page shows, and the TTL its filter reads (an expired session leaves at once).
    assert set(listing["Projection"]["NonKeyAttributes"]) == {
        "title",
        "created_at",
        "turn_count",
        "strategy",
        "ttl",
    }
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"  # vector indexes need on-demand too
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True}
    assert raw["Resources"]["ChatSessionsTable"]["DeletionPolicy"] == "Retain"


def test_connections_table_is_keyed_by_connection_id_with_a_ttl(raw: dict[str, Any]) -> None:
    props = raw["Resources"]["ConnectionsTable"]["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "connection_id", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "connection_id", "AttributeType": "S"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"  # vector indexes need on-demand too


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


# ---- EnableCache: the template as CloudFormation would evaluate it ---------------------------

CACHE_USERS = {
    "ConnectFunction",
    "DisconnectFunction",
    "SendMessageFunction",
    "SummarizeFunction",
    "GetSessionFunction",
    "NewSessionFunction",
    "DeleteSessionFunction",
    "ExportSessionFunction",
    "DeleteMyDataFunction",
    "SetMemoryFunction",
    "GetUserMemoryFunction",
    "ForgetUserMemoryFunction",
    "ListSessionsFunction",
    "OpenSessionFunction",
    "RenameSessionFunction",
    "StopReplyFunction",
    "OutboxReplayFunction",
    "AuthorizerFunction",  # guests counted per source address
}
NETWORK_AND_CACHE_TYPES = ("AWS::EC2::", "AWS::ElastiCache::")
_NO_VALUE = object()


def evaluate(raw: dict[str, Any], **parameters: str) -> dict[str, Any]:
    """The template with its conditions decided for these parameters (defaults otherwise):
    resources and outputs whose condition is false dropped, every Fn::If replaced by its branch
    (AWS::NoValue removing the key or item), as CloudFormation does before creating anything."""
    values = {name: spec.get("Default") for name, spec in raw["Parameters"].items()} | parameters
    conditions: dict[str, bool] = {}

    def ref(name: str) -> Any:
        if name not in values:
            raise AssertionError(f"not a parameter: {name}")
        return values[name]

    def holds(expr: Any) -> bool:
        ((fn, args),) = expr.items()
        if fn == "Condition":
            return condition(args)
        if fn == "Fn::Not":
            return not holds(args[0])
        if fn == "Fn::And":
            return all(holds(a) for a in args)
        if fn == "Fn::Or":
            return any(holds(a) for a in args)
        if fn == "Fn::Equals":
            left, right = (ref(a["Ref"]) if isinstance(a, dict) else a for a in args)
            return bool(str(left) == str(right))
        raise AssertionError(f"condition not understood: {expr}")

    def condition(name: str) -> bool:
        if name not in conditions:
            conditions[name] = holds(raw["Conditions"][name])
        return conditions[name]

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if list(node) == ["Fn::If"]:
                name, then, otherwise = node["Fn::If"]
                return resolve(then if condition(name) else otherwise)
            if node == {"Ref": "AWS::NoValue"}:
                return _NO_VALUE
            out = {k: resolve(v) for k, v in node.items()}
            return {k: v for k, v in out.items() if v is not _NO_VALUE}
        if isinstance(node, list):
            return [v for v in map(resolve, node) if v is not _NO_VALUE]
        return node

    def kept(section: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in section.items() if "Condition" not in v or condition(v["Condition"])}

    return {
        **raw,
        "Globals": resolve(raw["Globals"]),
        "Resources": resolve(kept(raw["Resources"])),
        "Outputs": resolve(kept(raw["Outputs"])),
        "Conditions": {name: condition(name) for name in raw["Conditions"]},
    }


def function_env(stack: dict[str, Any], name: str) -> dict[str, Any]:
    own = stack["Resources"][name]["Properties"].get("Environment", {}).get("Variables", {})
    return {**stack["Globals"]["Function"]["Environment"]["Variables"], **own}


def test_the_cache_is_on_by_default(raw: dict[str, Any]) -> None:
    assert raw["Parameters"]["EnableCache"]["Default"] == "true"
    assert raw["Parameters"]["EnableCache"]["AllowedValues"] == ["true", "false"]


def test_enable_cache_false_leaves_out_the_vpc_nat_and_cache(raw: dict[str, Any]) -> None:
    stack = evaluate(raw, EnableCache="false")
    types = {res["Type"] for res in stack["Resources"].values()}
    assert not [t for t in types if t.startswith(NETWORK_AND_CACHE_TYPES)], types
    assert "CachePasswordSecret" not in stack["Resources"] and "CacheEndpoint" not in stack["Outputs"]
    for name, function in resources_of(stack, "AWS::Serverless::Function").items():
        assert "VpcConfig" not in function["Properties"], name
        env = function_env(stack, name)
        assert env["REDIS_URL"] == "", name  # memory straight from DynamoDB
        assert not [v for v in env if v.startswith("CACHE__") and "SECONDS" not in v], name
    assert not secret_readers(stack, "CachePasswordSecret")
    # the code runs without a cache when REDIS_URL is empty
    assert Settings(_env_file=None, REDIS_URL="").cache.redis_url in (None, "")  # type: ignore[call-arg]


def test_enable_cache_true_creates_a_vpc_in_two_azs_with_a_nat_gateway(raw: dict[str, Any]) -> None:
    stack = evaluate(raw)
    resources = stack["Resources"]
    assert len(resources_of(stack, "AWS::EC2::VPC")) == 1
    subnets = resources_of(stack, "AWS::EC2::Subnet")
    assert set(subnets) == {"PublicSubnetA", "PublicSubnetB", "PrivateSubnetA", "PrivateSubnetB"}
    for suffix, az in (("A", 0), ("B", 1)):
        for kind in ("Public", "Private"):
            assert subnets[f"{kind}Subnet{suffix}"]["Properties"]["AvailabilityZone"] == {
                "Fn::Select": [az, {"Fn::GetAZs": ""}]
            }
    (nat,) = resources_of(stack, "AWS::EC2::NatGateway").values()
    assert nat["Properties"]["SubnetId"] == {"Ref": "PublicSubnetA"}
    routes = {
        r["Properties"]["RouteTableId"]["Ref"]: r["Properties"]
        for r in resources_of(stack, "AWS::EC2::Route").values()
    }
    assert routes["PrivateRouteTable"]["NatGatewayId"] == {"Ref": "NatGateway"}
    assert routes["PublicRouteTable"]["GatewayId"] == {"Ref": "InternetGateway"}
    associations = {
        a["Properties"]["SubnetId"]["Ref"]: a["Properties"]["RouteTableId"]["Ref"]
        for a in resources_of(stack, "AWS::EC2::SubnetRouteTableAssociation").values()
    }
    assert associations == {
        "PublicSubnetA": "PublicRouteTable",
        "PublicSubnetB": "PublicRouteTable",
        "PrivateSubnetA": "PrivateRouteTable",
        "PrivateSubnetB": "PrivateRouteTable",
    }
    endpoints = resources_of(stack, "AWS::EC2::VPCEndpoint")
    assert set(endpoints) == {"DynamoDbEndpoint"}  # Bedrock's only with provider bedrock
    dynamodb = endpoints["DynamoDbEndpoint"]["Properties"]
    assert dynamodb["VpcEndpointType"] == "Gateway" and dynamodb["RouteTableIds"] == [
        {"Ref": "PrivateRouteTable"}
    ]
    assert dynamodb["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.dynamodb"}
    assert resources["Vpc"]["Properties"]["EnableDnsHostnames"] is True


def test_bedrock_gets_an_interface_endpoint_in_the_created_vpc(raw: dict[str, Any]) -> None:
    stack = evaluate(raw, LlmProvider="bedrock")
    endpoint = stack["Resources"]["BedrockRuntimeEndpoint"]["Properties"]
    assert endpoint["VpcEndpointType"] == "Interface" and endpoint["PrivateDnsEnabled"] is True
    assert endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.bedrock-runtime"}
    assert endpoint["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
    (ingress,) = stack["Resources"]["EndpointSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Ref": "FunctionSecurityGroup"} and ingress["FromPort"] == 443
    assert (
        "BedrockRuntimeEndpoint" not in evaluate(raw, LlmProvider="bedrock", EnableCache="false")["Resources"]
    )


def test_an_existing_vpc_is_used_as_given(raw: dict[str, Any]) -> None:
    stack = evaluate(raw, VpcId="vpc-0abc", PrivateSubnetIds="subnet-1,subnet-2")
    types = {res["Type"] for res in stack["Resources"].values()}
    for created in ("AWS::EC2::VPC", "AWS::EC2::NatGateway", "AWS::EC2::Subnet", "AWS::EC2::InternetGateway"):
        assert created not in types
    assert "Cache" in stack["Resources"]
    for group in ("FunctionSecurityGroup", "CacheSecurityGroup"):
        assert stack["Resources"][group]["Properties"]["VpcId"] == {"Ref": "VpcId"}
    assert stack["Resources"]["Cache"]["Properties"]["SubnetIds"] == {"Ref": "PrivateSubnetIds"}
    for name in CACHE_USERS:
        assert stack["Resources"][name]["Properties"]["VpcConfig"]["SubnetIds"] == {"Ref": "PrivateSubnetIds"}
    rule = raw["Rules"]["AnExistingVpcNeedsItsSubnets"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "VpcId"}, ""]}]}


def test_only_the_functions_security_group_reaches_the_cache_and_only_on_6379(raw: dict[str, Any]) -> None:
    stack = evaluate(raw)
    resources = stack["Resources"]
    cache = resources["Cache"]["Properties"]
    assert cache["SecurityGroupIds"] == [{"Ref": "CacheSecurityGroup"}]
    assert "SecurityGroupIngress" not in resources["CacheSecurityGroup"]["Properties"]
    ingresses = [
        r["Properties"]
        for r in resources_of(stack, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Ref": "CacheSecurityGroup"}
    ]
    assert ingresses == [
        {
            "Description": ingresses[0]["Description"],
            "GroupId": {"Ref": "CacheSecurityGroup"},
            "IpProtocol": "tcp",
            "FromPort": 6379,
            "ToPort": 6379,
            "SourceSecurityGroupId": {"Ref": "FunctionSecurityGroup"},
        }
    ]
    for name, function in resources_of(stack, "AWS::Serverless::Function").items():
        vpc = function["Properties"].get("VpcConfig")
        if name in CACHE_USERS:
            assert vpc == {
                "SecurityGroupIds": [{"Ref": "FunctionSecurityGroup"}],
                "SubnetIds": [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}],
            }, name
        else:
            assert vpc is None, f"{name} does not use the cache: it stays out of the VPC"
    assert cache["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]


def test_the_cache_is_reached_through_a_user_group_with_a_generated_password(raw: dict[str, Any]) -> None:
    stack = evaluate(raw)
    resources = stack["Resources"]
    cache = resources["Cache"]["Properties"]
    assert cache["Engine"] == {"Ref": "CacheEngine"} and cache["UserGroupId"] == {"Ref": "CacheUserGroup"}
    assert set(raw["Parameters"]["CacheEngine"]["AllowedValues"]) == {"redis", "valkey"}
    group = resources["CacheUserGroup"]["Properties"]
    assert group["UserIds"] == [{"Ref": "CacheUser"}, {"Ref": "CacheDefaultUser"}]
    users = {name: resources[name]["Properties"] for name in ("CacheUser", "CacheDefaultUser")}
    # the default user every group must hold can do nothing
    assert users["CacheDefaultUser"]["UserName"] == "default"
    assert users["CacheDefaultUser"]["AccessString"].startswith("off ")
    # Valkey groups admit password users only
    assert users["CacheDefaultUser"]["AuthenticationMode"]["Type"] == "password"
    app = users["CacheUser"]
    assert app["AccessString"].startswith("on ") and "-@dangerous" in app["AccessString"]
    assert app["AuthenticationMode"] == {
        "Type": "password",
        "Passwords": [{"Fn::Sub": "{{resolve:secretsmanager:${CachePasswordSecret}:SecretString}}"}],
    }
    assert "GenerateSecretString" in resources["CachePasswordSecret"]["Properties"]
    # the environment contract of the functions that use it
    for name in CACHE_USERS:
        env = function_env(stack, name)
        assert env["REDIS_URL"] == {"Fn::Sub": "rediss://${Cache.Endpoint.Address}:${Cache.Endpoint.Port}"}
        assert env["CACHE__CLUSTER"] == "true"
        assert env["CACHE__USERNAME"] == app["UserName"]
        assert env["CACHE__PASSWORD_SECRET_NAME"] == {"Ref": "CachePasswordSecret"}
    readers = secret_readers(stack, "CachePasswordSecret")
    assert set(readers) == CACHE_USERS
    for _, statement in readers.values():
        assert statement["Action"] == "secretsmanager:GetSecretValue"


def test_no_key_or_password_is_a_parameter_or_an_environment_value(raw: dict[str, Any]) -> None:
    secretish = ("API_KEY", "APIKEY", "PASSWORD", "SECRET", "TOKEN_KEY", "SIGNING")
    for name, spec in raw["Parameters"].items():
        if any(word in name.upper() for word in secretish):
            assert name.endswith("SecretName"), f"{name}: pass the name of a secret, not the secret"
            assert spec.get("Default", "") == "" or "/" in spec["Default"], name
    stack = evaluate(raw, LlmProvider="anthropic", AnthropicApiKeySecretName="chat/key")
    for name in resources_of(stack, "AWS::Serverless::Function"):
        for variable, value in function_env(stack, name).items():
            if any(word in variable for word in secretish) and not variable.endswith("_SECRET_NAME"):
                # sam local's development signing key is declared empty: never set on AWS
                assert value == "", f"{name}: {variable} holds a secret in clear"
    assert "ANTHROPIC_API_KEY" not in function_env(stack, "SendMessageFunction")
    assert function_env(stack, "SendMessageFunction")["LLM__API_KEY_SECRET_NAME"] == {
        "Ref": "AnthropicApiKeySecretName"
    }


# ---- operations ------------------------------------------------------------------------------


def emitted_metric_names() -> set[str]:
    """Every metric name the domain and handlers can publish, read from their source: literal
    ``add_metric(name=...)`` calls, and the two families built from names (memory modes,
    breaker state changes)."""
    import typing

    import pybreaker
    from chatmemory.protocol import MemoryMode

    names: set[str] = set()
    for path in [*(ROOT / "layers").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_metric":
                for keyword in node.keywords:
                    if keyword.arg != "name":
                        continue
                    value = keyword.value  # a literal, or one of two literals
                    options = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
                    names.update(str(o.value) for o in options if isinstance(o, ast.Constant))
    names |= {f"MemoryMode_{mode}" for mode in typing.get_args(MemoryMode)}
    states = (pybreaker.STATE_OPEN, pybreaker.STATE_CLOSED, pybreaker.STATE_HALF_OPEN)
    for breaker in ("redis", "dynamodb"):
        for state in states:
            names.add(f"{breaker.title()}Breaker{state.replace('-', ' ').title().replace(' ', '')}")
    return names


def app_metrics_in(node: Any, namespace: Any) -> list[dict[str, Any]]:
    """Every CloudWatch ``Metric`` (or alarm with a MetricName) in the app's namespace."""
    found = []
    if isinstance(node, dict):
        if node.get("Namespace") == namespace and "MetricName" in node:
            found.append(node)
        for value in node.values():
            found.extend(app_metrics_in(value, namespace))
    elif isinstance(node, list):
        for value in node:
            found.extend(app_metrics_in(value, namespace))
    return found


def alarms(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: r["Properties"] for n, r in resources_of(raw, "AWS::CloudWatch::Alarm").items()}


def alarm_metric_names(alarm: dict[str, Any]) -> set[str]:
    if "MetricName" in alarm:
        return {alarm["MetricName"]}
    return {q["MetricStat"]["Metric"]["MetricName"] for q in alarm["Metrics"] if "MetricStat" in q}


def test_alarms_and_the_dashboard_watch_metrics_the_code_publishes(raw: dict[str, Any]) -> None:
    namespace = raw["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    assert namespace == {"Fn::Sub": "ChatMemory/${AWS::StackName}"}
    emitted = emitted_metric_names()
    watched = app_metrics_in(alarms(raw), namespace)
    assert watched
    for metric in watched:
        assert metric["MetricName"] in emitted, metric["MetricName"]
        assert metric["Dimensions"] == [{"Name": "service", "Value": "chat-memory"}]
    (dashboard,) = resources_of(raw, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    import json

    document = json.loads(body)
    shown = set()
    for widget in document["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            if row and row[0] == "ChatMemory/${AWS::StackName}":
                assert row[2:4] == ["service", "chat-memory"], row
                shown.add(row[1])
    assert shown and shown <= emitted, shown - emitted
    # the product analytics and the health the issue asks for
    assert {
        "TurnsPerSession",
        "ConversationEnded",
        "MemoryMode_full",
        "MemoryMode_cache_only",
        "MemoryMode_stateless",
        "InputTokens",
        "OutputTokens",
        "TurnLatency",
        "BreakerOpened",
    } <= shown


def test_an_alarm_for_each_way_the_service_degrades(raw: dict[str, Any]) -> None:
    found = alarms(raw)
    by_metric: dict[str, list[str]] = {}
    for name, alarm in found.items():
        for metric in alarm_metric_names(alarm):
            by_metric.setdefault(metric, []).append(name)
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["TreatMissingData"] == "notBreaching", name
    assert found[by_metric["BreakerOpened"][0]]["Threshold"] == 0
    # stateless share > 1%: metric math over the three memory modes
    (share,) = by_metric["MemoryMode_stateless"]
    expression = next(q["Expression"] for q in found[share]["Metrics"] if "Expression" in q)
    assert "100 *" in expression and found[share]["Threshold"] == 1
    assert alarm_metric_names(found[share]) == {
        "MemoryMode_full",
        "MemoryMode_cache_only",
        "MemoryMode_stateless",
    }
    (latency,) = by_metric["TurnLatency"]
    assert found[latency]["ExtendedStatistic"] == "p99"
    assert found[latency]["Threshold"] == {"Ref": "TurnLatencyP99AlarmMs"}
    # DynamoDB throttling on both tables
    (throttles,) = set(by_metric["ReadThrottleEvents"]) & set(by_metric["WriteThrottleEvents"])
    tables = {
        q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"]
        for q in found[throttles]["Metrics"]
        if "MetricStat" in q
    }
    assert tables == {"ChatSessionsTable", "ConnectionsTable"}
    # every function: errors and throttles
    for function in resources_of(raw, "AWS::Serverless::Function"):
        watching = [
            name
            for name, alarm in found.items()
            if {"Errors", "Throttles"} <= alarm_metric_names(alarm)
            and {"Name": "FunctionName", "Value": {"Ref": function}}
            in [
                d
                for q in alarm["Metrics"]
                if "MetricStat" in q
                for d in q["MetricStat"]["Metric"]["Dimensions"]
            ]
        ]
        assert len(watching) == 1, f"{function}: {watching}"
    # a dead-letter queue's depth is alarmed on; the outbox's age (turns waiting to be stored)
    watched = {
        "TurnOutboxQueue": "ApproximateAgeOfOldestMessage",
        **{
            q: "ApproximateNumberOfMessagesVisible"
            for q in resources_of(raw, "AWS::SQS::Queue")
            if q.endswith("DeadLetterQueue")
        },
    }
    assert set(watched) == set(resources_of(raw, "AWS::SQS::Queue"))
    for queue, metric in watched.items():
        assert any(
            a.get("MetricName") == metric
            and a["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
            for a in found.values()
        ), queue


def test_async_invocations_that_fail_for_good_land_in_the_dead_letter_queue(raw: dict[str, Any]) -> None:
    for name in ("SummarizeFunction", "SendMessageFunction"):
        config = raw["Resources"][name]["Properties"]["EventInvokeConfig"]
        assert config["DestinationConfig"]["OnFailure"] == {
            "Type": "SQS",
            "Destination": {"Fn::GetAtt": ["AsyncDeadLetterQueue", "Arn"]},
        }, name
    # The memory update backs off by itself and fails only when it gives up: a retry by
    # Lambda would find it waiting, succeed, and keep the give-up out of the queue.
    assert (
        raw["Resources"]["SummarizeFunction"]["Properties"]["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    )


def test_alarms_notify_an_sns_topic_with_an_optional_email(raw: dict[str, Any]) -> None:
    assert raw["Resources"]["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    assert "AlarmEmailSubscription" not in evaluate(raw)["Resources"]
    subscription = evaluate(raw, AlarmEmail="ops@example.com")["Resources"]["AlarmEmailSubscription"]
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlarmEmail"},
    }


def test_samconfig_sandbox_runs_without_the_cache_and_prod_with_it() -> None:
    with (ROOT / "samconfig.toml").open("rb") as handle:
        config = tomllib.load(handle)

    def overrides(env: str) -> dict[str, str]:
        items = config[env]["deploy"]["parameters"]["parameter_overrides"]
        return dict(item.split("=", 1) for item in items)

    assert overrides("default")["EnableCache"] == "false"  # no fixed monthly cost
    assert overrides("prod")["EnableCache"] == "true"


def test_the_vector_index_is_keyed_by_owner_and_sized_like_the_embedder(raw: dict[str, Any]) -> None:
    """Cross-session retrieval (chatmemory.memory.crosssession): SearchVectors with owner = :o,
    on the attribute the memory worker writes, of the dimensions the functions embed with."""
    props = raw["Resources"]["ChatSessionsTable"]["Properties"]
    (index,) = props["VectorIndexes"]
    assert index["IndexName"] == vector_index.INDEX
    assert index["VectorAttribute"] == {"AttributeName": vector_index.VECTOR}
    assert index["SearchSchema"] == [{"AttributeName": vector_index.OWNER, "SearchSchemaElementType": "HASH"}]
    assert index["DistanceFunction"] == "COSINE"
    assert index["Dimensions"] == {"Ref": "EmbeddingDimensions"}
    env = raw["Globals"]["Function"]["Environment"]["Variables"]
    assert env["EMBEDDINGS__DIMENSIONS"] == {"Ref": "EmbeddingDimensions"}
    # Everything a found turn becomes in a prompt is projected into the index.
    assert set(index["Projection"]["NonKeyAttributes"]) >= {
        "user_message",
        "assistant_reply",
        "created_at",
        "ttl",
    }


def test_every_checkov_finding_left_is_skipped_with_its_reason(raw: dict[str, Any]) -> None:
    """``make scan`` fails on any finding not skipped; each skip says why, in one line."""
    skipped = 0
    for name, resource in raw["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), name
            assert 20 <= len(skip["comment"]) <= 120 and "\n" not in skip["comment"], (name, skip)
            skipped += 1
    assert skipped
    # the ones the hardening fixed instead are not skipped anywhere
    fixed = {"CKV_AWS_26"}  # SNS topic encryption
    assert not any(
        s["id"] in fixed
        for r in raw["Resources"].values()
        for s in r.get("Metadata", {}).get("checkov", {}).get("skip", [])
    )


def test_the_dashboard_shows_every_functions_errors_throttles_and_duration(raw: dict[str, Any]) -> None:
    import json

    (dashboard,) = resources_of(raw, "AWS::CloudWatch::Dashboard").values()
    document = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    functions = {f"${{{name}}}" for name in resources_of(raw, "AWS::Serverless::Function")}
    for metric in ("Errors", "Throttles", "Duration"):
        shown = {
            row[3]
            for widget in document["widgets"]
            for row in widget.get("properties", {}).get("metrics", [])
            if row[:3] == ["AWS/Lambda", metric, "FunctionName"]
        }
        assert shown == functions, (metric, functions - shown)
