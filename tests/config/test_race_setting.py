"""``[service] race_after_s``: "auto", seconds, or 0/false for off; anything else is one line
naming the key and what it may be."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagegate.backends.registry import load_settings

from tests.config.test_load import A1111, config_error
from tests.conftest import write_config


@pytest.mark.parametrize(("written", "read"), [
    (None, "auto"), ('"auto"', "auto"), ("0.25", 0.25), ("2", 2.0), ("0", 0.0), ("false", 0.0),
])
def test_race_after_s_is_auto_seconds_or_off(written: str | None, read: object, tmp_path: Path) -> None:
    service = "" if written is None else f"[service]\nrace_after_s = {written}\n"
    settings = load_settings(write_config(tmp_path, service + A1111), environ={}, dotenv=False)
    assert settings.service.race_after_s == read


@pytest.mark.parametrize("written", ['"soon"', "true", "-0.5", "601", '"0.5"', "nan"])
def test_anything_else_names_the_key_and_what_it_may_be(written: str, tmp_path: Path) -> None:
    msg = config_error(tmp_path, f"[service]\nrace_after_s = {written}\n" + A1111)
    assert "key 'race_after_s'" in msg
    assert 'must be "auto", seconds from 0 (off) to 600, or false' in msg
