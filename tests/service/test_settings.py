"""Settings come from the environment and never show their secrets."""

from __future__ import annotations

import logging

import pytest

from service.settings import Settings, SettingsError, get_settings, redact_url


def test_contract_variables_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ATTUNE_HOST", "ATTUNE_PORT", "ATTUNE_REDIS_URL", "ATTUNE_ADMIN_KEY", "MINIMAX_API_KEY", "MINIMAX_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert (s.host, s.port, s.redis_url, s.minimax_base_url) == ("127.0.0.1", 8000, None, "https://api.minimax.io")
    monkeypatch.setenv("ATTUNE_PORT", "9001")
    monkeypatch.setenv("MINIMAX_BASE_URL", "https://api.minimaxi.com")
    monkeypatch.setenv("ATTUNE_REDIS_URL", "redis://r:6379/0")
    s = Settings()
    assert (s.port, s.minimax_base_url, s.redis_url) == (9001, "https://api.minimaxi.com", "redis://r:6379/0")


def test_secrets_never_reach_repr_or_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("ATTUNE_ADMIN_KEY", "super-secret-admin-key")
    monkeypatch.setenv("MINIMAX_API_KEY", "mm-secret-upstream-key")
    monkeypatch.setenv("ATTUNE_REDIS_URL", "redis://attune:redis-secret-pw@r:6379/0")  # was shown whole
    s = Settings()
    with caplog.at_level(logging.INFO):
        logging.getLogger("attune.test").info("settings: %s %r %s", s, s, s.masked())
    text = caplog.text + repr(s) + str(s.masked())
    assert "super-secret-admin-key" not in text and "mm-secret-upstream-key" not in text
    assert "redis-secret-pw" not in text and s.masked()["redis_url"] == "redis://attune:***@r:6379/0"
    assert s.redis_url == "redis://attune:redis-secret-pw@r:6379/0"
    assert s.admin_key is not None and s.admin_key.get_secret_value() == "super-secret-admin-key"


def test_the_pacing_measured_from_text_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().pacing_from_text is True
    monkeypatch.setenv("ATTUNE_PACING_FROM_TEXT", "false")
    assert Settings().pacing_from_text is False


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:ab/cd+ef==@h:6379/0", "redis://:***@h:6379/0"),  # a generated password with '/', unencoded
    ("redis://u:p#w@h:6379", "redis://u:***@h:6379"),
    ("redis://u:p?w@h", "redis://u:***@h"),
    ("rediss://u:a@b@h:1/2", "rediss://u:***@h:1/2"),
    ("redis://secret@h", "redis://***@h"),
    ("redis://h:6379/0?password=a#b@c&db=1", "redis://h:6379/0?password=***&db=1"),
    ("unix:///run/redis.sock?db=0&password=zz", "unix:///run/redis.sock?db=0&password=***"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_redact_url_hides_every_password_shape(url: str, shown: str) -> None:
    """urlsplit ends the host part at the first '/', '?' or '#', so it showed such passwords whole or in part."""
    assert redact_url(url) == shown


@pytest.mark.parametrize(("name", "value", "said"), [
    ("ATTUNE_PARTITIONS", "abc", "ATTUNE_PARTITIONS='abc': input should be a valid integer"),
    ("ATTUNE_PORT", "http", "e.g. ATTUNE_PORT=8000"),
    ("ATTUNE_UPSTREAM_TIMEOUT", "sixty",
     "ATTUNE_UPSTREAM_TIMEOUT='sixty': not JSON; e.g. ATTUNE_UPSTREAM_TIMEOUT='{"),
    ("ATTUNE_UPSTREAM_TIMEOUT", '{"first_byte":"x"}',
     "first_byte: input should be a valid number, unable to parse string as a number; "
     "e.g. ATTUNE_UPSTREAM_TIMEOUT='{\"first_byte\": 60.0}'"),
    ("ATTUNE_UPSTREAM_TIMEOUT", '{"firstbyte": 60}', "unknown key 'firstbyte' (did you mean 'first_byte'?"),
    ("ATTUNE_UPSTREAM_RETRY", '{"tries": 2}', "unknown key 'tries' (known: attempts, backoff, max_backoff)"),
    ("ATTUNE_REDIS_URL", "http://cache:6379", "ATTUNE_REDIS_URL='http://cache:6379': not a Redis URL: it starts with"),
    # A password holding '/' reads as a port to redis-py: caught here, and the password never shown.
    ("ATTUNE_REDIS_URL", "redis://:s3cr/etPass@10.0.0.5:6390/0",
     "ATTUNE_REDIS_URL='redis://:***@10.0.0.5:6390/0': not a Redis URL: its host, port or database cannot"),
])
def test_a_bad_variable_is_one_line_naming_it_its_problem_and_a_good_value(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as caught:
        get_settings()
    get_settings.cache_clear()
    [line] = caught.value.problems
    assert said in line and "e.g. " in line and "s3cr" not in line, line


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTUNE_PARTITIONS", "0")
    monkeypatch.setenv("ATTUNE_UPSTREAM_TIMEOUT", "sixty")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as caught:
        get_settings()
    get_settings.cache_clear()
    named = [p.split("=")[0] for p in caught.value.problems]
    assert named == ["ATTUNE_UPSTREAM_TIMEOUT", "ATTUNE_PARTITIONS"]
