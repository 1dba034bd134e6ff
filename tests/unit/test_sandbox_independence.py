"""The provider simulator and Blueline share no code, read from their source.

``blueline_sandbox`` is a second, independent implementation of the provider side:
were it to reuse Blueline's signing or parsing, tests driven by it would agree with
Blueline's mistakes instead of catching them. Blueline reaches the simulator only
where it embeds or runs it.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

# The embedded development provider and the ``sandbox-provider`` command.
ALLOWED_TO_IMPORT_SANDBOX = {"blueline.app", "blueline.cli"}
_DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"{name} is not installed"
    assert spec.submodule_search_locations, f"{name} is not a package"
    return Path(next(iter(spec.submodule_search_locations)))


def _modules(package: str) -> Iterator[tuple[str, bool, Path]]:
    """Every module of ``package``: its dotted name, whether it is a package, its file."""
    root = _package_dir(package)
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        yield ".".join(parts), is_package, path


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > len(base):
        return "<beyond the top-level package>"
    anchor = base[: len(base) - level + 1]
    return ".".join([*anchor, name] if name else anchor)


def _imported(module: str, is_package: bool, path: Path) -> set[str]:
    """Every module named by an import in the file, relative ones made absolute."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = (
                _resolve(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            found.add(target)
            # ``from pkg import sub`` may name a submodule rather than an attribute.
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                called in _DYNAMIC_IMPORTERS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.add(first.value)
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _importers_of(target: str, package: str) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for module, is_package, path in _modules(package):
        hits = {name for name in _imported(module, is_package, path) if _within(name, target)}
        if hits:
            result[module] = hits
    return result


def test_every_sandbox_module_is_scanned() -> None:
    names = {module for module, _, _ in _modules("blueline_sandbox")}
    assert {"blueline_sandbox", "blueline_sandbox.app", "blueline_sandbox.state"} <= names


def test_the_sandbox_imports_nothing_from_blueline() -> None:
    offenders = _importers_of("blueline", "blueline_sandbox")
    assert offenders == {}
    beyond = {
        module
        for module, is_package, path in _modules("blueline_sandbox")
        if "<beyond the top-level package>" in _imported(module, is_package, path)
    }
    assert beyond == set()


def test_only_the_app_and_the_cli_import_the_sandbox() -> None:
    importers = _importers_of("blueline_sandbox", "blueline")
    assert set(importers) - ALLOWED_TO_IMPORT_SANDBOX == set()
    # Proves the scan sees the imports that are there, so an empty result means something.
    assert "blueline.app" in importers


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import blueline.webhooks.signature", "blueline.webhooks.signature"),
        ("from blueline import errors", "blueline.errors"),
        ("from blueline.webhooks.signature import sign", "blueline.webhooks.signature"),
        ("importlib.import_module('blueline.ids')", "blueline.ids"),
        ("__import__('blueline')", "blueline"),
    ],
)
def test_the_scan_catches_each_way_of_importing(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source + "\n", encoding="utf-8")
    assert expected in _imported("blueline_sandbox.probe", False, path)


def test_relative_imports_resolve_within_their_package(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text("from . import state\nfrom .domain import Line\nfrom .. import x\n")
    found = _imported("blueline_sandbox.probe", False, path)
    assert {"blueline_sandbox.state", "blueline_sandbox.domain"} <= found
    assert "<beyond the top-level package>" in found
