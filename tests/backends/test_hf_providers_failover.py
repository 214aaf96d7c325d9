"""One HF token, several router providers: the short form ``providers = [...]``, failover across
them, each with its own breaker, and a provider that does not serve the model skipped, not
failed. Everything runs against the router stand-in over real HTTPS on loopback; fault
timeouts are fractions of a second, set through the config keys users set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from imagegate.diagnose.run import diagnose
from imagegate.errors import ConfigError, InvalidRequest
from imagegate.models import ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import FaultProxy, Knobs, LocalCA, serve_app
from imagegate.testing import hf_inference as hf_emulator

from tests.conftest import make_settings

TOKEN = "hf_failoverSECRETtoken1234"
ENV = {"HF_TOKEN": TOKEN}
SCHNELL = "black-forest-labs/FLUX.1-schnell"
DEV = "black-forest-labs/FLUX.1-dev"  # the stand-in's nscale serves it only in staging
SERVICE = {"probe_interval_s": 3600, "deadline_s": 10}


def short_form(url: str, local_ca: LocalCA, providers: list[str], **keys: Any) -> dict[str, Any]:
    return {"name": "hf", "kind": "hf_inference", "base_url": url, "ca_bundle": str(local_ca.ca_file),
            "providers": providers, **keys}


@pytest.fixture
async def router_url(knobs: Knobs, local_ca: LocalCA) -> Any:
    async with serve_app(hf_emulator.create_app(knobs=knobs, api_key=TOKEN), tls=local_ca) as url:
        yield url


def generations(knobs: Knobs) -> list[str]:
    return [r.path.split("/")[1] for r in knobs.requests if r.method == "POST"]


# --- the short form ------------------------------------------------------------------------------


def test_providers_expand_to_one_backend_each_in_order_sharing_every_other_key(tmp_path: Path) -> None:
    table = {"name": "hf", "kind": "hf_inference", "providers": ["fal-ai", "together", "hf-inference"],
             "priority": 5, "read_timeout_s": 42, "model": SCHNELL}
    other = {"name": "late", "kind": "hf_inference", "priority": 5}
    settings = make_settings([table, other], environ=ENV, tmp_path=tmp_path)
    assert [b.name for b in settings.backends] == ["hf/fal-ai", "hf/together", "hf/hf-inference", "late"]
    assert [b.provider for b in settings.backends[:3]] == ["fal-ai", "together", "hf-inference"]  # type: ignore[attr-defined]
    assert {(b.priority, b.read_timeout_s, b.model) for b in settings.backends[:3]} == {(5, 42, SCHNELL)}
    assert all(settings.secret(b.name, "api_key") == TOKEN for b in settings.backends)


@pytest.mark.parametrize(("table", "message"), [
    ({"providers": ["fal-ai"], "provider": "together"}, "not both"),
    ({"providers": []}, "at least one provider"),
    ({"providers": ["fal-ai", "fal-ai"]}, "more than once"),
    ({"providers": ["auto"]}, "not a text-to-image provider"),
    ({"provider": "nebius"}, "dropped from the Hugging Face router"),
    ({"providers": ["together", "black-forest-labs"]}, "dropped from the Hugging Face router"),
    ({"provider": "groq"}, "not a text-to-image provider"),
    ({"bill_to": "not an org!"}, "organisation name"),
])
def test_bad_provider_keys_are_one_line_config_errors(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_settings([{"name": "hf", "kind": "hf_inference", **table}], environ=ENV, tmp_path=tmp_path)
    assert "\n" not in str(info.value) and "[[backend]] #1" in str(info.value)


def test_an_expanded_name_taken_by_another_table_is_refused(tmp_path: Path) -> None:
    tables = [{"name": "hf/together", "kind": "hf_inference", "provider": "together"},
              {"name": "hf", "kind": "hf_inference", "providers": ["fal-ai", "together"]}]
    with pytest.raises(ConfigError, match=r"'hf/together' is already used by \[\[backend\]\] #1"):
        make_settings(tables, environ=ENV, tmp_path=tmp_path)


def test_a_name_may_hold_one_slash_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name"):
        make_settings([{"name": "a/b/c", "kind": "hf_inference"}], environ=ENV, tmp_path=tmp_path)
    with pytest.raises(ConfigError, match="name"):  # "<name>/<provider>" of a name with a slash
        make_settings([{"name": "a/b", "kind": "hf_inference", "providers": ["together"]}],
                      environ=ENV, tmp_path=tmp_path)


# --- failover across providers ------------------------------------------------------------------


async def test_a_black_holed_fal_route_fails_over_to_together_with_one_token(
    router_url: str, knobs: Knobs, local_ca: LocalCA, tmp_path: Path
) -> None:
    """The issue's "done when": one HF_TOKEN, providers = ["fal-ai", "together", "hf-inference"].
    fal-ai's route takes the request and never answers (all providers share the router's
    host, so one provider is black-holed behind it, as when fal stops answering the router)."""
    knobs.arm("stall", path="/fal-ai/*", count=100)
    table = short_form(router_url, local_ca, ["fal-ai", "together", "hf-inference"], read_timeout_s=0.4)
    settings = make_settings([table], service={**SERVICE, "breaker_threshold": 1}, environ=ENV,
                             tmp_path=tmp_path)
    request = ImageRequest(prompt="a red fox", width=512, height=512, seed=7)
    async with ImageService(settings) as service:
        first = await service.generate(request)
        second = await service.generate(request)
        states = {h.name: h.state for h in service.health()}
    assert first.backend == "hf/together" and first.images[0].info["provider"] == "together"
    assert [(a.backend, a.outcome) for a in first.attempts] == [
        ("hf/fal-ai", "generation_timeout"), ("hf/together", "ok")]
    # fal-ai's own breaker opened; the next request does not wait for it again
    assert states == {"hf/fal-ai": "open", "hf/together": "closed", "hf/hf-inference": "closed"}
    assert second.backend == "hf/together"
    assert [a.backend for a in second.attempts if a.outcome != "skipped"] == ["hf/together"]
    assert generations(knobs) == ["fal-ai", "together", "together"]
    assert {r.headers["Authorization"] for r in knobs.requests if r.method == "POST"} == {f"Bearer {TOKEN}"}


async def test_a_handshake_black_hole_fails_over_within_the_connect_budget_not_the_read_one(
    router_url: str, knobs: Knobs, local_ca: LocalCA, tmp_path: Path
) -> None:
    """Give one provider its own address (a proxy in front of the router that never completes
    the TLS handshake): the connect timeout ends it, however long generation may take."""
    async with FaultProxy(router_url, mode="tls_blackhole") as proxy:
        common = {"kind": "hf_inference", "ca_bundle": str(local_ca.ca_file), "connect_timeout_s": 0.3,
                  "read_timeout_s": 60}
        tables = [{"name": "fal", "provider": "fal-ai", "base_url": proxy.url, **common},
                  {"name": "together", "provider": "together", "base_url": router_url, **common,
                   "connect_timeout_s": 5.0}]  # it answers: a generous budget, no CPU-starvation flake
        settings = make_settings(tables, service=SERVICE, environ=ENV, tmp_path=tmp_path)
        async with ImageService(settings) as service:
            started = time.monotonic()
            result = await service.generate(ImageRequest(prompt="a red fox", width=512, height=512))
            elapsed = time.monotonic() - started
    assert [(a.backend, a.outcome) for a in result.attempts] == [("fal", "handshake_timeout"), ("together", "ok")]
    assert elapsed < 0.3 + 2.0  # the read budget is 60 s: it was never waited for


# --- a provider that does not serve the model: skipped, not failed ---------------------------------


async def test_a_provider_serving_the_model_only_in_staging_is_reported_and_skipped(
    router_url: str, knobs: Knobs, local_ca: LocalCA, tmp_path: Path
) -> None:
    table = short_form(router_url, local_ca, ["nscale", "together"], model=DEV)
    settings = make_settings([table], service={**SERVICE, "breaker_threshold": 1}, environ=ENV, tmp_path=tmp_path)
    async with ImageService(settings) as service:
        health = {h.name: h for h in await service.probe_all()}
        result = await service.generate(ImageRequest(prompt="a red fox", width=512, height=512))
        states = {h.name: h.state for h in service.health()}
    nscale = health["hf/nscale"]
    assert (nscale.ok, nscale.last_error_kind) == (False, "rejected")
    assert "only in staging" in (nscale.last_error or "")
    assert health["hf/together"].ok and health["hf/together"].detail == f"together serves {DEV} (live)"
    assert [(a.backend, a.outcome) for a in result.attempts] == [("hf/nscale", "skipped"), ("hf/together", "ok")]
    assert "only in staging" in (result.attempts[0].error or "")
    assert states["hf/nscale"] == "closed"  # skipped, not failed: its breaker is untouched
    assert generations(knobs) == ["together"]


async def test_before_any_probe_an_unserved_model_costs_one_rejected_attempt_then_is_skipped(
    router_url: str, knobs: Knobs, local_ca: LocalCA, tmp_path: Path
) -> None:
    table = short_form(router_url, local_ca, ["zai-org", "together"])  # zai-org: GLM-Image only
    settings = make_settings([table], service={**SERVICE, "breaker_threshold": 1}, environ=ENV, tmp_path=tmp_path)
    request = ImageRequest(prompt="a red fox", width=512, height=512, model=SCHNELL)
    async with ImageService(settings) as service:
        first = await service.generate(request)
        second = await service.generate(request)
        assert service.breaker("hf/zai-org").state == "closed"
    assert [(a.backend, a.outcome) for a in first.attempts] == [("hf/zai-org", "rejected"), ("hf/together", "ok")]
    assert [(a.backend, a.outcome) for a in second.attempts] == [("hf/zai-org", "skipped"), ("hf/together", "ok")]
    assert "not served by zai-org" in (second.attempts[0].error or "")
    assert generations(knobs) == ["together", "together"]  # zai-org was never sent a generation


async def test_when_no_provider_serves_the_model_the_request_is_invalid_naming_each(
    router_url: str, local_ca: LocalCA, tmp_path: Path
) -> None:
    table = short_form(router_url, local_ca, ["nscale", "zai-org"], model=DEV)
    settings = make_settings([table], service=SERVICE, environ=ENV, tmp_path=tmp_path)
    async with ImageService(settings) as service:
        await service.probe_all()
        with pytest.raises(InvalidRequest, match="hf/nscale: model .*staging.*hf/zai-org: model"):
            await service.generate(ImageRequest(prompt="a red fox", width=1024, height=1024))


async def test_diagnose_reports_the_provider_that_does_not_serve_the_model(
    router_url: str, local_ca: LocalCA, tmp_path: Path
) -> None:
    table = short_form(router_url, local_ca, ["together", "zai-org"])
    settings = make_settings([table], service=SERVICE, environ=ENV, tmp_path=tmp_path)
    report = await diagnose(settings, timeout=5)
    by_name = {b.name: b for b in report.backends}
    zai_http = next(s for s in by_name["hf/zai-org"].steps if s.name == "http")
    assert (zai_http.status, zai_http.code) == ("fail", "probe_rejected")
    assert f"model '{SCHNELL}' is not served by zai-org" in zai_http.detail
    assert by_name["hf/together"].verdict == "ok"


async def test_diagnose_generate_asks_a_provider_for_a_size_it_takes(
    router_url: str, local_ca: LocalCA, tmp_path: Path
) -> None:
    table = {"name": "glm", "kind": "hf_inference", "base_url": router_url, "ca_bundle": str(local_ca.ca_file),
             "provider": "zai-org", "model": "zai-org/GLM-Image", "poll_interval_s": 0.01}
    settings = make_settings([table], service=SERVICE, environ=ENV, tmp_path=tmp_path)
    report = await diagnose(settings, generate=True, timeout=5)
    (backend,) = report.backends
    step = next(s for s in backend.steps if s.name == "generate")
    assert (step.status, step.data["width"], step.data["height"]) == ("ok", 1024, 1024)
