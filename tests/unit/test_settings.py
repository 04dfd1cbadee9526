from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from registry.cli import uvicorn_config
from registry.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MANIFEST", "WEIGHTS_DIR", "ADMIN_TOKEN", "HOST", "PORT", "TORCH_THREADS"):
        monkeypatch.delenv(f"REGISTRY_{name}", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_safe() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.admin_token is None
    assert settings.strict_startup is True
    assert settings.fast_path is True
    assert settings.access_log is False
    assert settings.weights_root == (Path("models.yaml").parent / "weights").resolve()


def test_slow_clients_are_bounded_by_default() -> None:
    """A body deadline inside the drain; connections and keep-alive bounded in uvicorn."""
    settings = Settings()
    assert settings.body_timeout_s == 10
    assert settings.body_timeout_s < settings.drain_timeout_s
    config = uvicorn_config(_app, settings)
    assert config.limit_concurrency == settings.max_connections == 512
    assert config.timeout_keep_alive == settings.keep_alive_timeout_s == 5
    assert config.timeout_graceful_shutdown == 30


def test_slow_client_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_BODY_TIMEOUT_S", "2.5")
    monkeypatch.setenv("REGISTRY_MAX_CONNECTIONS", "64")
    monkeypatch.setenv("REGISTRY_KEEP_ALIVE_TIMEOUT_S", "75")
    config = uvicorn_config(_app, Settings())
    assert Settings().body_timeout_s == 2.5
    assert (config.limit_concurrency, config.timeout_keep_alive) == (64, 75)


@pytest.mark.parametrize(
    ("name", "value"),
    [("BODY_TIMEOUT_S", "0"), ("MAX_CONNECTIONS", "0"), ("KEEP_ALIVE_TIMEOUT_S", "0")],
)
def test_slow_client_limits_cannot_be_turned_off_by_zero(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"REGISTRY_{name}", value)
    with pytest.raises(ValidationError):
        Settings()


async def _app(_scope: Scope, _receive: Receive, _send: Send) -> None:
    raise AssertionError("never called")


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_admin_token_leaves_admin_off(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("REGISTRY_ADMIN_TOKEN", token)
    assert Settings().admin_token is None


@pytest.mark.parametrize("endpoint", ["", "   "])
def test_an_empty_otel_endpoint_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.setenv("REGISTRY_OTEL_ENDPOINT", endpoint)
    assert Settings().otel_endpoint is None


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REGISTRY_PORT=9100\nREGISTRY_ADMIN_TOKEN=s3cret\n")
    monkeypatch.setenv("REGISTRY_MANIFEST", "/srv/models.yaml")
    settings = Settings()
    assert settings.port == 9100
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.weights_root == Path("/srv/weights")


def test_explicit_values_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_PORT", "9100")
    assert Settings(port=9200).port == 9200
