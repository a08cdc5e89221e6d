"""MkDocs hook: the reference pages, generated from the code at every build, never written by hand.

- ``reference/experiment.md``: every key of an experiment file, from the dataclasses of ``mnist_exp/spec/experiment.py``
  (type and default from the field, meaning from the comment beside or above it);
- ``reference/hyperparameters.md``: every lever the model knows, from ``mnist_exp/spec/levers.py`` (type, the seed's
  default, choices or range, meaning from its comment);
- ``reference/cli.md``: every command and flag, from the command line's own parser (``mnist_exp.cli.build_parser``).

``tests/test_docs.py`` checks that each page names every key, lever and flag the code has, each with a meaning.

Figures (tables of measurements) are rendered by the other hook, ``figures.py``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("reference/experiment.md", "reference/hyperparameters.md", "reference/cli.md")


def _comments(source: str) -> dict[int, str]:
    """line number -> the meaning written for the statement on that line: the comment lines just above it (not
    after a blank line) and the comment at its end, joined."""
    lines = source.splitlines()
    out = {}
    for n, line in enumerate(lines, start=1):
        code, _, tail = line.partition("  # ")
        if not code.strip() or code.lstrip().startswith("#"):
            continue
        above, k = [], n - 2
        while k >= 0 and lines[k].lstrip().startswith("#"):
            above.insert(0, lines[k].lstrip()[1:].strip())
            k -= 1
        out[n] = " ".join([*above, tail.strip()]).strip()
    return out


def _class_fields(path: Path) -> dict[str, dict[str, str]]:
    """class name -> field name -> meaning, from the source's comments."""
    source = path.read_text(encoding="utf-8")
    notes = _comments(source)
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = {st.target.id: notes.get(st.lineno, "") for st in node.body
                                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)}
    return found


def _type(hint: str) -> str:
    return hint.replace("typing.", "").replace("NoneType", "None")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "null" if f.default is None else repr(f.default).replace("'", "")
    if f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
        return "{}" if v == {} else "(section)"
    return "required"


def experiment_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every key an experiment file may set, sections expanded."""
    sys.path.insert(0, str(ROOT))
    from mnist_exp.spec import experiment as spec

    meanings = _class_fields(ROOT / "mnist_exp" / "spec" / "experiment.py")
    rows = []
    for f in dataclasses.fields(spec.Experiment):
        if f.name == "path":  # set by the loader, not a key of the file
            continue
        section = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            cls = type(section)
            for sub in dataclasses.fields(cls):
                rows.append((f"{f.name}.{sub.name}", _type(str(sub.type)), _default(sub),
                             meanings[cls.__name__].get(sub.name, "")))
        else:
            rows.append((f.name, _type(str(f.type)), _default(f), meanings["Experiment"].get(f.name, "")))
    return rows


def levers() -> list[tuple[str, str, str, str, str]]:
    """(name, type, seed default, values, meaning) of every hyperparameter the model knows."""
    sys.path.insert(0, str(ROOT))
    from mnist_exp.spec import levers as lv

    path = ROOT / "mnist_exp" / "spec" / "levers.py"
    source = path.read_text(encoding="utf-8")
    lines = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "HP_DEFAULTS":
            lines = {k.value: k.lineno for k in node.value.keys}
    rows = []
    for name, (typ, default) in lv.HP_DEFAULTS.items():
        if name in lv.CHOICES:
            values = ", ".join(lv.CHOICES[name])
        elif name in lv.RANGES:
            lo, hi, lo_in, hi_in = lv.RANGES[name]
            values = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
        elif name == "kernel_size":
            values = ", ".join(map(str, lv.KERNEL_SIZES))
        elif typ is bool:
            values = "true, false"
        else:
            values = "> 0"
        meaning = source.splitlines()[lines[name] - 1].partition("  # ")[2].strip() if name in lines else ""
        rows.append((name, typ.__name__, str(default).lower() if typ is bool else str(default), values, meaning))
    return rows


def cli_commands() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(command, help, [(flag or argument, help)]) of every command of ``mnist-exp``, sub-commands included."""
    sys.path.insert(0, str(ROOT))
    from mnist_exp.cli import build_parser

    out: list = []
    _commands("", build_parser(), out)
    return out


def _commands(prefix: str, parser: argparse.ArgumentParser, out: list) -> None:
    for sub in [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]:
        helps = {c.dest: c.help or "" for c in sub._choices_actions}
        for name, p in sub.choices.items():
            flags = []
            for a in p._actions:
                if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                    continue
                label = ", ".join(a.option_strings) or a.dest
                if a.option_strings and a.nargs != 0:
                    label += f" {a.metavar or a.dest.upper()}"
                choices = f" (one of: {', '.join(map(str, a.choices))})" if a.choices and a.nargs != 0 else ""
                flags.append((label, (a.help or "") % {"default": a.default} + choices))
            examples = (p.epilog or "").partition("examples:\n")[2]
            text = helps.get(name, "") + (f"\n\n```bash\n{examples.replace(chr(10) + '  ', chr(10)).strip()}\n```" if examples
                                          else "")
            out.append((f"{prefix}{name}", text, flags))
            _commands(f"{prefix}{name} ", p, out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def experiment_page() -> str:
    rows = "\n".join(f"| `{k}` | `{_cell(t)}` | `{_cell(d)}` | {_cell(m)} |" for k, t, d, m in experiment_keys())
    return ("# Experiment files\n\nEvery key an experiment file (`experiments/*.yaml`) may set, generated from "
            "`mnist_exp/spec/experiment.py`. `--set KEY=VALUE` sets any of them from the command line; an unknown key "
            "is refused by name.\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n" + rows + "\n")


def hyperparameters_page() -> str:
    rows = "\n".join(f"| `{n}` | {t} | `{d}` | {_cell(v)} | {_cell(m)} |" for n, t, d, v, m in levers())
    return ("# Hyperparameters\n\nEvery lever the model knows, generated from `mnist_exp/spec/levers.py`. A search "
            "space (`search_spaces/*.yaml`) searches any of them; the rest keep the seed's default, which reproduces the "
            "baseline.\n\n| name | type | seed default | values | what it does |\n| --- | --- | --- | --- | --- |\n"
            + rows + "\n")


def cli_page() -> str:
    parts = ["# Command line\n\nEvery command and flag of `mnist-exp`, generated from its own parser "
             "(`mnist-exp COMMAND --help` says the same).\n"]
    for name, help_, flags in cli_commands():
        rows = "\n".join(f"| `{_cell(f)}` | {_cell(h)} |" for f, h in flags)
        parts.append(f"\n## `mnist-exp {name}`\n\n{help_}\n\n| flag or argument | meaning |\n| --- | --- |\n{rows}\n")
    return "".join(parts)


GENERATORS = {"reference/experiment.md": experiment_page, "reference/hyperparameters.md": hyperparameters_page,
              "reference/cli.md": cli_page}


def on_files(files, config):
    """Add the generated pages to the build (MkDocs 1.6: ``File.generated``)."""
    from mkdocs.structure.files import File

    for path, make in GENERATORS.items():
        files.append(File.generated(config, path, content=make()))
    return files
