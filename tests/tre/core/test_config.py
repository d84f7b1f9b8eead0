import re
import runpy
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


KMS = {"TRE_KEY_PROVIDER": "aws-kms", "TRE_KMS_KEY_ID": "alias/tre", "TRE_KEY_DEPLOYMENT": "tre-north"}
HSM = {"TRE_KEY_PROVIDER": "pkcs11", "TRE_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
       "TRE_PKCS11_TOKEN_LABEL": "tre", "TRE_PKCS11_KEY_LABEL": "tre-master", "TRE_PKCS11_PIN_FILE": "/run/pin",
       "TRE_KEY_DEPLOYMENT": "tre-north"}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"TRE_KEY_PROVIDER": "vault"}, "TRE_KEY_PROVIDER must be empty or one of file, env, aws-kms, pkcs11"),
        ({**KMS, "TRE_KMS_KEY_ID": ""}, "TRE_KEY_PROVIDER=aws-kms needs TRE_KMS_KEY_ID"),
        ({**KMS, "TRE_KEY_DEPLOYMENT": ""}, "TRE_KEY_PROVIDER=aws-kms needs TRE_KEY_DEPLOYMENT"),
        ({"TRE_KMS_KEY_ID": "alias/tre"}, "TRE_KMS_KEY_ID is set but TRE_KEY_PROVIDER is empty"),
        ({**KMS, "TRE_PKCS11_MODULE": "/lib.so"}, "TRE_PKCS11_MODULE is set but TRE_KEY_PROVIDER is aws-kms"),
        ({**HSM, "TRE_KEY_PROVIDER": "file"}, "TRE_PKCS11_MODULE is set but TRE_KEY_PROVIDER is file"),
        ({**HSM, "TRE_PKCS11_KEY_LABEL": ""}, "TRE_KEY_PROVIDER=pkcs11 needs TRE_PKCS11_KEY_LABEL"),
        ({**HSM, "TRE_PKCS11_PIN": "1234"}, "exactly one of TRE_PKCS11_PIN and TRE_PKCS11_PIN_FILE"),
        ({**HSM, "TRE_PKCS11_PIN_FILE": ""}, "exactly one of TRE_PKCS11_PIN and TRE_PKCS11_PIN_FILE"),
        ({"TRE_KEY_DEPLOYMENT": "tre-north"}, "TRE_KEY_DEPLOYMENT is only for TRE_KEY_PROVIDER=aws-kms or pkcs11"),
    ],
)
def test_key_provider_settings_set_by_halves_or_crossed_are_refused_naming_the_variable(
    tmp_path: Path, environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        Settings.from_env({"TRE_INSTANCE_PATH": str(tmp_path), **environ})


def test_key_service_settings_are_accepted_whole_and_the_pin_is_kept_out_of_the_repr(tmp_path: Path) -> None:
    kms = Settings.from_env({"TRE_INSTANCE_PATH": str(tmp_path), **KMS, "TRE_KEY_PROVIDER": "AWS-KMS"})
    hsm = Settings.from_env({"TRE_INSTANCE_PATH": str(tmp_path), **HSM, "TRE_PKCS11_PIN_FILE": "",
                             "TRE_PKCS11_PIN": "secret-pin-4711"})

    assert kms.key_provider == "aws-kms" and kms.kms_key_id == "alias/tre"
    assert hsm.key_provider == "pkcs11" and hsm.pkcs11_pin == "secret-pin-4711"
    assert "secret-pin-4711" not in repr(hsm)


@pytest.mark.parametrize("poll_ms", ["-1", "5", "60001"])
def test_a_broker_poll_interval_that_would_spin_or_stall_workers_is_refused(tmp_path: Path, poll_ms: str) -> None:
    with pytest.raises(ConfigError, match="TRE_BROKER_POLL_MS must be 0 .automatic. or between 10 and 60000"):
        Settings.from_env({"TRE_BROKER_POLL_MS": poll_ms}, instance_path=tmp_path)


def test_the_embedded_broker_wakes_its_workers_and_polls_as_kombu_does_only_without_wakeups(tmp_path: Path) -> None:
    default = Settings.from_env({}, instance_path=tmp_path)
    assert (default.broker_wakeups, default.broker_poll_ms) == (True, 2000)
    off = Settings.from_env({"TRE_BROKER_WAKEUPS": "0"}, instance_path=tmp_path)
    assert (off.broker_wakeups, off.broker_poll_ms) == (False, 1000)
    chosen = Settings.from_env({"TRE_BROKER_POLL_MS": "250"}, instance_path=tmp_path)
    assert chosen.broker_poll_ms == 250


def test_an_unset_landing_folder_is_the_instances_own_only_in_a_demo_environment_once_it_exists(
    tmp_path: Path,
) -> None:
    before = Settings.from_env({}, instance_path=tmp_path).landing_dir
    (tmp_path / "landing").mkdir()

    demo = {env: Settings.from_env({"TRE_ENVIRONMENT": env}, instance_path=tmp_path).landing_dir
            for env in ("embedded", "development", "test")}
    production = Settings.from_env({"TRE_ENVIRONMENT": "production"}, instance_path=tmp_path).landing_dir
    staging = Settings.from_env({"TRE_ENVIRONMENT": "staging"}, instance_path=tmp_path).landing_dir

    assert before is None
    assert set(demo.values()) == {tmp_path / "landing"}
    assert production is None and staging is None


def test_a_set_landing_folder_wins_and_a_linked_instance_landing_is_not_taken(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "landing").symlink_to(elsewhere)

    linked = Settings.from_env({}, instance_path=instance).landing_dir
    named = Settings.from_env({"TRE_LANDING_DIR": str(tmp_path / "named")}, instance_path=instance).landing_dir

    assert linked is None
    assert named == tmp_path / "named"


@pytest.mark.parametrize("size", ["0", "-3", "101"])
def test_a_database_pool_size_out_of_range_is_refused(tmp_path: Path, size: str) -> None:
    with pytest.raises(ConfigError, match="TRE_DATABASE_POOL_SIZE must be between 1 and 100"):
        Settings.from_env({"TRE_DATABASE_POOL_SIZE": size}, instance_path=tmp_path)


def test_the_database_pool_keeps_every_web_thread_its_connection_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GUNICORN_THREADS", raising=False)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    # Set, the configuration leaves it alone; unset, it would name a folder of its own in this process's
    # environment for good, and turn every later test's Prometheus client to multiprocess mode.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    gunicorn = runpy.run_path(str(Path(__file__).parents[3] / "infra" / "production" / "gunicorn.conf.py"))
    assert Settings.from_env({}, instance_path=tmp_path).database_pool_size >= gunicorn["threads"]
