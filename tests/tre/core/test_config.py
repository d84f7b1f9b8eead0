from pathlib import Path

import pytest

from tre.core.config import ConfigError, Settings


def test_settings_default_to_embedded_backends_inside_the_instance_folder(tmp_path: Path) -> None:
    settings = Settings.from_env({}, instance_path=tmp_path)

    assert settings.database_url == f"sqlite:///{tmp_path / 'tre.sqlite'}"
    assert settings.broker_url.startswith("sqla+sqlite:///")
    assert settings.is_sqlite and settings.broker_needs_no_server
    assert settings.public_url == "http://127.0.0.1:5000"


def test_settings_read_prefixed_environment_with_types(tmp_path: Path) -> None:
    env = {
        "TRE_INSTANCE_PATH": str(tmp_path),
        "TRE_PORT": "5050",
        "TRE_SESSION_COOKIE_SECURE": "yes",
        "TRE_DATABASE_URL": "postgresql+psycopg://db/tre",
    }
    settings = Settings.from_env(env)

    assert settings.port == 5050
    assert settings.session_cookie_secure is True
    assert not settings.is_sqlite
    assert settings.public_url == "http://127.0.0.1:5050"


def test_settings_malformed_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TRE_PORT must be of type int"):
        Settings.from_env({"TRE_PORT": "five thousand"})


def test_settings_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown settings: colour"):
        Settings.from_env({}, colour="blue")
