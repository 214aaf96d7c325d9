"""``[service]`` webhook keys: hosts need a signing secret, the secret comes from the
environment (never the file), and a missing variable is a config error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagegate.backends.registry import load_settings
from imagegate.config import SERVICE_SECRETS
from imagegate.errors import ConfigError

from tests.conftest import write_config

BACKEND = '[[backend]]\nname = "a"\nkind = "a1111"\n'


def test_the_secret_is_read_from_the_named_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[service]\nwebhook_hosts = ["h"]\nwebhook_secret_env = "HOOK"\n' + BACKEND)
    settings = load_settings(path, environ={"HOOK": "s3cret-value"}, dotenv=False)
    assert settings.secret(SERVICE_SECRETS, "webhook_secret") == "s3cret-value"
    assert "s3cret-value" not in repr(settings)


def test_hosts_without_a_secret_variable_are_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[service]\nwebhook_hosts = ["h"]\n' + BACKEND)
    with pytest.raises(ConfigError, match="webhook_secret_env"):
        load_settings(path, environ={}, dotenv=False)


def test_an_unset_secret_variable_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[service]\nwebhook_hosts = ["h"]\nwebhook_secret_env = "HOOK"\n' + BACKEND)
    with pytest.raises(ConfigError, match="'webhook_secret_env'.*HOOK"):
        load_settings(path, environ={}, dotenv=False)
