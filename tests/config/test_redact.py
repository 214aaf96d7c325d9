"""The one redactor: every secret masked in every form a server has been seen to echo."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

from imagegate.config.redact import MASK, Redactor
from imagegate.errors import AuthFailed

KEY = "sk-live+AbC/123=xyz-0042"
USER, PASSWORD = "webui", "p@ss word+/="


def test_every_form_of_a_secret_is_masked() -> None:
    redact = Redactor.for_secrets({"api_key": KEY, "username": USER, "password": PASSWORD})
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    lower_hex = re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(KEY, safe=""))
    forms = [KEY, f"Bearer {KEY}", quote(KEY, safe=""), lower_hex, quote_plus(KEY),
             json.dumps(KEY)[1:-1], f"Basic {basic}", PASSWORD, quote(PASSWORD, safe="")]
    for form in forms:
        masked = redact.text(f"the server said: {form} is wrong")
        assert KEY not in masked and PASSWORD not in masked and basic not in masked, form
        assert MASK in masked
    assert redact.bytes(f'{{"key": "{KEY}"}}'.encode()) == b'{"key": "***"}'


def test_a_secret_cut_short_by_a_length_limit_is_masked_too() -> None:
    redact = Redactor([KEY])
    assert redact.text(f"refused: {KEY[:14]}...") == "refused: ***..."
    assert redact.text(f"refused: {KEY[:10]}") == "refused: ***"
    assert redact.text("refused: sk-l...") == "refused: sk-l..."  # too little of it to matter


def test_short_values_are_not_secrets_and_documents_are_masked_throughout() -> None:
    redact = Redactor.for_settings({"a": {"api_key": KEY}, "b": {"username": "ai", "password": "pw"}},
                                   extra=["sk-server-key-1"])
    doc = {"error": [f"{KEY} and sk-server-key-1"], "nested": {"ai": "pw stays"}}
    assert redact.value(doc) == {"error": ["*** and ***"], "nested": {"ai": "pw stays"}}
    error = redact.error(AuthFailed(f"Incorrect API key provided: {KEY}", backend="a"))
    assert str(error) == "Incorrect API key provided: ***"
    assert not Redactor() and Redactor().text("anything") == "anything"
