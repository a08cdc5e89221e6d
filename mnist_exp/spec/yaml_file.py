"""Reading a user's YAML file: UTF-8 only, duplicate keys refused, every fault one ConfigError line."""

from __future__ import annotations

from pathlib import Path

import yaml

from mnist_exp.runtime.errors import ConfigError


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are not keys
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read(path: Path):
    """Parsed content of ``path`` (None for an empty file). ConfigError names the file and the line."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{raw[e.start]:02x} at line {line}); "
                          "save it as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (holds NUL bytes)")
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None
