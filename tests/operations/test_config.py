"""Settings: flag > MOORAGE_* environment > TOML file > default; every mistake names its key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moorage.config import ConfigError, Settings, load_settings


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "moorage.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source() -> None:
    settings = load_settings(None, None, environ={})
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:5000"
    assert (settings.host, settings.port) == ("127.0.0.1", 5000)
    assert settings.workers == 1
    assert settings.sqlite_synchronous == "FULL"
    assert settings.resolved_database_url.endswith(str(Path("moorage-data") / "moorage.db"))


@pytest.mark.parametrize(
    ("use_file", "use_env", "use_flag", "expected"),
    [
        (False, False, False, 1),
        (True, False, False, 3),
        (True, True, False, 5),
        (False, True, False, 5),
        (True, True, True, 7),
        (True, False, True, 7),
    ],
)
def test_precedence_flag_over_env_over_file_over_default(
    tmp_path: Path, use_file: bool, use_env: bool, use_flag: bool, expected: int
) -> None:
    config = write_toml(tmp_path, "workers = 3\n") if use_file else None
    environ = {"MOORAGE_WORKERS": "5"} if use_env else {}
    flags = {"workers": 7} if use_flag else {}

    assert load_settings(config, flags, environ=environ).workers == expected


def test_each_source_contributes_its_own_keys(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        'listen = "127.0.0.1:6000"\nlog_level = "WARNING"\nmax_page_size = 50\n'
        'data_dir = "/srv/from-file"\n',
    )
    environ = {"MOORAGE_LOG_LEVEL": "DEBUG", "MOORAGE_DATA_DIR": "/srv/from-env"}
    flags = {"data_dir": Path("/srv/from-flag"), "listen": None, "workers": None}

    settings = load_settings(config, flags, environ=environ)

    assert settings.listen == "127.0.0.1:6000"  # file only; a None flag means "not given"
    assert settings.max_page_size == 50  # file only
    assert settings.log_level == "DEBUG"  # env beats file
    assert settings.data_dir == Path("/srv/from-flag")  # flag beats env and file
    assert settings.resolved_database_url == "sqlite+pysqlite:////srv/from-flag/moorage.db"


def test_environment_strings_are_converted() -> None:
    settings = load_settings(
        None,
        None,
        environ={
            "MOORAGE_ACCESS_LOG": "true",
            "MOORAGE_SHUTDOWN_TIMEOUT_SECONDS": "2.5",
            "MOORAGE_UPLOAD_EXPIRY_SECONDS": "60",
            "MOORAGE_LISTEN": "[::1]:5001",
        },
    )
    assert settings.access_log is True
    assert settings.shutdown_timeout_seconds == 2.5
    assert settings.upload_expiry_seconds == 60
    assert (settings.host, settings.port) == ("::1", 5001)


def test_log_format_is_text_unless_json_is_asked_for(tmp_path: Path) -> None:
    assert Settings().log_format == "text"
    assert load_settings(None, None, environ={"MOORAGE_LOG_FORMAT": "json"}).log_format == "json"
    config = write_toml(tmp_path, 'log_format = "json"\n')
    assert load_settings(config, {"log_format": "text"}, environ={}).log_format == "text"


def test_unrelated_environment_is_ignored() -> None:
    environ = {"PATH": "/bin", "MOORAGE_CONFIG": "/etc/moorage.toml", "MOORAGEX": "1"}
    assert load_settings(None, None, environ=environ) == Settings()


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "workers = 2\nlisten_port = 5000\n")
    with pytest.raises(ConfigError, match="listen_port"):
        load_settings(config, None, environ={})


def test_unknown_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="MOORAGE_WORKER_COUNT"):
        load_settings(None, None, environ={"MOORAGE_WORKER_COUNT": "2"})


@pytest.mark.parametrize(
    ("source", "key", "value"),
    [
        ("env", "workers", "0"),
        ("env", "workers", "many"),
        ("env", "listen", "localhost"),
        ("env", "listen", "127.0.0.1:65536"),
        ("env", "log_level", "LOUD"),
        ("env", "log_format", "xml"),
        ("file", "log_format", "JSON"),
        ("env", "sqlite_synchronous", "OFF"),
        ("env", "access_log", "sometimes"),
        ("file", "max_manifest_bytes", 10),
        ("file", "max_page_size", 0),
        ("file", "upload_expiry_seconds", -1),
        ("file", "shutdown_timeout_seconds", "soon"),
        ("flag", "workers", 65),
        ("flag", "listen", "127.0.0.1:"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(
    tmp_path: Path, source: str, key: str, value: Any
) -> None:
    config = None
    environ: dict[str, str] = {}
    flags: dict[str, Any] = {}
    if source == "env":
        environ[f"MOORAGE_{key.upper()}"] = value
    elif source == "file":
        config = write_toml(tmp_path, f"{key} = {value!r}\n".replace("'", '"'))
    else:
        flags[key] = value

    with pytest.raises(ConfigError, match=key):
        load_settings(config, flags, environ=environ)


def test_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "workers = [unclosed\n")
    with pytest.raises(ConfigError, match=r"moorage\.toml"):
        load_settings(config, None, environ={})


# -- the command line


def moorage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "moorage", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def test_serve_with_an_unknown_config_key_exits_naming_it(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'listen = "127.0.0.1:0"\nworkerz = 2\n')
    result = moorage("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode != 0
    assert "workerz" in result.stderr
    assert not (tmp_path / "data").exists()  # it failed before touching anything


def test_serve_with_an_invalid_value_exits_naming_it(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'sqlite_synchronous = "OFF"\n')
    result = moorage("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode != 0
    assert "sqlite_synchronous" in result.stderr


def test_serve_with_an_unknown_environment_variable_exits_naming_it(tmp_path: Path) -> None:
    result = moorage(
        "serve", "--data-dir", str(tmp_path / "data"), env={"MOORAGE_DATADIR": "/tmp/x"}
    )
    assert result.returncode != 0
    assert "MOORAGE_DATADIR" in result.stderr


def test_cli_precedence_decides_where_data_goes(tmp_path: Path) -> None:
    """`migrate` creates the database wherever the winning data_dir setting points."""
    from_file, from_env, from_flag = (tmp_path / name for name in ("file", "env", "flag"))
    config = write_toml(tmp_path, f'data_dir = "{from_file}"\n')

    assert moorage("migrate", env={"MOORAGE_CONFIG": str(config)}).returncode == 0
    assert (from_file / "moorage.db").exists()

    env = {"MOORAGE_CONFIG": str(config), "MOORAGE_DATA_DIR": str(from_env)}
    assert moorage("migrate", env=env).returncode == 0
    assert (from_env / "moorage.db").exists()

    result = moorage("migrate", "--data-dir", str(from_flag), env=env)
    assert result.returncode == 0, result.stderr
    assert "schema is up to date" in result.stdout
    assert (from_flag / "moorage.db").exists()

    fsck = moorage("fsck", "--data-dir", str(from_flag))
    assert fsck.returncode == 0
    assert "0 problem(s) found" in fsck.stdout
