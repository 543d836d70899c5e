"""Typed config dataclasses <-> YAML presets <-> command-line options.

A stage defines ``@dataclass class XConfig`` with a one-line docstring (a string literal)
under each field and checks in ``__post_init__``. This module turns such a class into argparse
options (the docstrings become ``--help``), loads YAML presets, applies overrides and refuses
unknown keys with a one-line error.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from catalogtune.core.util import CatalogtuneError, atomic_write

T = TypeVar("T")


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass to the string literal written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) of an annotation such as ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise a one-line error."""
    inner, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise CatalogtuneError(f"config key {name!r} may not be empty")
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if inner in (int, float, str):
            if inner is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return inner(value)
        if inner is Path:
            return Path(value)
        if origin in (list, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            (arg,) = typing.get_args(inner)[:1] or (str,)
            items = [_coerce(name, arg, v.strip() if isinstance(v, str) else v) for v in items]
            return items if origin is list else tuple(items)
    except (TypeError, ValueError):
        raise CatalogtuneError(f"config key {name!r}: cannot read {value!r} as {inner}") from None
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type[T], preset: str | Path | dict | None = None, **overrides: Any) -> T:
    """Make ``cls`` from defaults, then a YAML preset (path or dict), then ``overrides``.

    Keys that are not fields are refused; ``None`` overrides mean "not given".
    """
    values: dict[str, Any] = {}
    if preset is not None:
        values.update(load_yaml(preset) if not isinstance(preset, dict) else preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise CatalogtuneError(
            f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(names))})"
        )
    hints = _hints(cls)
    kwargs = {k: _coerce(k, hints[k], v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CatalogtuneError(f"{cls.__name__}: {exc}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error if missing or malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CatalogtuneError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CatalogtuneError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CatalogtuneError(f"config file {path} must hold a mapping of keys to values")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain YAML/JSON-friendly values."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, (list, tuple)):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


def save(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    import yaml

    with atomic_write(path) as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


class _CommaList(argparse.Action):
    """A list option that may be repeated and comma-separated: ``--x a --x b,c`` -> [a, b, c]."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items += [v.strip() for v in str(values).split(",") if v.strip()]
        setattr(namespace, self.dest, items)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` options for each field of ``cls`` (default None = not given)."""
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        # argparse %-formats help text: a literal "30%" in a field's doc must reach it as "30%%"
        help_ = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        inner, _ = _base_type(hints[f.name])
        if inner is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif typing.get_origin(inner) in (list, tuple):
            # repeatable and comma-separated: --drop-kinds a --drop-kinds b == --drop-kinds a,b
            parser.add_argument(flag, dest=f.name, action=_CommaList, default=None, metavar="A[,B]", help=help_)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_)


def from_namespace(cls: type[T], ns: argparse.Namespace, preset: str | Path | None = None, **extra: Any) -> T:
    """Build ``cls`` from a preset plus the options the user actually gave on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    given.update({k: v for k, v in extra.items() if v is not None})
    return build(cls, preset, **given)


def parse(cls: type[T], argv: list[str], prog: str, description: str | None = None) -> T:
    """Parse ``argv`` into ``cls``: one ``--field`` option per dataclass field, nothing else."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, cls)
    return from_namespace(cls, parser.parse_args(argv))
