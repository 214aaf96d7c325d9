"""README.md is a test script: its runnable blocks run, its commands parse, its tables are true.

The blocks marked ``<!-- runnable -->`` (see tests/readme_blocks.py for the convention) run in
order, for real, in a temporary directory holding only a link to ``scripts/``, with the clean
environment of tests/isolated.py (these variables are the only thing the harness sets: no
provider key or ``IMAGEGATE_CONFIG`` of the developer's reaches the blocks). When ``unshare -n``
works they run in a private network namespace with only loopback, so README's fixed ports
(7860, 8000, 8080) cannot collide with anything else and nothing can leave the machine;
otherwise they run on the host's loopback, and are skipped if one of those ports is taken.
The install and test commands themselves are run by ``.ci/run``, not here.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.registry import PROVIDERS, load_settings
from imagegate.cli.main import build_parser
from imagegate.config import ServiceSettings
from imagegate.diagnose.advice import troubleshooting_markdown

from tests.isolated import clean_env, isolation_prefix
from tests.readme_blocks import Block, fenced_blocks, runnable_blocks, to_json

ROOT = Path(__file__).resolve().parents[1]
README_TEXT = (ROOT / "README.md").read_text()
RUNNABLE = runnable_blocks(README_TEXT)
SETUP = ["sh scripts/setup.sh", "python3 -m pytest"]


def _block_id(block: Block) -> str:
    lines = [ln for ln in block.code.splitlines() if ln.strip() and not ln.startswith(("export", "#"))]
    return f"line{block.line}:{lines[0][:40] if lines else block.lang}"


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """Run every runnable block once, in order; results by the block's line number."""
    work = tmp_path_factory.mktemp("readme")
    (work / "scripts").symlink_to(ROOT / "scripts")
    spec, result = work / ".block-spec.json", work / ".block-result.json"
    spec.write_text(to_json(RUNNABLE))
    prefix = isolation_prefix()
    if prefix is None:
        taken = [int(b.attrs["port"]) for b in RUNNABLE if "port" in b.attrs and _port_taken(int(b.attrs["port"]))]
        if taken:
            pytest.skip(f"no network namespace here, and README's port(s) {taken} are in use")
    driver = [sys.executable, str(ROOT / "tests" / "readme_blocks.py"), str(spec), str(result)]
    done = subprocess.run(
        [*(prefix or []), *driver],
        check=False, cwd=work, env=clean_env(XDG_STATE_HOME=str(work / ".state")),
        capture_output=True, text=True, timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {r["line"]: r for r in json.loads(result.read_text())}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("block", RUNNABLE, ids=_block_id)
def test_runnable_readme_block_does_what_readme_says(block: Block, readme_run: dict[int, dict[str, Any]]) -> None:
    run = readme_run[block.line]
    where = f"README.md line {block.line}:\n{block.code}--- output ---\n{run['output'][-4000:]}"
    assert run["rc"] == int(block.attrs.get("exit", 0)), where
    if "expect" in block.attrs:
        assert re.search(block.attrs["expect"], run["output"], re.DOTALL), where
    if "creates" in block.attrs:
        assert any(fnmatch(f, block.attrs["creates"]) for f in run["new_files"]), (run["new_files"], where)
    if "background" in block.flags:
        assert not run.get("killed"), f"did not stop on Ctrl-C: {where}"
        assert run["stopped_rc"] in (0, 130, -signal.SIGINT), where
        assert "Traceback" not in run["output"], where


def test_readme_runs_the_demo_first_and_shows_every_kind_of_step() -> None:
    assert RUNNABLE[0].code.strip() == "imagegate demo"
    kinds = {"background" in b.flags for b in RUNNABLE} | {b.lang for b in RUNNABLE}
    assert kinds == {True, False, "sh", "python"}


def test_setup_commands_are_the_first_block_and_exactly_what_ci_runs() -> None:
    first = fenced_blocks(README_TEXT)[0]
    assert first.code.strip().splitlines() == SETUP
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in SETUP:
        assert any(line.strip().startswith(command) for line in ci), command


# -- every command shown parses ---------------------------------------------------------------

_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1"}
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def _commands(text: str) -> list[str]:
    """Lines of every shell block, and every inline code span starting with ``imagegate``."""
    found = []
    for block in fenced_blocks(text):
        if block.lang in ("sh", "bash", "shell", "console"):
            found += block.code.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    found += [m for m in _INLINE.findall(prose) if m.startswith("imagegate ")]
    return found


def imagegate_argvs(text: str) -> list[list[str]]:
    """The argument lists of every ``imagegate ...`` command shown (after VAR=value prefixes)."""
    argvs = []
    for line in _commands(text):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        while words and (words[0] == "export" or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])):
            words = words[1:]
        if words[:1] != ["imagegate"]:
            continue
        args = []
        for word in words[1:]:
            if word in _OPERATORS:
                break
            args.append(word)
        argvs.append(args)
    return argvs


def test_every_imagegate_command_in_readme_parses() -> None:
    argvs = imagegate_argvs(README_TEXT)
    shown = {argv[0] for argv in argvs if argv}
    assert {"demo", "generate", "backends", "diagnose", "serve"} <= shown
    parser = build_parser()
    for argv in argvs:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # --help exits 0; a bad command exits 2
            assert exc.code == 0, f"README shows a command that does not parse: imagegate {shlex.join(argv)}"


def test_the_parse_check_would_catch_a_wrong_command() -> None:
    bad = "Run `imagegate generate --colour red` or:\n```sh\nimagegate demo --scenario nope\n```\n"
    parser = build_parser()
    for argv in imagegate_argvs(bad):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


# -- what README states about the code -------------------------------------------------------


def test_every_toml_block_in_readme_is_a_config_that_loads(tmp_path: Path) -> None:
    blocks = [b for b in fenced_blocks(README_TEXT) if b.lang == "toml"]
    assert len(blocks) >= 6
    for block in blocks:
        path = tmp_path / f"line{block.line}.toml"
        path.write_text(block.code)
        settings = load_settings(path, environ={}, dotenv=False, require_secrets=False)
        assert settings.backends, f"README.md line {block.line}: no backend"


def test_readme_names_every_config_key() -> None:
    models = (ServiceSettings, *(p.settings for p in PROVIDERS))
    keys = {key for model in models for key in model.model_fields}
    missing = sorted(key for key in keys if f"`{key}`" not in README_TEXT)
    assert not missing, f"README's configuration reference does not mention {missing}"


def test_readme_service_defaults_match_the_code() -> None:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", README_TEXT, flags=re.MULTILINE)
    table = {key: value.strip() for key, value in rows if key in ServiceSettings.model_fields}
    assert set(table) == set(ServiceSettings.model_fields)
    for key, shown in table.items():
        default = ServiceSettings.model_fields[key].get_default(call_default_factory=True)
        assert shown == _as_shown(default), f"[service] {key}: README says {shown}, the code {default!r}"


def _as_shown(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, dict | list | tuple):
        return f"`{json.dumps(default)}`"
    if isinstance(default, str | Path):
        return f'`"{default}"`'
    return f"{default:g}"


def test_troubleshooting_section_is_the_advice_diagnose_gives() -> None:
    section = README_TEXT.split("<!-- troubleshooting:begin -->\n", 1)[1].split("<!-- troubleshooting:end -->", 1)[0]
    assert section == troubleshooting_markdown(), (
        "README's Troubleshooting differs from imagegate.advice: paste "
        "python3 -c 'from imagegate.diagnose.advice import troubleshooting_markdown as t; print(t(), end=\"\")'"
    )


def test_relative_links_in_readme_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README_TEXT)
    local = [link for link in links if "://" not in link]
    assert local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing


def test_router_section_placeholder_or_text_is_present() -> None:
    assert "## Routing, circuit breakers and hedging" in README_TEXT


def test_toml_blocks_hold_no_secret() -> None:
    for block in (b for b in fenced_blocks(README_TEXT) if b.lang == "toml"):
        doc = tomllib.loads(block.code)
        for table in doc.get("backend", []):
            assert not {"api_key", "token", "password", "key"} & set(table), block.line


# -- the sample outputs shown are what the commands print ------------------------------------

_STAMPED = re.compile(r"^\[\s*[\d.]+ s\] (\S+)\s+(.*)$")


def _narration(text: str) -> list[tuple[str, str]]:
    """The demo's narrated steps, wrapped lines joined, numbers/URLs/paths made generic."""
    steps: list[tuple[str, str]] = []
    for line in text.splitlines():
        stamped = _STAMPED.match(line)
        if stamped:
            steps.append((stamped[1], stamped[2]))
        elif steps and line.startswith(" " * 13) and line.strip():
            steps[-1] = (steps[-1][0], f"{steps[-1][1]} {line.strip()}")
    return [(mark, _generic(said)) for mark, said in steps]


def _generic(text: str) -> str:
    text = re.sub(r"https?://\S+?(?=[,)\s]|$)", "URL", text)
    text = re.sub(r"\S*outputs/\S+", "PATH", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)


def _diagnose_skeleton(text: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for line in text.splitlines():
        if header := re.match(r"^(\S+) \((\w+)\) \S+\s+→ (\w+)$", line):
            rows.append(header.groups())
        elif step := re.match(r"^\s+([✔✖·!])\s+(\w+)\s", line):
            rows.append(step.groups())
    return rows


def _sample_after(marker_line: int) -> str:
    return next(b.code for b in fenced_blocks(README_TEXT) if b.lang == "text" and b.line > marker_line)


def _run_of(command: str, readme_run: dict[int, dict[str, Any]]) -> tuple[int, str]:
    block = next(b for b in RUNNABLE if command in b.code and "background" not in b.flags)
    return block.line, readme_run[block.line]["output"]


@pytest.mark.timeout(180)
def test_readme_demo_sample_is_what_the_demo_prints(readme_run: dict[int, dict[str, Any]]) -> None:
    line, output = _run_of("imagegate demo", readme_run)
    sample = _narration(_sample_after(line))
    assert len(sample) >= 10
    assert sample == _narration(output)


@pytest.mark.timeout(180)
def test_readme_diagnose_sample_is_what_diagnose_prints(readme_run: dict[int, dict[str, Any]]) -> None:
    line, output = _run_of("imagegate diagnose", readme_run)
    sample = _diagnose_skeleton(_sample_after(line))
    assert ("space", "hf_space", "DOWN") in sample
    assert sample == _diagnose_skeleton(output)
