"""Reading suite files: YAML as ML users write it, ``include:`` merging, ``--set`` overrides.

**YAML.** Files are read with ``yaml.safe_load``'s loader plus two changes: a repeated key is
an error (plain YAML keeps the last one silently), and numbers are read as YAML 1.2 reads them —
``5e-4``, ``1E-5``, ``.5`` and ``1e3`` are floats (YAML 1.1, which PyYAML implements, reads
the first two as strings). ``--set`` values and ``best_hparams.yaml`` use the same loader.

**Merging.** ``include`` files are loaded (recursively, cycles refused) and deep-merged in
order, then the including file over them: mappings merge key by key, lists and scalars are
replaced. :class:`Origins` remembers which file set each part, so an error names that file.

**Overrides.** ``--set key=value`` applies to the merged mapping afterwards. A dotted key walks
mappings (``train.optimizer.lr=1e-3``, ``methods.kd+ls.hparams.temperature=3``) and ``[i]``
indexes lists (``tasks.digits.pairs[0].student.name=tiny_mlp``). What a key may address comes
from the schema (:mod:`cist_bench.config.schema`): an unknown key is refused with a
did-you-mean, a missing section the schema defines (``train`` of a task) is created, and the
value's type is checked by the schema afterwards, like every other value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cist_bench.config.schema import Loc, Node, child, node
from cist_bench.config.schema import SuiteFile as _Root
from cist_bench.errors import ConfigError
from cist_bench.registry import did_you_mean
from cist_bench.spec import render_loc


class SuiteError(ConfigError):
    """A suite is invalid. The message reads ``"<file>: <field.path>: <problem>"``."""

    def __init__(self, file: str | Path, field: str | None, problem: str) -> None:
        self.file = str(file)
        self.problem = problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}", field=field)


# ----------------------------------------------------------------------------------- YAML

#: YAML 1.2 floats: a dot or an exponent (``5e-4``, ``1E-5``, ``.5``, ``1.``, ``1e3``), or inf/nan
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class SuiteLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader with YAML 1.2 floats and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let the base class report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


SuiteLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text as suite files are parsed (see the module docstring)."""
    return yaml.load(text, Loader=SuiteLoader)  # a SafeLoader subclass


def read_yaml(path: Path, referrer: tuple[Path, Loc] | None = None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        if referrer is None:
            raise SuiteError(path, None, f"cannot read the suite file: {exc.strerror or exc}") from None
        file, loc = referrer
        raise SuiteError(file, render_loc(loc), f"cannot read included file {str(path)!r}: "
                         f"{exc.strerror or exc}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(path, None, f"{where}invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SuiteError(path, None, f"a suite file must be a YAML mapping, got {type(data).__name__}")
    return data


# -------------------------------------------------------------------------------- merging


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``: mappings merge recursively; anything else is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Origins:
    """Which file set each part of the merged mapping, so errors name the right file.

    Entries map key paths to files; a path's file is that of its longest recorded prefix.
    """

    def __init__(self, file: Path | None = None) -> None:
        self.files: dict[tuple[str, ...], Path] = {(): file} if file is not None else {}

    def lookup(self, loc: Loc, default: Path) -> Path:
        keys: list[str] = []
        for seg in loc:
            if isinstance(seg, int):
                break  # lists are replaced whole, so a list's items come from the list's file
            keys.append(seg)
        for n in range(len(keys), -1, -1):
            if tuple(keys[:n]) in self.files:
                return self.files[tuple(keys[:n])]
        return default

    def replace(self, prefix: tuple[str, ...], source: Origins, default: Path) -> None:
        """The subtree at ``prefix`` now comes from ``source`` (an origin map of the same root)."""
        self.files = {k: v for k, v in self.files.items() if k[: len(prefix)] != prefix}
        self.files[prefix] = source.lookup(prefix, default)
        self.files.update({k: v for k, v in source.files.items()
                           if len(k) > len(prefix) and k[: len(prefix)] == prefix})

    def merge(self, base: Mapping[str, Any], overlay: Mapping[str, Any], source: Origins,
              default: Path, prefix: tuple[str, ...] = ()) -> None:
        """Record the origins of ``deep_merge(base, overlay)`` (call before merging)."""
        for key, value in overlay.items():
            path = (*prefix, str(key))
            if isinstance(base.get(key), dict) and isinstance(value, dict):
                self.merge(base[key], value, source, default, path)
            else:
                self.replace(path, source, default)


def load_tree(path: Path, stack: tuple[Path, ...] = (),
              referrer: tuple[Path, Loc] | None = None) -> tuple[dict[str, Any], Origins]:
    """``path`` with its includes merged in, and where each part came from."""
    own = read_yaml(path, referrer)
    includes = own.pop("include", None)
    if includes is None:
        return own, Origins(path)
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(path, "include", f"expected a list of file paths, got {includes!r}")
    merged: dict[str, Any] = {}
    origins = Origins()
    for i, name in enumerate(includes):
        target = (path.parent / name).resolve()
        if target in stack or target == path.resolve():
            chain = " → ".join(p.name for p in (*stack, path.resolve(), target))
            raise SuiteError(path, f"include[{i}]", f"include cycle: {chain}")
        if not target.is_file():
            raise SuiteError(path, f"include[{i}]", f"included file {name!r} not found "
                             f"(looked for {target}; paths are relative to the including file)")
        sub, sub_origins = load_tree(target, (*stack, path.resolve()), (path, ("include", i)))
        origins.merge(merged, sub, sub_origins, target)
        merged = deep_merge(merged, sub)
    origins.merge(merged, own, Origins(path), path)
    return deep_merge(merged, own), origins


# ------------------------------------------------------------------------------ overrides


def _tokens(key: str) -> list[str | int]:
    """``a.b[0].c`` → ``["a", "b", 0, "c"]`` (dots inside names are re-joined while walking)."""
    out: list[str | int] = []
    for part in key.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", part)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ValueError(f"malformed key {key!r}")
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return out


def apply_override(data: dict[str, Any], origins: Origins, file: Path, text: str,
                   root: Any = _Root) -> None:
    """Apply one ``--set key=value`` to the merged mapping ``data`` (in place)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    where = f"--set {text}"
    if not sep or not key:
        raise SuiteError(file, None, f"{where}: expected key=value")
    try:
        tokens = _tokens(key)
        value = load_yaml(raw)
    except ValueError as exc:
        raise SuiteError(file, key, f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SuiteError(file, key, f"{where}: the value is not valid YAML: {exc}") from None
    if tokens[0] == "include":
        raise SuiteError(file, "include", f"{where}: includes cannot be overridden")

    here: Any = data
    schema: Node = node(root)
    loc: list[str | int] = []
    i = 0
    while True:
        tok = tokens[i]
        shown = render_loc(tuple(loc))
        if schema.kind == "value":
            raise SuiteError(file, shown, f"{where}: {shown} is a value, not a section; set it whole "
                             "(e.g. seeds=[0, 1])")
        if schema.kind == "list":
            if isinstance(tok, str) and tok.isdigit():
                tok = int(tok)  # pairs.0 reads as pairs[0]
            if not isinstance(tok, int) or not isinstance(here, list):
                raise SuiteError(file, shown, f"{where}: expected a list index [i] here")
            if tok >= len(here):
                raise SuiteError(file, render_loc((*loc, tok)),
                                 f"{where}: index out of range (the list has {len(here)} items)")
        else:
            if isinstance(tok, int) or not isinstance(here, dict):
                raise SuiteError(file, shown, f"{where}: {shown or 'this'} is not a mapping")
            # names may contain dots (method labels such as ``kd.v2``): take the longest existing
            n = 1
            while i + n < len(tokens) and isinstance(tokens[i + n], str):
                n += 1
            for m in range(n, 0, -1):
                joined = ".".join(str(t) for t in tokens[i : i + m])
                if joined in here or m == 1:
                    tok, i = joined, i + m - 1
                    break
            if schema.kind == "record" and tok not in schema.fields:
                raise SuiteError(file, render_loc((*loc, tok)),
                                 f"{where}: unknown key; {did_you_mean(str(tok), list(schema.fields))}")
        below = child(schema, tok)
        assert below is not None
        loc.append(tok)
        if i == len(tokens) - 1:
            here[tok] = value
            if all(isinstance(t, str) for t in loc):  # (list items keep their list's origin)
                origins.replace(tuple(str(t) for t in loc), Origins(file), file)
            return
        if isinstance(here, dict) and here.get(tok) is None:
            # create a missing section only where a record defines it (a task's train, options,
            # ...), never a new entry of a free mapping on the way (a task, a method)
            if schema.kind != "record" or below.kind not in ("record", "map"):
                raise SuiteError(file, render_loc(tuple(loc)), f"{where}: no such entry in the suite")
            here[tok] = {}
        here, schema = here[tok], below
        i += 1
