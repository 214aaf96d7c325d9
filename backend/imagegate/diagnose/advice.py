"""From what ``imagegate diagnose`` saw to what the operator should do: the rules, as data.

Every problem diagnose can find has a stable snake_case code. ``SYMPTOMS[code]`` says what was
seen, ``ADVICE[code]`` what to do about it. Both are ``str.format`` templates whose fields are
filled from facts of the run (``{env}``, ``{host}``, ...); :func:`advice_text` fills them and
leaves a missing fact as its placeholder name in angle brackets. README's Troubleshooting
section is generated from these tables (:func:`troubleshooting_markdown`), so wording changes
here change the documentation too. Codes never change meaning; new ones may be added.
"""

from __future__ import annotations

import string
from typing import Any

__all__ = ["ADVICE", "SYMPTOMS", "advice_text", "troubleshooting_markdown"]

SYMPTOMS: dict[str, str] = {
    "dns_failed": "the host name {host} does not resolve",
    "dns_timeout": "the DNS lookup of {host} took longer than {timeout} s",
    "tcp_refused": "connection refused by {host}:{port}",
    "tcp_timeout": "the TCP connection to {host}:{port} did not open within {timeout} s",
    "tcp_failed": "the TCP connection to {host}:{port} failed: {error}",
    "tls_timeout": "TCP connected, but the TLS handshake with {host} did not finish within {timeout} s",
    "tls_untrusted": "the TLS certificate of {host} is not trusted: {error}",
    "tls_failed": "the TLS handshake with {host} failed: {error}",
    "cert_expiring": "the TLS certificate of {host} expires on {not_after}",
    "http_timeout": "connected, but no HTTP answer within {timeout} s",
    "http_failed": "the HTTP request failed before an answer: {error}",
    "bad_response": "the server answered, but not in the {kind} API's format: {error}",
    "probe_rejected": "the probe request was refused with HTTP {status}: {error}",
    "server_error": "the server answered HTTP {status}: {error}",
    "unavailable": "the backend is temporarily unavailable (HTTP {status}): {error}",
    "rate_limited": "the backend is rate-limiting this key (HTTP 429)",
    "auth_missing": "no credentials: {env} is not set",
    "auth_rejected": "the credentials were rejected (HTTP {status})",
    "quota_exhausted": "the account has no credit left (HTTP {status})",
    "space_not_found": "the Hub knows no Space {space} (HTTP {status})",
    "space_sleeping": "the Space {space} is {stage}",
    "space_starting": "the Space {space} is {stage}",
    "space_paused": "the Space {space} is {stage}",
    "space_broken": "the Space {space} is in state {stage}",
    "gradio_api_failed": "the Gradio app at {url} did not describe its API: {error}",
    "api_name_missing": "the Gradio app has no endpoint {api_name}",
    "param_mismatch": "the configured inputs do not match the parameters of {api_name}",
    "generate_failed": "the probe passed, but one real generation failed ({error_kind}): {error}",
    "backend_missing": "this imagegate build cannot load the {kind} backend: {error}",
    "internal_error": "diagnose itself failed on this step: {error}",
}

ADVICE: dict[str, str] = {
    "dns_failed": (
        "check the host name in the config for typos; if it is right, your DNS resolver, "
        "VPN or /etc/hosts is hiding it"
    ),
    "dns_timeout": "your DNS resolver is slow or unreachable: check the network, VPN or resolver",
    "tcp_refused": (
        "nothing listens on {host}:{port}: start the server, or fix the port in base_url"
    ),
    "tcp_timeout": (
        "a firewall drops the packets or the host is down: try another network, "
        "or check that {host}:{port} is reachable from here"
    ),
    "tcp_failed": "the network cannot reach {host}: check your connection, routes and VPN",
    "tls_timeout": (
        "a proxy or firewall is interfering with TLS; try another network, or raise "
        "connect_timeout_s (now {connect_timeout} s)"
    ),
    "tls_untrusted": (
        "if a company proxy inspects TLS, put its CA certificate in this backend's ca_bundle "
        "(or SSL_CERT_FILE); otherwise the server's certificate is wrong: do not disable checks"
    ),
    "tls_failed": "the server and this machine share no TLS version or cipher, or the link broke",
    "cert_expiring": "the certificate will soon be refused: tell the server's owner",
    "http_timeout": (
        "the server accepts connections but does not answer: it is overloaded or stuck; "
        "retry later, or raise --timeout"
    ),
    "http_failed": "the connection broke before an answer: retry; if it persists, try another network",
    "bad_response": "base_url probably points at the wrong server or path: check it",
    "probe_rejected": "check base_url (a wrong path answers 404) and the model name",
    "server_error": "the provider is failing: retry later; imagegate fails over meanwhile",
    "unavailable": "the provider is overloaded or a model is loading: retry in a minute",
    "rate_limited": "wait for the limit to reset, or lower max_concurrency for this backend",
    "auth_missing": "set {env} in the environment or in .env",
    "auth_rejected": "the key in {env} was rejected: check it, or create a new one",
    "quota_exhausted": "the key in {env} works but the account has no credit: top it up",
    "space_not_found": (
        "check the Space id {space}; a private Space needs a token that can read it in {env}"
    ),
    "space_sleeping": (
        "cold start takes minutes; the first request will be slow (set wake_up = true to "
        "wake it at start-up)"
    ),
    "space_starting": "the Space is building or starting: try again in a few minutes",
    "space_paused": (
        "its owner paused or stopped it and only they can restart it: pick another Space, "
        "or duplicate it into your account"
    ),
    "space_broken": (
        "it will not answer until its owner fixes it: pick another Space, or duplicate and fix it"
    ),
    "gradio_api_failed": "the app is not a Gradio app, or too old or broken: open {url} in a browser",
    "api_name_missing": "set api_name to one of the app's endpoints: {endpoints}",
    "param_mismatch": (
        "the Space's {api_name} takes: {params}; fix [backend.inputs] / [backend.fixed]: {problems}"
    ),
    "generate_failed": "see the error; a probe cannot catch every failure of a real generation",
    "backend_missing": "reinstall imagegate (pip install -e .) or remove this backend",
    "internal_error": "this is a bug in imagegate: please report it with the output of --json",
}


class _Facts(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def advice_text(template: str, facts: dict[str, Any]) -> str:
    """Fill ``template`` from ``facts``; a fact that is missing stays visible as ``<name>``.
    A list becomes "a, b" (names) or "a; b" (when its items are phrases)."""
    shown = {k: _joined(v) if isinstance(v, list | tuple) else v for k, v in facts.items()}
    return string.Formatter().vformat(template, (), _Facts(shown))


def _joined(items: list[Any] | tuple[Any, ...]) -> str:
    texts = [str(i) for i in items]
    return ("; " if any(" " in t for t in texts) else ", ").join(texts) or "none"


def troubleshooting_markdown() -> str:
    """README's Troubleshooting section: one row per problem diagnose can report."""
    rows = ["| code | what diagnose saw | what to do |", "|---|---|---|"]
    for code, advice in ADVICE.items():
        symptom, what = (text.replace("|", "\\|") for text in (SYMPTOMS[code], advice))
        rows.append(f"| `{code}` | {symptom} | {what} |")
    return "\n".join(rows) + "\n"
