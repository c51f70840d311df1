"""local.template.expand: template.yaml's Fn::ForEach loops (AWS::LanguageExtensions) expanded
once, for every reader, as CloudFormation and cfn-lint expand them."""

from __future__ import annotations

import io
import json
import tomllib
from contextlib import redirect_stdout
from typing import Any

import pytest
from cfnlint.decode import decode
from cfnlint.template import Template as CfnLintTemplate
from cfnlint.template.transforms._language_extensions import language_extension

from local import template as local_template
from local.template import LANGUAGE_EXTENSIONS, ROOT, TEMPLATE, expand, read_template

SAM = "AWS::Serverless-2016-10-31"


def with_transform(resources: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {"Transform": [LANGUAGE_EXTENSIONS, SAM], "Resources": resources, **sections}


def test_a_loop_makes_one_fragment_per_item_in_its_place() -> None:
    template = with_transform(
        {
            "Api": {"Type": "AWS::ApiGatewayV2::Api"},
            "Fn::ForEach::Groups": [
                "Name",
                ["Connect", "SendMessage"],
                {
                    "${Name}LogGroup": {
                        "Type": "AWS::Logs::LogGroup",
                        "Properties": {
                            "LogGroupName": {"Fn::Sub": "/aws/lambda/${${Name}Function}"},
                            "RetentionInDays": {"Ref": "LogRetentionDays"},
                            "Tags": [{"Key": {"Ref": "Name"}, "Value": "&{Name}"}],
                        },
                    }
                },
            ],
            "Last": {"Type": "AWS::SNS::Topic"},
        }
    )
    out = expand(template)
    assert list(out["Resources"]) == ["Api", "ConnectLogGroup", "SendMessageLogGroup", "Last"]
    assert out["Resources"]["SendMessageLogGroup"]["Properties"] == {
        "LogGroupName": {"Fn::Sub": "/aws/lambda/${SendMessageFunction}"},
        "RetentionInDays": {"Ref": "LogRetentionDays"},
        "Tags": [{"Key": "SendMessage", "Value": "SendMessage"}],
    }
    # the transform has run: only SAM's is left
    assert out["Transform"] == [SAM]
    assert "Fn::ForEach::Groups" in template["Resources"], "the template itself is left as it was"


def test_what_a_loop_makes_is_evaluated_where_it_no_longer_depends_on_the_stack() -> None:
    template = with_transform(
        {
            "Fn::ForEach::Routes": [
                "Name",
                ["Default", "GetSession"],
                {
                    "${Name}Permission": {
                        "Type": "AWS::Lambda::Permission",
                        "Properties": {
                            "FunctionName": {"Ref": {"Fn::Sub": "${Name}Function"}},
                            "Description": {"Fn::Sub": "${Name} route"},
                            "SourceArn": {
                                "Fn::Sub": [
                                    "${Api}/${RouteKey}",
                                    {
                                        "RouteKey": {
                                            "Fn::FindInMap": ["RouteKeys", {"Ref": "Name"}, "RouteKey"]
                                        }
                                    },
                                ]
                            },
                            "Arn": {"Fn::GetAtt": [{"Fn::Sub": "${Name}Function"}, "Arn"]},
                            "Kept": {"Fn::Sub": "${!Literal}"},
                        },
                    }
                },
            ]
        },
        Mappings={
            "RouteKeys": {"Default": {"RouteKey": "$default"}, "GetSession": {"RouteKey": "getSession"}}
        },
    )
    props = expand(template)["Resources"]["DefaultPermission"]["Properties"]
    assert props == {
        "FunctionName": {"Ref": "DefaultFunction"},
        "Description": "Default route",
        "SourceArn": {"Fn::Sub": ["${Api}/${RouteKey}", {"RouteKey": "$default"}]},
        "Arn": {"Fn::GetAtt": ["DefaultFunction", "Arn"]},
        "Kept": {"Fn::Sub": "${!Literal}"},
    }


def test_loops_nest_and_the_inner_fragment_sees_the_outer_item() -> None:
    template = with_transform(
        {
            "Fn::ForEach::Tables": [
                "Table",
                ["Sessions", "Connections"],
                {
                    "Fn::ForEach::Kinds": [
                        "Kind",
                        ["Read", "Write"],
                        {
                            "${Table}${Kind}Alarm": {
                                "Type": "AWS::CloudWatch::Alarm",
                                "Properties": {"Name": "${Kind}"},
                            }
                        },
                    ]
                },
            ]
        }
    )
    assert list(expand(template)["Resources"]) == [
        "SessionsReadAlarm",
        "SessionsWriteAlarm",
        "ConnectionsReadAlarm",
        "ConnectionsWriteAlarm",
    ]


def test_loops_expand_in_conditions_and_outputs_too() -> None:
    template = with_transform(
        {},
        Conditions={
            "Fn::ForEach::Is": ["Env", ["Dev", "Prod"], {"Is${Env}": {"Fn::Equals": [{"Ref": "Env"}, "x"]}}]
        },
        Outputs={
            "Fn::ForEach::Out": ["Env", ["Dev"], {"${Env}Url": {"Value": {"Fn::Sub": "https://${Env}"}}}]
        },
    )
    out = expand(template)
    assert out["Conditions"] == {
        "IsDev": {"Fn::Equals": ["Dev", "x"]},
        "IsProd": {"Fn::Equals": ["Prod", "x"]},
    }
    assert out["Outputs"] == {"DevUrl": {"Value": "https://Dev"}}


def test_a_template_without_the_transform_is_returned_as_it_is() -> None:
    template = {"Transform": SAM, "Resources": {"Fn::ForEach::X": ["N", ["A"], {"${N}": {}}]}}
    assert expand(template) is template


@pytest.mark.parametrize(
    ("resources", "mappings", "error"),
    [
        # the same logical id made twice, or made and given
        ({"Fn::ForEach::A": ["N", ["X", "X"], {"${N}Topic": {}}]}, {}, "twice"),
        ({"XTopic": {}, "Fn::ForEach::A": ["N", ["X"], {"${N}Topic": {}}]}, {}, "already"),
        # a collection only the stack knows (a CommaDelimitedList parameter): not guessed
        ({"Fn::ForEach::A": ["N", {"Ref": "Names"}, {"${N}Topic": {}}]}, {}, "literal strings"),
        ({"Fn::ForEach::A": ["N", ["X"]]}, {}, "Identifier"),
        # a mapping entry that does not exist fails as it would in CloudFormation
        (
            {"Fn::ForEach::A": ["N", ["X"], {"${N}Topic": {"Fn::FindInMap": ["M", {"Ref": "N"}, "K"]}}]},
            {"M": {}},
            "X",
        ),
    ],
)
def test_what_cannot_be_expanded_faithfully_raises(
    resources: dict[str, Any], mappings: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        expand(with_transform(resources, Mappings=mappings))


# ---- template.yaml ---------------------------------------------------------------------------


def test_template_yaml_uses_loops_and_every_reader_gets_them_expanded() -> None:
    source = TEMPLATE.read_text()
    assert "Fn::ForEach::" in source and LANGUAGE_EXTENSIONS in source
    expanded = read_template()
    assert "Fn::ForEach" not in json.dumps(expanded)
    assert local_template.load_template().raw == expanded


def test_template_yaml_expands_as_cfn_lint_expands_it() -> None:
    """What ``make lint`` validated (cfn-lint's own expansion) is what the tests, the local stack
    and the checkov scan read."""
    decoded, matches = decode(str(TEMPLATE))
    assert decoded is not None and not matches
    problems, linted = language_extension(CfnLintTemplate(str(TEMPLATE), decoded, ["us-east-1"]))
    assert not problems
    ours = read_template()
    # (Conditions have no loop; cfn-lint reorders their Fn::Equals, so they are left out)
    for section in ("Resources", "Outputs"):
        assert ours[section] == json.loads(json.dumps(linted[section])), section


def test_the_scan_reads_the_expanded_template_as_json() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        local_template.main()
    assert json.loads(out.getvalue()) == read_template()


def test_sam_cli_is_told_to_expand_the_loops_in_every_environment() -> None:
    """SAM CLI expands Fn::ForEach itself only when asked (sam build fails on a loop otherwise);
    samconfig.toml's global parameters ask for build, validate, local invoke and deploy alike."""
    with (ROOT / "samconfig.toml").open("rb") as handle:
        config = tomllib.load(handle)
    for env in ("default", "dev", "prod"):
        assert config[env]["global"]["parameters"]["language_extensions"] is True, env
