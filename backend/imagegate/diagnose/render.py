"""How a diagnose report is printed: a table on a terminal, plain text otherwise, or one JSON
document. Every text form encodes on any console: when the stream's encoding cannot print
the marks (Windows cp1252 has no "✔"), ASCII marks are used, and any other character it
cannot print (a Space's parameter label, a certificate subject) becomes "?" instead of
raising UnicodeEncodeError. JSON is always ASCII (``\\u`` escapes).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from imagegate.config.redact import Redactor
from imagegate.diagnose.report import STEP_NAMES, BackendReport, Report, Step, scrub

__all__ = ["ASCII", "UNICODE", "Marks", "pick_marks", "render_plain", "render_table", "write_report"]


@dataclass(frozen=True)
class Marks:
    ok: str
    warn: str
    fail: str
    skip: str
    arrow: str

    def of(self, status: str) -> str:
        return str(getattr(self, status))


UNICODE = Marks(ok="✔", warn="⚠", fail="✖", skip="·", arrow="→")
ASCII = Marks(ok="ok", warn="!!", fail="XX", skip="--", arrow="->")
_VERDICT = {"ok": "OK", "degraded": "DEGRADED", "down": "DOWN"}
_HEAD = {"gradio_api": "api", "generate": "gen"}


def _encoding(stream: TextIO) -> str:
    enc = getattr(stream, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(enc).name
    except LookupError:
        return "ascii"


def pick_marks(stream: TextIO) -> Marks:
    """Unicode marks when ``stream`` can encode them, else ASCII ones."""
    sample = "".join(getattr(UNICODE, f) for f in ("ok", "warn", "fail", "skip", "arrow"))
    try:
        sample.encode(_encoding(stream))
    except UnicodeEncodeError:
        return ASCII
    return UNICODE


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _header(report: Report) -> str:
    n = len(report.backends)
    gen = ", with one generation each" if report.generate else ""
    return (f"imagegate diagnose: {n} backend{'s' if n != 1 else ''}, {report.timeout_s:g} s per step"
            f"{gen}; took {report.elapsed_s:.2f} s")


def _footer(report: Report) -> str:
    s = report.summary()
    return f"summary: {s['ok']} ok, {s['degraded']} degraded, {s['down']} down"


def _advice_lines(backend: BackendReport, marks: Marks, indent: str) -> list[str]:
    return [f"{indent}{marks.arrow} {a['advice']}" for a in backend.advice()]


def _step_line(step: Step, marks: Marks) -> str:
    return f"  {marks.of(step.status):<2} {step.name:<10} {_duration(step.elapsed_s):>8}  {step.detail}"


def render_plain(report: Report, marks: Marks) -> str:
    """A block per backend: every step with its time and detail, then the advice."""
    lines = [_header(report), ""]
    for b in report.backends:
        lines.append(f"{b.name} ({b.kind}) {b.target}  {marks.arrow} {_VERDICT[b.verdict]}")
        lines += [_step_line(s, marks) for s in b.steps]
        advice = _advice_lines(b, marks, "    ")
        if advice:
            lines += ["  advice:", *advice]
        lines.append("")
    lines.append(_footer(report))
    return "\n".join(lines) + "\n"


def _cell(step: Step | None, marks: Marks) -> str:
    if step is None:
        return ""
    if step.status == "skip" or step.elapsed_s is None:
        return marks.of(step.status)
    return f"{marks.of(step.status)} {_duration(step.elapsed_s)}"


def render_table(report: Report, marks: Marks) -> str:
    """One row per backend, one column per step (mark and time), then problems and advice."""
    present = [n for n in STEP_NAMES if any(b.steps and _find(b, n) for b in report.backends)]
    head = ["backend", "kind", "verdict", *(_HEAD.get(n, n) for n in present)]
    rows = [[b.name, b.kind, _VERDICT[b.verdict], *(_cell(_find(b, n), marks) for n in present)]
            for b in report.backends]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [_header(report), ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    for b in report.backends:
        notes = [f"  {s.name}: {s.detail}" for s in b.steps if s.status in ("warn", "fail")]
        shown = _find(b, "generate") or _find(b, "http")
        if not notes and shown is not None and shown.status == "ok":
            notes = [f"  {shown.name}: {shown.detail}"]
        lines += ["", f"{b.name} ({b.target})  {_VERDICT[b.verdict]}", *notes]
        lines += _advice_lines(b, marks, "    ")
    lines += ["", _footer(report)]
    return "\n".join(lines) + "\n"


def _find(backend: BackendReport, name: str) -> Step | None:
    return next((s for s in backend.steps if s.name == name), None)


def _encodable(text: str, encoding: str) -> str:
    return text.encode(encoding, errors="replace").decode(encoding)


def write_report(
    report: Report, stream: TextIO, *, as_json: bool = False, table: bool | None = None,
    secrets: Iterable[str] | Redactor = (),
) -> None:
    """Print ``report``: JSON, a table (default on a terminal), or plain text; every secret
    (a Redactor, or the values) masked in every form."""

    if as_json:
        stream.write(json.dumps(report.to_json(secrets=secrets), indent=2) + "\n")
        stream.flush()
        return
    marks = pick_marks(stream)
    if table is None:
        table = bool(getattr(stream, "isatty", lambda: False)())
    text = render_table(report, marks) if table else render_plain(report, marks)
    stream.write(_encodable(scrub(text, secrets), _encoding(stream)))
    stream.flush()
