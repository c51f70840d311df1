"""Settings come from the environment once, with nested and conventional names."""

from __future__ import annotations

import pytest
from chatmemory.config import Settings
from pydantic import ValidationError


def test_defaults_run_offline_without_a_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "ANTHROPIC_API_KEY", "LLM__PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.llm.provider == "offline"
    assert settings.cache.redis_url is None
    assert settings.memory.history_turns == 10
    assert settings.memory.session_ttl_seconds == 86_400 and settings.memory.cache_ttl_seconds == 3_600


def test_nested_and_conventional_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY__HISTORY_TURNS", "4")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("SESSIONS_TABLE", "stack-ChatSessions")
    settings = Settings()
    assert settings.memory.history_turns == 4
    assert settings.cache.redis_url == "redis://cache:6379/0"
    assert settings.storage.sessions_table == "stack-ChatSessions"


def test_an_api_key_selects_claude(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM__PROVIDER", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert Settings().llm.provider == "anthropic"


def test_claude_without_a_key_is_refused_at_cold_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("LLM__PROVIDER", "anthropic")
    with pytest.raises(ValidationError, match="ANTHROPIC_API_KEY"):
        Settings()


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY__HISTORY_TURNS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_quotas_are_configured_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTA__MESSAGES_PER_WINDOW", "40")
    monkeypatch.setenv("QUOTA__TOKENS_PER_DAY", "1000")
    monkeypatch.setenv("QUOTA__FORWARDED_FOR_HOPS", "1")
    quota = Settings().quota
    assert (quota.messages_per_window, quota.message_window_seconds) == (40, 60)
    assert quota.tokens_per_day == 1000 and quota.forwarded_for_hops == 1 and quota.enabled
    monkeypatch.setenv("QUOTA__MESSAGES_PER_WINDOW", "0")
    with pytest.raises(ValidationError):
        Settings()
