"""The house rules the tree keeps: every tag key in one module, modules and functions of readable size,
and a package a non-editable install ships whole."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "mnist_exp"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# A longer function says why in its docstring, with this phrase.
LONG_REASON = "Long because"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_names() -> set[str]:
    out = set()
    for f in modules():
        parts = f.relative_to(ROOT).with_suffix("").parts
        out.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def strings(tree: ast.AST):
    """Every string constant outside docstrings."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            yield n


def test_no_tag_key_is_written_outside_the_keys_module():
    paths = module_names()
    bare = []
    for f in modules():
        if f.name == "keys.py" and f.parent.name == "tracking":
            continue
        for node in strings(ast.parse(f.read_text())):
            for key in re.findall(r"mnist_exp\.[a-z_]+(?:\.[a-z_]+)*", node.value):
                if key not in paths:  # a module path (``-m mnist_exp.cli``) is not a tag
                    bare.append(f"{f.relative_to(ROOT)}:{node.lineno}: {key}")
    assert not bare, "tag keys belong in mnist_exp/tracking/keys.py:\n" + "\n".join(bare)


def test_the_keys_module_is_what_the_check_reads():
    # The check above must be able to fail: the keys module itself is full of such strings.
    keys = PACKAGE / "tracking" / "keys.py"
    found = [n for n in strings(ast.parse(keys.read_text())) if n.value.startswith("mnist_exp.")]
    assert len(found) >= 30


def test_modules_and_functions_stay_readable():
    too_long = [f"{f.relative_to(ROOT)}: {n} lines" for f in modules()
                if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES]
    for f in modules():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.name}() {length} lines")
    assert not too_long, "\n".join(too_long)


def test_every_package_says_what_it_owns():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 12 and "TODO" not in doc, f"{init.relative_to(ROOT)}: no docstring saying what it owns"


def test_packaging_ships_every_subpackage():
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    from setuptools import find_packages

    found = set(find_packages(str(ROOT), **setup["packages"]["find"]))
    on_disk = {".".join(p.relative_to(ROOT).parts[:-1]) for p in PACKAGE.rglob("__init__.py")}
    assert found == on_disk, (found, on_disk)
    assert "resources/*.npz" in setup["package-data"]["mnist_exp"]
