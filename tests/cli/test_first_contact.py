"""First contact, as a new user meets it: the real ``imagegate`` command (a subprocess)
against emulators on loopback. Quiet as a library, one-line errors with exit 2, a backend
whose key is missing disabled the same way everywhere, the help, the status line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pty
import re
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from imagegate.cli.parser import build_parser
from imagegate.testing import LocalCA, serve_app
from imagegate.testing import openai_images as openai_emulator

from tests.cli.test_main import PROVIDER_VARS, Run, assert_no_traceback, closed_port_url, imagegate
from tests.isolated import isolation_prefix

NOVITA_NO_KEY = '\n[[backend]]\nname = "nov"\nkind = "novita"\n'


def a1111_toml(url: str, **keys: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return f'[[backend]]\nname = "local"\nkind = "a1111"\nbase_url = "{url}"\n{extra}'


def no_json_lines(text: str) -> bool:
    return not any(line.lstrip().startswith("{") for line in text.splitlines())


# -- the help, the version --------------------------------------------------------------------


async def test_bare_imagegate_prints_the_help_and_version_works(tmp_path: Path) -> None:
    run = await imagegate(cwd=tmp_path)
    assert run.code == 0 and run.stdout.startswith("usage: imagegate")
    assert "generate" in run.stdout and "imagegate demo" in run.stdout
    run = await imagegate("--version", cwd=tmp_path)
    assert run.code == 0 and re.fullmatch(r"imagegate \d+\.\d+\.\d+\n", run.stdout)


def _parsers() -> list[argparse.ArgumentParser]:
    root = build_parser()
    subs = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    return [root, *subs[0].choices.values()]


def test_every_option_has_help_text_and_shows_its_default() -> None:
    for parser in _parsers():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{parser.prog} {name}: no help text"
            if action.default not in (None, False, argparse.SUPPRESS) and action.dest != "help":
                assert f"(default: {action.default})" in " ".join(text.split()), f"{parser.prog} {name}"


# -- quiet as a library -----------------------------------------------------------------------

LIBRARY = textwrap.dedent(
    """
    import asyncio, logging, sys
    from imagegate import AllBackendsFailed, ImageRequest, ImageService
    if "--host-logging" in sys.argv:
        logging.basicConfig(level=logging.INFO, format="HOST %(name)s %(levelname)s %(message)s")

    async def main():
        async with ImageService.from_config() as service:
            try:
                result = await service.generate(ImageRequest(prompt="a fox", width=64, height=64))
                print("RESULT", result.backend)
            except AllBackendsFailed:
                print("RESULT failed")

    asyncio.run(main())
    """
)


async def _python(code: str, *args: str, cwd: Path, env: dict[str, str]) -> Run:
    environ = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, cwd=cwd, env={**environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=45)
    return Run(proc.returncode or 0, out.decode(), err.decode(), 0.0)


async def test_as_a_library_nothing_reaches_stdout_and_the_host_s_logging_decides(
    a1111_url: str, tmp_path: Path
) -> None:
    run = await _python(LIBRARY, cwd=tmp_path, env={"A1111_URL": a1111_url})
    assert (run.stdout, run.stderr) == ("RESULT a1111\n", "")  # info events: dropped
    run = await _python(LIBRARY, cwd=tmp_path, env={"A1111_URL": closed_port_url()})
    assert run.stdout == "RESULT failed\n"  # warnings: stderr (Python's last-resort handler)
    assert "all_backends_failed" in run.stderr and no_json_lines(run.stderr)
    run = await _python(LIBRARY, "--host-logging", cwd=tmp_path, env={"A1111_URL": a1111_url})
    assert run.stdout == "RESULT a1111\n"
    assert re.search(r"^HOST imagegate\.routing\.run INFO image_generated backend=a1111", run.stderr, re.MULTILINE)


# -- a backend whose key is missing: disabled everywhere, the others serve ----------------------


async def test_a_missing_key_disables_that_backend_in_generate_backends_and_diagnose(
    a1111_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "two.toml"
    config.write_text(a1111_toml(a1111_url) + NOVITA_NO_KEY)
    warning = re.compile(r"^imagegate: warning: .*backend 'nov' \(novita\) is disabled: .*NOVITA_API_KEY", re.MULTILINE)
    gen = await imagegate("generate", "a fox", "--width", "64", "--height", "64", "--config", str(config), cwd=tmp_path)
    assert gen.code == 0, gen.stderr
    assert len(warning.findall(gen.stderr)) == 1 and no_json_lines(gen.stderr)
    table = await imagegate("backends", "--config", str(config), cwd=tmp_path)
    assert table.code == 0 and "local" in table.stdout and warning.search(table.stderr)
    diag = await imagegate("diagnose", "--config", str(config), "--timeout", "2", cwd=tmp_path)
    assert diag.code == 0, diag.stdout + diag.stderr
    assert re.search(r"nov \(novita\).*DOWN", diag.stdout) and "NOVITA_API_KEY is not set" in diag.stdout
    only = tmp_path / "only.toml"
    only.write_text(NOVITA_NO_KEY)
    alone = await imagegate("generate", "a fox", "--config", str(only), cwd=tmp_path)
    assert alone.code == 2 and "no backend is usable" in alone.stderr and "NOVITA_API_KEY" in alone.stderr
    assert_no_traceback(alone)
    assert alone.stderr.count("\n") <= 2


@contextlib.asynccontextmanager
async def served(*args: str, cwd: Path, env: dict[str, str]) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate", "serve", "--port", str(port), *args,
        cwd=cwd, env={**environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_with_a_missing_key_warns_once_and_serves_the_others(a1111_url: str, tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text(a1111_toml(a1111_url) + NOVITA_NO_KEY)
    async with served("--config", str(config), cwd=tmp_path, env={}) as (url, proc):
        async with aiohttp.ClientSession() as http:
            body = {"model": "dall-e-3", "prompt": "a fox", "size": "64x64"}
            async with http.post(url + "/v1/images/generations", json=body) as resp:
                assert resp.status == 200 and resp.headers["x-imagegate-backend"] == "local"
        proc.terminate()
        _out, err = await proc.communicate()
    events = [json.loads(line) for line in err.decode().splitlines()]  # not a terminal: JSON
    assert [e["backend"] for e in events if e["event"] == "backend_disabled"] == ["nov"]
    assert any(e["event"] == "http_request" and e["status"] == 200 for e in events)


async def test_env_only_serve_answers_any_openai_model_name(a1111_url: str, tmp_path: Path) -> None:
    async with (
        served(cwd=tmp_path, env={"A1111_URL": a1111_url}) as (url, _proc),
        aiohttp.ClientSession() as http,
    ):
        for model in ("dall-e-2", "gpt-image-1"):
            body = {"model": model, "prompt": "a fox", "size": "64x64", "cfg_scale": 5}
            async with http.post(url + "/v1/images/generations", json=body) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["x-imagegate-backend"] == "a1111"


async def test_openai_base_url_without_a_key_is_warned_at_start_and_used(tmp_path: Path) -> None:
    async with serve_app(openai_emulator.create_app(api_key=None)) as url:
        run = await imagegate("generate", "a fox", "--width", "256", "--height", "256", cwd=tmp_path,
                              env={"OPENAI_BASE_URL": url})
    assert run.code == 0, run.stderr
    assert re.search(r"^imagegate: warning: OPENAI_BASE_URL is set but OPENAI_API_KEY is not", run.stderr, re.MULTILINE)
    assert "seed None" not in run.stdout and re.search(r"\(256x256 png\)\n", run.stdout)


# -- one line, exit 2, naming the file, the variable or the port --------------------------------


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"A1111_URL": "localhost:7860"}, "environment variable A1111_URL: must be an http"),
        ({"A1111_URL": "http://127.0.0.1:1", "SSL_CERT_FILE": "/nonexistent/ca.pem"},
         "environment variable SSL_CERT_FILE: /nonexistent/ca.pem: file not found"),
    ],
)
async def test_bad_environment_is_one_line_exit_2_naming_the_variable(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    run = await imagegate("generate", "a fox", cwd=tmp_path, env=env)
    assert run.code == 2 and says in run.stderr and run.stderr.count("\n") == 1, run.stderr


async def test_ca_bundle_is_relative_to_the_config_file_and_checked(tmp_path: Path, local_ca: LocalCA) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.pem").write_bytes(local_ca.ca_file.read_bytes())
    good = conf / "good.toml"
    good.write_text(a1111_toml(closed_port_url(), ca_bundle='"ca.pem"'))
    run = await imagegate("generate", "a fox", "--config", str(good), cwd=tmp_path)  # cwd has no ca.pem
    assert run.code == 3, run.stderr  # loaded; the backend is down, not the config
    bad = conf / "bad.toml"
    bad.write_text(a1111_toml(closed_port_url(), ca_bundle='"missing.pem"'))
    run = await imagegate("generate", "a fox", "--config", str(bad), cwd=tmp_path)
    assert run.code == 2 and run.stderr.count("\n") == 1
    assert f"{bad}: [[backend]] 'local': key 'ca_bundle': {conf / 'missing.pem'}: file not found" in run.stderr


async def test_serve_and_emulators_on_a_port_in_use_or_invalid_say_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        serve = await imagegate("serve", "--port", port, cwd=tmp_path, env={"A1111_URL": "http://127.0.0.1:1"})
        runs = [(serve, "imagegate: ")]
        for kind, who in (("a1111", "python -m imagegate.testing a1111: "),
                          ("hf_space", "python -m imagegate.testing.gradio_space: ")):
            emulator = await _python(
                "import sys; from imagegate.testing.cli import main; sys.exit(main())",
                kind, "--port", port, cwd=tmp_path, env={},
            )
            runs.append((emulator, who))
    for run, who in runs:
        assert run.code == 2, run.stderr
        assert_no_traceback(run)
        assert f"{who}" in run.stderr and f"port {port} is already in use" in run.stderr
        assert "--port" in run.stderr
    bad = await imagegate("serve", "--port", "70000", cwd=tmp_path)
    assert bad.code == 2 and "--port: must be from 0 to 65535 (got 70000)" in bad.stderr


# -- the status line, and failed generations ---------------------------------------------------


async def _on_a_terminal(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run imagegate with stderr on a pseudo-terminal; what it drew there."""
    main, child = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate", *args, cwd=cwd, env={**environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=child,
    )
    os.close(child)
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await loop.run_in_executor(None, os.read, main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    await proc.wait()
    os.close(main)
    return proc.returncode or 0, b"".join(chunks).decode(errors="replace")


async def test_the_status_line_names_the_backend_tried_and_the_failover(a1111_url: str, tmp_path: Path) -> None:
    config = tmp_path / "failover.toml"
    config.write_text(
        f'[[backend]]\nname = "down"\nkind = "a1111"\nbase_url = "{closed_port_url()}"\npriority = 0\n'
        f'[[backend]]\nname = "up"\nkind = "a1111"\nbase_url = "{a1111_url}"\npriority = 10\n'
    )
    code, screen = await _on_a_terminal(
        "generate", "a fox", "--width", "64", "--height", "64", "--config", str(config), cwd=tmp_path, env={}
    )
    assert code == 0, screen
    assert "trying down" in screen and "failing over to up (down: connect_failed)" in screen
    assert no_json_lines(screen.replace("\r", "\n"))


async def test_with_no_config_a_notice_and_a_failed_generate_points_at_diagnose(tmp_path: Path) -> None:
    prefix = isolation_prefix()
    if prefix is None:
        pytest.skip("needs a network namespace: the public Spaces must not be reached from a test")
    environ = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "imagegate", "generate", "a fox", "--deadline", "10",
        cwd=tmp_path, env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    stderr = err.decode()
    assert proc.returncode == 3, stderr
    assert re.search(r"^imagegate: warning: no config found: using the public Hugging Face Spaces "
                     r"\(set one of A1111_URL, .*--config PATH", stderr, re.MULTILINE)
    assert stderr.rstrip().endswith("run `imagegate diagnose` to see why")
    assert no_json_lines(stderr)
