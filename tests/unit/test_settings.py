from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_admin_token_leaves_admin_off(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("REGISTRY_ADMIN_TOKEN", token)
    assert Settings().admin_token is None


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
