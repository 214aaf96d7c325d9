"""``imagegate diagnose`` against real loopback servers: emulators, a TLS black hole, a closed
port, a name under ``.invalid``; its console output, JSON schema and exit codes.

CLI runs use ``asyncio.create_subprocess_exec`` so the emulators in this test's event loop keep
serving while the command runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.registry import REGISTRY, load_settings
from imagegate.config import Settings
from imagegate.diagnose.advice import ADVICE, SYMPTOMS, troubleshooting_markdown
from imagegate.diagnose.render import ASCII, UNICODE, pick_marks, write_report
from imagegate.diagnose.report import STEP_DATA_KEYS, STEP_NAMES, Report
from imagegate.diagnose.run import diagnose
from imagegate.testing import LocalCA, black_hole, serve_app
from imagegate.testing import hf_inference as hf_emulator
from imagegate.testing import novita as novita_emulator

PROVIDER_VARS = ("A1111_URL", "IMAGEGATE_CONFIG", "NOVITA_API_KEY", "STABILITY_API_KEY", "HF_TOKEN",
                 "HF_SPACES", "OPENAI_BASE_URL", "OPENAI_API_KEY", *REGISTRY.env_variables)
GOOD_KEY = "novita-right-key-0123456789"
BAD_KEY = "novita-wrong-key-98765wxyz"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def steps_of(report: Report, name: str) -> dict[str, Any]:
    (backend,) = [b for b in report.backends if b.name == name]
    return {s.name: s for s in backend.steps}


def _write_and_load(tmp_path: Path, backends: list[dict[str, Any]]) -> Settings:
    """Settings through the real TOML loader, with secrets not required (as diagnose loads them)."""
    from tests.conftest import _toml, write_config

    lines = []
    for b in backends:
        lines.append("[[backend]]")
        lines += [f"{k} = {_toml(v)}" for k, v in b.items()]
    path = write_config(tmp_path, "\n".join(lines) + "\n")
    return load_settings(path, environ={}, dotenv=False, require_secrets=False)


async def test_healthy_backend_is_ok_with_each_step_timed(a1111_url: str, tmp_path: Path) -> None:
    s = _write_and_load(tmp_path, [{"name": "local", "kind": "a1111", "base_url": a1111_url}])
    report = await diagnose(s, timeout=2)
    steps = steps_of(report, "local")
    assert [n for n in steps] == ["dns", "tcp", "tls", "http", "auth"]
    assert report.backends[0].verdict == "ok" and report.exit_code == 0
    assert steps["tls"].status == "skip" and "plain http" in steps["tls"].detail
    http = steps["http"]
    assert http.status == "ok" and http.data["status"] == 200
    assert 0 < http.data["first_byte_s"] < 2 and http.data["url"].endswith("/sdapi/v1/progress")
    assert all(steps[n].elapsed_s is not None for n in ("dns", "tcp", "http"))


async def test_tls_black_hole_fails_at_tls_with_proxy_advice(blackhole_url: str, tmp_path: Path) -> None:
    s = _write_and_load(tmp_path, [{"name": "hole", "kind": "a1111", "base_url": blackhole_url,
                                    "connect_timeout_s": 7.0}])
    report = await diagnose(s, timeout=0.3)
    steps = steps_of(report, "hole")
    assert steps["tcp"].status == "ok"
    assert steps["tls"].status == "fail" and steps["tls"].code == "tls_timeout"
    assert steps["tls"].elapsed_s < 0.3 + 1.0  # the diagnose timeout, not connect_timeout_s (7 s)
    assert steps["http"].status == "skip" and "tls failed" in steps["http"].detail
    (advice,) = report.backends[0].advice()
    assert "a proxy or firewall is interfering with TLS" in advice["advice"]
    assert "connect_timeout_s (now 7 s)" in advice["advice"]
    assert report.exit_code == 1


async def test_refused_port_fails_at_tcp(tmp_path: Path) -> None:
    port = closed_port()
    s = _write_and_load(tmp_path, [{"name": "gone", "kind": "a1111", "base_url": f"http://127.0.0.1:{port}"}])
    report = await diagnose(s, timeout=1)
    steps = steps_of(report, "gone")
    assert steps["tcp"].code == "tcp_refused"
    assert [steps[n].status for n in ("tls", "http")] == ["skip", "skip"]
    assert f"nothing listens on 127.0.0.1:{port}" in report.backends[0].advice()[0]["advice"]


async def test_invalid_host_fails_dns_without_any_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[Any] = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: lookups.append(a) or real(*a, **k))
    s = _write_and_load(tmp_path, [{"name": "typo", "kind": "a1111", "base_url": "http://sdwebui.invalid:7860"}])
    report = await diagnose(s, timeout=1)
    steps = steps_of(report, "typo")
    assert steps["dns"].code == "dns_failed" and steps["dns"].data["special_use"] is True
    assert "RFC 6761" in steps["dns"].detail
    assert steps["tcp"].status == "skip"
    assert lookups == []


async def test_tls_step_reports_protocol_certificate_and_verification(local_ca: LocalCA, tmp_path: Path) -> None:
    async with serve_app(novita_emulator.create_app(api_key=GOOD_KEY), tls=local_ca) as url:
        s = _write_and_load(tmp_path, [
            {"name": "trusted", "kind": "novita", "base_url": url, "ca_bundle": str(local_ca.ca_file)},
            {"name": "untrusted", "kind": "novita", "base_url": url},
        ])
        report = await diagnose(s, timeout=2)
    tls = steps_of(report, "trusted")["tls"]
    assert tls.status == "ok" and tls.data["verified"] is True
    assert tls.data["protocol"].startswith("TLSv1") and "trustme" in tls.data["subject"]
    assert tls.data["not_after"] == "3000-01-01"
    bad = steps_of(report, "untrusted")["tls"]
    assert bad.code == "tls_untrusted" and bad.data["verified"] is False
    assert "trustme" in bad.data["issuer"]  # who signed it is shown even though it is not trusted


async def test_rejected_key_names_its_variable_and_is_never_printed(local_ca: LocalCA, tmp_path: Path) -> None:
    async with serve_app(novita_emulator.create_app(api_key=GOOD_KEY), tls=local_ca) as url:
        s = _write_and_load(tmp_path, [{"name": "nov", "kind": "novita", "base_url": url,
                                        "ca_bundle": str(local_ca.ca_file)}])
        s = s.model_copy(update={"secrets": {"nov": {"api_key": BAD_KEY}}})
        report = await diagnose(s, timeout=2)
    steps = steps_of(report, "nov")
    assert steps["http"].status == "ok" and steps["http"].data["status"] in (401, 403)
    assert steps["auth"].code == "auth_rejected" and steps["auth"].data["last4"] == "wxyz"
    assert "the key in NOVITA_API_KEY was rejected" in report.backends[0].advice()[0]["advice"]
    for as_json in (True, False):
        out = io.StringIO()
        write_report(report, out, as_json=as_json, secrets=[BAD_KEY])
        assert BAD_KEY not in out.getvalue() and BAD_KEY[:-4] not in out.getvalue()


async def test_hf_token_rejected_says_hf_token(tmp_path: Path) -> None:
    async with serve_app(hf_emulator.create_app(api_key="hf_good_token_123456")) as url:
        s = _write_and_load(tmp_path, [{"name": "hfi", "kind": "hf_inference", "base_url": url}])
        s = s.model_copy(update={"secrets": {"hfi": {"api_key": "hf_bad_token_abcdef"}}})
        report = await diagnose(s, timeout=2)
    assert steps_of(report, "hfi")["auth"].code == "auth_rejected"
    assert "the key in HF_TOKEN was rejected" in report.backends[0].advice()[0]["advice"]


async def test_absent_key_is_reported_per_backend_not_as_config_error(tmp_path: Path) -> None:
    async with serve_app(novita_emulator.create_app(api_key=GOOD_KEY)) as url:
        s = _write_and_load(tmp_path, [{"name": "nov", "kind": "novita", "base_url": url}])
        report = await diagnose(s, timeout=2)
    auth = steps_of(report, "nov")["auth"]
    assert auth.code == "auth_missing" and auth.data["present"] is False
    assert report.backends[0].credentials == [
        {"purpose": "api_key", "env": "NOVITA_API_KEY", "present": False, "last4": None}]
    assert "set NOVITA_API_KEY" in report.backends[0].advice()[0]["advice"]


async def test_generate_runs_one_smallest_image(a1111_url: str, tmp_path: Path) -> None:
    s = _write_and_load(tmp_path, [{"name": "local", "kind": "a1111", "base_url": a1111_url}])
    report = await diagnose(s, timeout=2, generate=True)
    gen = steps_of(report, "local")["generate"]
    assert gen.status == "ok"
    assert (gen.data["width"], gen.data["height"], gen.data["format"]) == (64, 64, "png")
    assert gen.data["bytes"] > 0 and gen.elapsed_s is not None


async def test_generate_is_skipped_after_a_failed_step(blackhole_url: str, tmp_path: Path) -> None:
    s = _write_and_load(tmp_path, [{"name": "hole", "kind": "a1111", "base_url": blackhole_url}])
    report = await diagnose(s, timeout=0.2, generate=True)
    gen = steps_of(report, "hole")["generate"]
    assert gen.status == "skip" and "tls failed" in gen.detail


async def test_backends_are_diagnosed_concurrently(a1111_url: str, tmp_path: Path) -> None:
    async with black_hole() as (h1, p1), black_hole() as (h2, p2):
        backends = [{"name": f"ok{i}", "kind": "a1111", "base_url": a1111_url} for i in range(3)]
        backends += [{"name": "hole1", "kind": "a1111", "base_url": f"https://{h1}:{p1}"},
                     {"name": "hole2", "kind": "a1111", "base_url": f"https://{h2}:{p2}"},
                     {"name": "gone", "kind": "a1111", "base_url": f"http://127.0.0.1:{closed_port()}"}]
        report = await diagnose(_write_and_load(tmp_path, backends), timeout=1.0)
    assert report.summary() == {"ok": 3, "degraded": 0, "down": 3}
    assert report.elapsed_s < 1.0 + 0.8  # about one timeout, not two (2 s)


def test_json_document_keys_are_stable(tmp_path: Path) -> None:
    from imagegate.diagnose.report import BackendReport, Step

    steps = [Step("dns", "ok", 0.001, "1 address", data={"host": "h", "addresses": ["127.0.0.1"]}),
             Step("tcp", "fail", 0.002, "refused", "tcp_refused", {"host": "h", "port": 1})]
    import datetime as dt

    b = BackendReport("x", "a1111", "http://h:1", steps, [], {"host": "h", "port": 1})
    doc = Report([b], 1.0, False, "test", dt.datetime.now(dt.UTC), 0.01).to_json()
    assert set(doc) == {"schema_version", "imagegate_version", "started_at", "elapsed_s", "timeout_s",
                        "generate", "config_source", "summary", "exit_code", "backends"}
    assert doc["schema_version"] == 1 and doc["started_at"].endswith("Z")
    (backend,) = doc["backends"]
    assert set(backend) == {"name", "kind", "target", "verdict", "elapsed_s", "credentials", "steps", "advice"}
    assert all(set(s) == {"name", "status", "elapsed_s", "detail", "code", "data"} for s in backend["steps"])
    assert set(backend["advice"][0]) == {"code", "step", "problem", "advice"}
    assert set(STEP_DATA_KEYS) == set(STEP_NAMES)


def test_every_advice_code_has_a_symptom_and_a_readme_row() -> None:
    assert set(ADVICE) == set(SYMPTOMS)
    table = troubleshooting_markdown()
    assert all(f"`{code}`" in table for code in ADVICE)


def test_marks_fall_back_to_ascii_when_the_console_cannot_encode_them() -> None:
    assert pick_marks(io.TextIOWrapper(io.BytesIO(), encoding="cp1252")) is ASCII
    assert pick_marks(io.TextIOWrapper(io.BytesIO(), encoding="ascii")) is ASCII
    assert pick_marks(io.TextIOWrapper(io.BytesIO(), encoding="utf-8")) is UNICODE


async def run_cli(args: list[str], *, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS and k != "PYTHONIOENCODING"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate", *args, env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode("latin-1"), err.decode("latin-1")


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
async def test_plain_output_encodes_on_a_narrow_console(encoding: str, a1111_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[backend]]\nname = "local"\nkind = "a1111"\nbase_url = "{a1111_url}"\n'
                   f'[[backend]]\nname = "typo"\nkind = "a1111"\nbase_url = "http://x.invalid"\n')
    code, out, err = await run_cli(["diagnose", "--config", str(cfg), "--timeout", "2"],
                                   env={"PYTHONIOENCODING": encoding})
    assert code == 0, err
    assert "Traceback" not in err and "UnicodeEncodeError" not in err
    assert "local (a1111)" in out and "-> OK" in out and "-> DOWN" in out
    assert "\n  ok dns" in out and "\n  XX dns" in out
    out.encode("ascii")


async def test_utf8_console_gets_unicode_marks(a1111_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[backend]]\nname = "local"\nkind = "a1111"\nbase_url = "{a1111_url}"\n')
    code, out, _ = await run_cli(["diagnose", "--config", str(cfg)], env={"PYTHONIOENCODING": "utf-8"})
    assert code == 0 and "✔" in out.encode("latin-1").decode("utf-8")


async def test_json_flag_prints_one_document_and_exit_1_when_none_is_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[backend]]\nname = "gone"\nkind = "a1111"\nbase_url = "http://127.0.0.1:{closed_port()}"\n')
    code, out, err = await run_cli(["diagnose", "--config", str(cfg), "--json", "--timeout", "1"],
                                   env={"PYTHONIOENCODING": "ascii"})
    assert code == 1, err
    doc = json.loads(out)
    assert doc["exit_code"] == 1 and doc["summary"] == {"ok": 0, "degraded": 0, "down": 1}
    assert doc["backends"][0]["advice"][0]["code"] == "tcp_refused"


async def test_unknown_backend_name_is_a_config_error_exit_2(a1111_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[backend]]\nname = "local"\nkind = "a1111"\nbase_url = "{a1111_url}"\n')
    code, _, err = await run_cli(["diagnose", "--config", str(cfg), "--backend", "nope"])
    assert code == 2 and "nope" in err and "local" in err and "Traceback" not in err


async def test_terminal_table_has_a_column_per_step_and_the_advice(blackhole_url: str, a1111_url: str,
                                                                  tmp_path: Path) -> None:
    s = _write_and_load(tmp_path, [{"name": "local", "kind": "a1111", "base_url": a1111_url},
                                   {"name": "hole", "kind": "a1111", "base_url": blackhole_url}])
    report = await diagnose(s, timeout=0.2)
    out = io.StringIO()
    write_report(report, out, table=True)
    lines = out.getvalue().splitlines()
    assert lines[2].split() == ["backend", "kind", "verdict", "dns", "tcp", "tls", "http", "auth"]
    assert lines[3].startswith("local") and "OK" in lines[3]
    assert lines[4].startswith("hole") and "DOWN" in lines[4] and "✖ 2" in lines[4]
    assert "a proxy or firewall is interfering with TLS" in out.getvalue()
