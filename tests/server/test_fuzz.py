"""schemathesis against ``/openapi.json`` of a live server on loopback: no 5xx that the document
does not promise, and every answer matches the document (status, content type, headers, body).

Bounded: about 200 generated requests in all, within the per-test timeout. schemathesis sends
with ``requests`` (blocking), so the run happens in a thread while the server runs in this loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given
from imagegate.server import ServerOptions
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

from tests.server.kit import a1111_settings, gateway

KEY = "sk-fuzz"
# examples per operation and mode; the generations route gets most of the budget
BUDGET = {
    ("createImage", GenerationMode.POSITIVE): 90,
    ("createImage", GenerationMode.NEGATIVE): 60,
}
DEFAULT_EXAMPLES = 6


def _checks() -> list[object]:
    names = (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
    return [getattr(st_checks, name) for name in names]


def _fuzz(base_url: str) -> int:
    """Run every operation; raise on the first failure; return how many requests were sent."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    checks = _checks()
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            examples = BUDGET.get(
                (operation.definition.raw.get("operationId"), mode), DEFAULT_EXAMPLES
            )
            if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
                continue  # GET routes here take no input worth breaking but the path id

            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                nonlocal sent
                sent += 1
                case.call_and_validate(
                    base_url=base_url,
                    headers={"Authorization": f"Bearer {KEY}"},
                    checks=checks,
                    timeout=10,
                )

            run()
    return sent


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    a1111_url: str, tmp_path: Path
) -> None:
    settings = a1111_settings(a1111_url, tmp_path, aliases={"dall-e-3": "local"})
    async with gateway(settings, ServerOptions(api_keys=(KEY,))) as (url, _):
        sent = await asyncio.to_thread(_fuzz, url)
    assert 100 <= sent <= 260
