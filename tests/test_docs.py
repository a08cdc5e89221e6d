"""The documentation (mkdocs.yml, docs/): the generated reference names every experiment key, hyperparameter and
command-line flag the code has, each with a meaning; the README stays short; no page but the changelog carries a
commit hash. (`mkdocs build --strict` itself runs in scripts/test.sh.)"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re

import pytest

from helpers import ROOT


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref():
    return _hook("reference")


def test_every_experiment_key_is_in_the_reference_with_a_meaning(ref):
    from mnist_exp.spec import experiment

    keys = set()
    for f in dataclasses.fields(experiment.Experiment):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys |= {f"{f.name}.{sub.name}" for sub in dataclasses.fields(default)}
        elif f.name != "path":
            keys.add(f.name)
    rows = {k: meaning for k, _, _, meaning in ref.experiment_keys()}
    assert set(rows) == keys
    assert not [k for k, meaning in rows.items() if len(meaning) < 10], "keys without a meaning"
    page = ref.experiment_page()
    assert all(f"| `{k}` |" in page for k in keys)


def test_every_hyperparameter_is_in_the_reference_with_its_values_and_a_meaning(ref):
    from mnist_exp.spec import levers

    rows = {name: (default, values, meaning) for name, _, default, values, meaning in ref.levers()}
    assert set(rows) == set(levers.HP_DEFAULTS)
    assert not [n for n, (_, _, meaning) in rows.items() if len(meaning) < 10], "levers without a meaning"
    assert rows["activation"][1].startswith("relu, elu") and rows["dropout_1"][1] == "[0, 1)"
    page = ref.hyperparameters_page()
    assert all(f"| `{n}` |" in page for n in levers.HP_DEFAULTS)


def _parsers(prefix, parser):
    for sub in [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]:
        for name, p in sub.choices.items():
            yield f"{prefix}{name}", p
            yield from _parsers(f"{prefix}{name} ", p)


def test_every_command_and_flag_is_in_the_reference_with_a_meaning(ref):
    from mnist_exp.cli import build_parser

    page = ref.cli_page()
    commands = list(_parsers("", build_parser()))
    assert {"sweep", "worker", "server-users add", "relocate"} <= {name for name, _ in commands}
    for name, parser in commands:
        section = page.split(f"## `mnist-exp {name}`\n", 1)[1].split("\n## ", 1)[0]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            label = (action.option_strings or [action.dest])[0]
            assert re.search(rf"\| `{re.escape(label)}[ `,]", section), f"mnist-exp {name} {label} not in the reference"
            assert action.help and len(action.help) >= 3, f"mnist-exp {name} {label} has no help"


def test_the_readme_is_short_and_no_page_but_the_changelog_carries_a_commit_hash():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert readme.startswith("# mnist-exp\n\n```bash\npython3.11 -m venv .venv && .venv/bin/pip install -e . && "
                             ".venv/bin/mnist-exp sweep experiments/quick.yaml\nbash scripts/test.sh\n```\n")
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    hashes = {p.relative_to(ROOT).as_posix(): sorted(set(re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b",
                                                                    p.read_text())))
              for p in pages if p.name != "changelog.md"}
    assert {k: v for k, v in hashes.items() if v} == {}


def test_every_commands_help_ends_with_examples_that_parse():
    import contextlib
    import io
    import shlex

    from mnist_exp.cli import build_parser

    parser = build_parser()
    commands = [("", parser), *_parsers("", parser)]
    assert len(commands) >= 17
    for name, p in commands:
        help_ = p.format_help()
        examples = help_.rstrip("\n").split("\nexamples:\n", 1)[1].splitlines()
        assert 1 <= len(examples) <= 2, (name, examples)
        for line in examples:
            for cmd in line.strip().split(" && "):
                argv = shlex.split(cmd, comments=True)
                if argv[0] != "mnist-exp" or "COMMAND" in argv:
                    continue
                with contextlib.redirect_stderr(io.StringIO()) as err:
                    try:
                        parser.parse_args(argv[1:])
                    except SystemExit:
                        raise AssertionError(f"mnist-exp {name} --help: example {cmd!r} does not parse: "
                                             f"{err.getvalue()}") from None


def test_every_figure_marker_renders_a_table_from_its_json():
    figures = _hook("figures")
    markers = [(p, m) for p in (ROOT / "docs").rglob("*.md")
               for m in re.findall(r"^<!-- figures: .* -->$", p.read_text(), flags=re.M)]
    assert len(markers) >= 5
    for page, marker in markers:
        out = figures.on_page_markdown(marker, None, None, None)
        assert out.count("\n| ") >= 2 and ("AMD EPYC" in out or "H200" in out), (page, marker, out[:300])  # the machine
