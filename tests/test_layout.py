"""The package's layout stays readable: no import cycle (imports inside functions count; only
``if TYPE_CHECKING:`` blocks do not), the arrows between subpackages run one way, no backend
imports another, and no module grows past 400 lines. The graph is built from the source
(ast), not by importing anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "backend" / "imagegate"
MAX_LINES = 400

# What each part may import (besides itself). The arrows run one way:
# cli/server/diagnose -> routing -> backends, state -> config -> models -> errors;
# events (the progress model) sits beside models: backends report through it, routing emits.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "version": set(),
    "logging": set(),
    "capabilities": set(),  # plain data that models embeds (BackendHealth, ImageResult)
    "models": {"errors", "capabilities"},
    "store": {"errors", "models"},
    # logging is a leaf (structlog and stdlib only): every part logs through its get_logger
    "events": {"errors", "models", "logging"},
    "config": {"errors", "models", "logging"},
    "backends": {"errors", "models", "config", "capabilities", "events", "logging"},
    "state": {"errors", "models", "config", "logging"},
    "routing": {"errors", "models", "config", "backends", "capabilities", "events", "state",
                "logging"},
    "diagnose": {"errors", "models", "config", "backends", "capabilities", "logging", "version"},
    "server": {"errors", "models", "config", "backends", "routing", "state", "store", "logging",
               "version", "capabilities", "events"},
    "testing": {"errors", "models", "backends", "capabilities"},
    "cli": {"errors", "models", "config", "backends", "routing", "store", "logging", "diagnose",
            "server", "testing", "version", "capabilities", "events"},
}
# the public face re-exports from everywhere it needs to
TOP = {"imagegate", "imagegate.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_the_graph_is_read_from_the_source() -> None:
    edges = graph()
    assert "imagegate.routing.service" in edges
    assert "imagegate.backends.registry" in edges["imagegate.routing.service"]
    # a function-level import counts: the CLI imports its subcommands when chosen
    assert "imagegate.server.run" in edges["imagegate.cli.main"]


def test_find_cycle_finds_a_cycle_and_only_then() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_subpackages_import_only_downwards() -> None:
    wrong = []
    for module, targets in graph().items():
        if module in TOP:
            continue
        allowed = ALLOWED[part(module)] | {part(module)}
        wrong += [f"{module} -> {t}" for t in sorted(targets) if t in TOP or part(t) not in allowed]
    assert not wrong, "imports against the arrows:\n" + "\n".join(wrong)


def test_no_backend_imports_another_backend() -> None:
    shared = {"imagegate.backends", "imagegate.backends.base", "imagegate.backends.http",
              "imagegate.backends.transport", "imagegate.backends.images",
              "imagegate.backends.download",
              # issue 19: a job stopped on cancel (fal, Replicate, ComfyUI), tqdm lines in logs
              "imagegate.backends.stopping", "imagegate.backends.logprogress"}
    wrong = []
    for module, targets in graph().items():
        if not module.startswith("imagegate.backends.") or module in shared:
            continue
        if module == "imagegate.backends.registry":
            continue  # the registry lists them all
        own = module.split(".")[2]  # a provider module, or a provider's subpackage
        for t in targets:
            if t.startswith("imagegate.backends.") and t not in shared and t.split(".")[2] != own:
                wrong.append(f"{module} -> {t}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines (budget {MAX_LINES})"
