from __future__ import annotations

from pathlib import Path

import pytest

from authswitch.config import Settings, load_card_keys, parse_listen
from authswitch.errors import ConfigError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.grpc_listen == "127.0.0.1:50051"
    assert settings.embedded_postgres
    assert settings.embedded_redis


def test_reads_documented_names() -> None:
    settings = Settings.from_env(
        {
            "AUTHSWITCH_GRPC_LISTEN": "0.0.0.0:6000",
            "AUTHSWITCH_METRICS_LISTEN": "0.0.0.0:9000",
            "AUTHSWITCH_POSTGRES_DSN": "postgresql://x@db/y",
            "AUTHSWITCH_REDIS_URL": "redis://cache:6379/0",
            "AUTHSWITCH_DATA_DIR": "/var/lib/authswitch",
            "AUTHSWITCH_GROUP_COMMIT_BATCH_MAX": "64",
            "AUTHSWITCH_MIGRATE_ON_START": "false",
        }
    )
    assert settings.grpc_listen == "0.0.0.0:6000"
    assert settings.postgres_dsn == "postgresql://x@db/y"
    assert settings.data_dir == Path("/var/lib/authswitch")
    assert settings.group_commit_batch_max == 64
    assert settings.migrate_on_start is False


def test_secrets_are_not_in_repr() -> None:
    settings = Settings.from_env(
        {"AUTHSWITCH_POSTGRES_DSN": "postgresql://u:hunter2@db/y", "AUTHSWITCH_PAN_KEY_HEX": "ab"}
    )
    assert "hunter2" not in repr(settings)
    assert "ab" not in repr(settings).replace("tab", "")


@pytest.mark.parametrize(
    "env",
    [
        {"AUTHSWITCH_GRPC_LISTNE": "x"},  # misspelt names fail loudly
        {"AUTHSWITCH_GRPC_LISTEN": "no-port"},
        {"AUTHSWITCH_GROUP_COMMIT_BATCH_MAX": "0"},
        {"AUTHSWITCH_GROUP_COMMIT_BATCH_MAX": "many"},
        {"AUTHSWITCH_MIGRATE_ON_START": "perhaps"},
        {"AUTHSWITCH_LOG_FORMAT": "xml"},
        {"AUTHSWITCH_POSTGRES_PGBOUNCER": "perhaps"},
        {"AUTHSWITCH_PARTITION_MONTHS_AHEAD": "0"},
        {"AUTHSWITCH_PARTITION_RETENTION_MONTHS": "-1"},
        {"AUTHSWITCH_PARTITION_MAINTENANCE_INTERVAL_S": "-1"},
        {"AUTHSWITCH_REPORTS_POSTGRES_POOL_MAX": "0"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_postgres_in_production_settings() -> None:
    settings = Settings.from_env(
        {
            "AUTHSWITCH_POSTGRES_PGBOUNCER": "true",
            "AUTHSWITCH_REPORTS_POSTGRES_DSN": "postgresql://r:hunter3@replica/y",
            "AUTHSWITCH_PARTITION_RETENTION_MONTHS": "13",
            "AUTHSWITCH_TEST_REQUIRE_ENGINES": "1",  # the test suite's, not an unknown setting
        }
    )
    assert settings.postgres_pgbouncer is True
    assert settings.partition_retention_months == 13
    assert "hunter3" not in repr(settings)
    defaults = Settings()
    assert (defaults.postgres_pgbouncer, defaults.reports_postgres_dsn) == (False, "")
    assert defaults.partition_retention_months == 0  # kept forever unless asked


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert parse_listen("[::]:1") == ("::", 1)


def test_card_keys_from_env_and_files(tmp_path: Path) -> None:
    for name, char in (("pan", "a"), ("pin", "b"), ("cvv", "c")):
        (tmp_path / name).write_text(char * 64 + "\n")
    settings = Settings.from_env(
        {
            "AUTHSWITCH_POSTGRES_DSN": "postgresql://db/x",
            "AUTHSWITCH_PAN_KEY_FILE": str(tmp_path / "pan"),
            "AUTHSWITCH_PIN_KEY_FILE": str(tmp_path / "pin"),
            "AUTHSWITCH_CVV_KEY_FILE": str(tmp_path / "cvv"),
        }
    )
    keys, generated = load_card_keys(settings)
    assert not generated
    assert keys.pan_key == bytes.fromhex("a" * 64)


def test_external_postgres_requires_keys() -> None:
    settings = Settings.from_env({"AUTHSWITCH_POSTGRES_DSN": "postgresql://db/x"})
    with pytest.raises(ConfigError, match="required"):
        load_card_keys(settings)


def test_development_keys_persist_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"AUTHSWITCH_DATA_DIR": str(tmp_path)})
    first, generated = load_card_keys(settings)
    second, _ = load_card_keys(settings)
    assert generated
    assert first == second
    assert (tmp_path / "dev-card-keys").stat().st_mode & 0o777 == 0o600
