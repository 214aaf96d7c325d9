"""Config: the TOML file, the environment and .env; every mistake is one clear message that
names the file, the table and the key. TLS trust (ca_bundle, SSL_CERT_FILE) is tested against
an HTTPS emulator with a throwaway CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from imagegate.backends.a1111 import A1111Settings
from imagegate.backends.registry import load_settings
from imagegate.config import Settings
from imagegate.errors import ConfigError, ConnectFailed
from imagegate.models import Deadline, ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator
from structlog.testing import capture_logs

from tests.conftest import make_settings, write_config

A1111 = '[[backend]]\nname = "local"\nkind = "a1111"\n'


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ or {}, dotenv=False)
    message = str(caught.value)
    assert message.startswith(str(path)), message  # every message names the file first
    assert "\n" not in message and "Traceback" not in message
    return message


# --- mistakes, each one clear message --------------------------------------------------------


def test_unknown_kind_names_table_key_and_allowed_kinds(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[[backend]]\nname = "mj"\nkind = "midjourney"\n')
    assert "[[backend]] #1 (name = 'mj')" in msg
    assert "key 'kind'" in msg and "'midjourney'" in msg
    assert "a1111" in msg and "hf_space" in msg


def test_duplicate_name_names_both_tables(tmp_path: Path) -> None:
    msg = config_error(tmp_path, A1111 + A1111.replace("local", "other") + A1111)
    assert "[[backend]] #3" in msg and "[[backend]] #1" in msg
    assert "key 'name'" in msg and "'local'" in msg


@pytest.mark.parametrize("url", ["ftp://example.com", "localhost:7860", "http://", "not a url"])
def test_bad_url_names_the_key_and_the_value(tmp_path: Path, url: str) -> None:
    msg = config_error(tmp_path, A1111 + f'base_url = "{url}"\n')
    assert "[[backend]] #1 (name = 'local')" in msg
    assert "key 'base_url'" in msg and "http:// or https://" in msg
    assert "Value error" not in msg  # pydantic's prefix is noise to a user


def test_unknown_key_in_a_backend_table(tmp_path: Path) -> None:
    msg = config_error(tmp_path, A1111 + 'colour = "red"\n')
    assert "[[backend]] #1 (name = 'local')" in msg and "key 'colour': unknown key" in msg


def test_unknown_key_in_the_service_table(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "[service]\ndeadlin_s = 30\n")
    assert "[service]" in msg and "key 'deadlin_s': unknown key" in msg


def test_out_of_range_value_names_the_key(tmp_path: Path) -> None:
    msg = config_error(tmp_path, A1111 + "connect_timeout_s = 0\n")
    assert "key 'connect_timeout_s'" in msg and "greater than 0" in msg


def test_unknown_top_level_table(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "[backends]\nx = 1\n")
    assert "'backends'" in msg


def test_backend_written_as_a_single_table_is_explained(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[backend]\nname = "local"\nkind = "a1111"\n')
    assert "[[backend]]" in msg


@pytest.mark.parametrize("key", ["api_key", "token", "password"])
def test_a_secret_in_the_file_is_refused_without_echoing_it(tmp_path: Path, key: str) -> None:
    msg = config_error(
        tmp_path, f'[[backend]]\nname = "nov"\nkind = "novita"\n{key} = "sk-live-abc123"\n'
    )
    assert f"key {key!r}" in msg and "[[backend]] #1 (name = 'nov')" in msg
    assert "environment" in msg
    assert "sk-live-abc123" not in msg


def test_missing_required_env_var_is_named(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[[backend]]\nname = "nov"\nkind = "novita"\n')
    assert "'nov'" in msg and "key 'api_key_env'" in msg and "NOVITA_API_KEY" in msg


def test_missing_a1111_password_env_var_is_named(tmp_path: Path) -> None:
    text = A1111 + 'username_env = "SD_USER"\npassword_env = "SD_PASS"\n'
    msg = config_error(tmp_path, text, environ={"SD_USER": "artist"})
    assert "key 'password_env'" in msg and "SD_PASS" in msg


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[[backend]\nname = "local"\n')
    assert "not valid TOML" in msg and "line 1" in msg


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found") as caught:
        load_settings(missing, environ={}, dotenv=False)
    assert str(missing) in str(caught.value)


# --- what a valid config gives ---------------------------------------------------------------


def test_full_a1111_table_from_the_issue_is_read(tmp_path: Path) -> None:
    text = """
[service]
deadline_s = 120
output_dir = "outputs"

[[backend]]
name = "local-sd"
kind = "a1111"
base_url = "http://127.0.0.1:7860/"
priority = 0
connect_timeout_s = 5
read_timeout_s = 300
model = "sd_xl_base_1.0"
username_env = "A1111_USER"
password_env = "A1111_PASSWORD"
"""
    path = write_config(tmp_path, text)
    environ = {"A1111_USER": "artist", "A1111_PASSWORD": "pw-secret"}
    settings = load_settings(path, environ=environ, dotenv=False)
    (backend,) = settings.backends
    assert isinstance(backend, A1111Settings)
    assert backend.base_url == "http://127.0.0.1:7860"  # trailing slash dropped
    assert (backend.timeouts.connect, backend.timeouts.read) == (5, 300)
    assert backend.model == "sd_xl_base_1.0"
    assert settings.secret("local-sd", "username") == "artist"
    assert settings.secret("local-sd", "password") == "pw-secret"
    assert "pw-secret" not in repr(settings)
    assert settings.service.deadline_s == 120 and settings.source == str(path)


def test_backends_are_ordered_by_priority_and_disabled_ones_dropped(tmp_path: Path) -> None:
    settings = make_settings(
        [
            {"name": "late", "kind": "a1111", "priority": 5},
            {"name": "off", "kind": "a1111", "priority": 0, "enabled": False},
            {"name": "early", "kind": "a1111", "priority": 1},
        ],
        tmp_path=tmp_path,
    )
    assert [b.name for b in settings.backends] == ["early", "late"]


def test_a1111_url_alone_configures_one_backend() -> None:
    settings = load_settings(None, environ={"A1111_URL": "http://127.0.0.1:7861"}, dotenv=False)
    (backend,) = settings.backends
    assert (backend.kind, backend.base_url) == ("a1111", "http://127.0.0.1:7861")
    assert settings.source == "environment"


@pytest.mark.parametrize("var", ["A1111_URL", "OPENAI_BASE_URL"])
def test_bad_url_in_the_environment_names_the_variable(var: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={var: "127.0.0.1:7860"}, dotenv=False)
    assert str(caught.value).startswith(f"environment variable {var}: must be an http")
    assert "[[backend]]" not in str(caught.value) and "127.0.0.1:7860" in str(caught.value)


# --- a missing key disables one backend; the others serve --------------------------------------


def test_a_backend_whose_key_variable_is_missing_is_disabled_with_one_warning(tmp_path: Path) -> None:
    path = write_config(tmp_path, A1111 + '\n[[backend]]\nname = "nov"\nkind = "novita"\n')
    with capture_logs() as logs:
        settings = load_settings(path, environ={}, dotenv=False)
    assert [b.name for b in settings.backends] == ["local"]
    (warning,) = [e for e in logs if e["event"] == "backend_disabled"]
    assert warning["log_level"] == "warning" and warning["backend"] == "nov"
    assert warning["message"].startswith(f"{path}: backend 'nov' (novita) is disabled")
    assert "NOVITA_API_KEY" in warning["message"] and "\n" not in warning["message"]
    assert "NOVITA_API_KEY" in settings.disabled["nov"]


def test_diagnose_keeps_a_backend_whose_key_is_missing_to_report_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, A1111 + '\n[[backend]]\nname = "nov"\nkind = "novita"\n')
    settings = load_settings(path, environ={}, dotenv=False, require_secrets=False)
    assert [b.name for b in settings.backends] == ["local", "nov"] and not settings.disabled


def test_openai_base_url_without_a_key_warns_at_start_and_is_used_keyless() -> None:
    with capture_logs() as logs:
        settings = load_settings(None, environ={"OPENAI_BASE_URL": "http://10.0.0.5:8000/v1"}, dotenv=False)
    (backend,) = settings.backends
    assert backend.kind == "openai" and settings.secret("openai", "api_key") is None
    (warning,) = [e for e in logs if e["event"] == "openai_key_missing"]
    assert "OPENAI_API_KEY is not" in warning["message"]


def test_openai_s_own_host_without_a_key_is_disabled_not_sent_keyless() -> None:
    env = {"OPENAI_BASE_URL": "https://api.openai.com/v1", "A1111_URL": "http://127.0.0.1:7860"}
    settings = load_settings(None, environ=env, dotenv=False)
    assert [b.name for b in settings.backends] == ["a1111"]
    assert "OPENAI_API_KEY" in settings.disabled["openai"]
    with pytest.raises(ConfigError, match="no backend is usable: .*OPENAI_API_KEY"):
        load_settings(None, environ={"OPENAI_BASE_URL": "https://api.openai.com"}, dotenv=False)


def test_no_config_at_all_says_so_and_names_the_variables() -> None:
    with capture_logs() as logs:
        settings = load_settings(None, environ={}, dotenv=False)
    assert {b.kind for b in settings.backends} == {"hf_space"}
    (notice,) = [e for e in logs if e["event"] == "no_config_found"]
    assert notice["log_level"] == "warning"
    assert "public Hugging Face Spaces" in notice["message"]
    assert "A1111_URL" in notice["message"] and "--config" in notice["message"]
    with capture_logs() as logs:
        load_settings(None, environ={"A1111_URL": "http://127.0.0.1:1"}, dotenv=False)
    assert not [e for e in logs if e["event"] == "no_config_found"]


# --- ca_bundle and SSL_CERT_FILE are checked at load, with one line each ------------------------


def test_a_relative_ca_bundle_is_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, local_ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "ca.pem").write_bytes(local_ca.ca_file.read_bytes())
    monkeypatch.chdir(tmp_path)  # ./ca.pem does not exist here
    path = write_config(folder, A1111 + 'ca_bundle = "ca.pem"\n')
    (backend,) = load_settings(path, environ={}, dotenv=False).backends
    assert backend.ca_bundle == folder / "ca.pem"


@pytest.mark.parametrize(
    ("content", "says"), [(None, "file not found"), (b"not a certificate\n", "not a PEM certificate")]
)
def test_a_missing_or_non_pem_ca_bundle_is_one_line_naming_file_table_and_key(
    tmp_path: Path, content: bytes | None, says: str
) -> None:
    if content is not None:
        (tmp_path / "ca.pem").write_bytes(content)
    message = config_error(tmp_path, A1111 + 'ca_bundle = "ca.pem"\n')
    assert "[[backend]] 'local': key 'ca_bundle'" in message and says in message
    assert str(tmp_path / "ca.pem") in message


@pytest.mark.parametrize(
    ("content", "says"), [(None, "file not found"), (b"\x00\x01junk", "not a PEM certificate")]
)
def test_a_missing_or_non_pem_ssl_cert_file_names_the_variable(
    tmp_path: Path, content: bytes | None, says: str
) -> None:
    bundle = tmp_path / "corp.pem"
    if content is not None:
        bundle.write_bytes(content)
    env = {"SSL_CERT_FILE": str(bundle), "A1111_URL": "http://127.0.0.1:7860"}
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ=env, dotenv=False)
    message = str(caught.value)
    assert message.startswith("environment variable SSL_CERT_FILE: ") and says in message
    assert "\n" not in message


def test_imagegate_config_env_var_is_honoured(tmp_path: Path) -> None:
    path = write_config(tmp_path, A1111.replace("local", "from-file"))
    environ = {"IMAGEGATE_CONFIG": str(path), "A1111_URL": "http://127.0.0.1:9"}
    settings = load_settings(None, environ=environ, dotenv=False)
    assert [b.name for b in settings.backends] == ["from-file"]
    assert settings.source == str(path)


def test_explicit_path_wins_over_imagegate_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, A1111)
    settings = load_settings(
        path, environ={"IMAGEGATE_CONFIG": str(tmp_path / "other.toml")}, dotenv=False
    )
    assert settings.source == str(path)


def test_dotenv_supplies_secrets_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SD_USER=from-dotenv\nSD_PASS=dotenv-pass\n")
    monkeypatch.setenv("SD_USER", "from-environment")
    monkeypatch.delenv("SD_PASS", raising=False)
    path = write_config(tmp_path, A1111 + 'username_env = "SD_USER"\npassword_env = "SD_PASS"\n')
    settings = load_settings(path)
    assert settings.secret("local", "username") == "from-environment"
    assert settings.secret("local", "password") == "dotenv-pass"


# --- TLS trust: ca_bundle and SSL_CERT_FILE ---------------------------------------------------


@pytest.fixture
async def https_a1111_url(local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=Knobs()), tls=local_ca) as url:
        yield url


async def _generate_over_https(settings: Settings) -> int:
    async with ImageService(settings) as service:
        backend = service.backend("tls")
        request = ImageRequest(prompt="a lighthouse", width=64, height=64, seed=3)
        images = await backend.generate(request, deadline=Deadline.after(5))
    return len(images)


async def test_https_backend_trusts_its_ca_bundle(
    https_a1111_url: str, local_ca: LocalCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    table = {"name": "tls", "kind": "a1111", "base_url": https_a1111_url, "ca_bundle": local_ca.ca_file}
    assert await _generate_over_https(make_settings([table], tmp_path=tmp_path)) == 1


async def test_https_backend_trusts_ssl_cert_file(
    https_a1111_url: str, local_ca: LocalCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(local_ca.ca_file))
    table = {"name": "tls", "kind": "a1111", "base_url": https_a1111_url}
    assert await _generate_over_https(make_settings([table], tmp_path=tmp_path)) == 1


async def test_https_backend_without_the_ca_fails_with_a_certificate_error(
    https_a1111_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    table = {"name": "tls", "kind": "a1111", "base_url": https_a1111_url}
    with pytest.raises(ConnectFailed, match="certificate") as caught:
        await _generate_over_https(make_settings([table], tmp_path=tmp_path))
    assert caught.value.refused is False and caught.value.backend == "tls"
