"""``--method-args NAME:KEY=VALUE[,KEY=VALUE...]``: method parameters from the command line.

As lm-evaluation-harness takes ``--model_args pretrained=...,dtype=float16``, ``erasebench run`` takes
``--method-args uce:erase_scale=2.0,preserve_scale=0.5`` (repeatable, one method each time), so a sweep needs no
YAML file per variant. The parameters go into the ``params`` of every entry of the run's ``methods`` whose ``name``
(or ``label``) is NAME, over the params the config file gave; the resolved config, and so the manifest, holds them.

A value is read as the same text would be read in YAML (``2.0``, ``true``, ``[a, b]``, ``paper``), then typed by
the method's config as a YAML ``params`` value is (:func:`methods.base.build_config`). Where YAML and the field's
type disagree on a plain scalar, the field decides: ``1e-5`` is a float for a float field (PyYAML reads it as a
string), ``2`` stays the text ``"2"`` for a string field. Every problem is one line naming the flag.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

FLAG = "--method-args"
USAGE = "give METHOD:KEY=VALUE[,KEY=VALUE...], e.g. uce:erase_scale=2.0"


class MethodArgsError(ValueError):
    """A malformed or unusable ``--method-args`` value; the message is one line naming it."""


def _split_pairs(text: str) -> list[str]:
    """``a=1,b=[x, y],c='p,q'`` -> ``["a=1", "b=[x, y]", "c='p,q'"]``: commas inside brackets or quotes stay."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_method_args(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["uce:erase_scale=2.0", "uce:lamb=0.1"]`` -> ``{"uce": {"erase_scale": "2.0", "lamb": "0.1"}}`` (the raw
    value texts, typed later by :func:`typed_params`); a later item wins for the same method and key."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        name, sep, rest = item.partition(":")
        name = name.strip()
        if not sep or not name or not rest.strip():
            raise MethodArgsError(f"{FLAG} {item!r}: {USAGE}")
        params = out.setdefault(name, {})
        for pair in _split_pairs(rest):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise MethodArgsError(f"{FLAG} {item!r}: {pair!r} is not KEY=VALUE; {USAGE}")
            params[key.strip()] = value.strip()
    return out


def _scalar_types(expected: Any) -> set[type]:
    """The plain types a field accepts: ``float | None`` -> {float}; ``Literal['a', 'b']`` -> {str}."""
    if expected is None:
        return set()
    origin = typing.get_origin(expected)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return set().union(*(_scalar_types(a) for a in typing.get_args(expected) if a is not type(None)))
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(expected)}
    return {expected} if expected in (bool, int, float, str) else set()


def typed_value(text: str, expected: Any) -> Any:
    """The value ``text`` stands for: YAML's reading, with the field's type deciding a plain scalar."""
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"{text!r} is not a YAML value ({str(exc).splitlines()[0]})") from None
    kinds = _scalar_types(expected)
    if isinstance(value, str) and kinds & {int, float}:
        for kind in (int, float):
            if kind in kinds:
                try:
                    return kind(text)
                except ValueError:
                    continue
    if kinds == {str} and isinstance(value, (bool, int, float)):
        return text
    return value


def typed_params(method_cls: type, raw: dict[str, str], owner: str) -> dict[str, Any]:
    """``raw`` typed by ``method_cls``'s config and checked as the config checks YAML params (unknown keys, wrong
    types); raises :class:`MethodArgsError` with one line."""
    from methods.base import build_config

    config_class = method_cls.config_class
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # a plugin's config whose annotations do not resolve: YAML's reading alone
        hints = {}
    params: dict[str, Any] = {}
    try:
        for key, text in raw.items():
            params[key] = typed_value(text, hints.get(key))
        config = build_config(config_class, params, owner)
    except (TypeError, ValueError) as exc:
        raise MethodArgsError(f"{FLAG} {owner}: {str(exc).splitlines()[0]}") from None
    return {key: getattr(config, key) for key in params}  # as the config types them: erase_scale=2 -> 2.0


def apply_method_args(methods: list | None, args: dict[str, dict[str, str]]) -> list:
    """The run config's ``methods`` list with each ``--method-args`` method's params merged in (the flag's win).

    A NAME that is no entry's ``name`` or ``label`` is an error: a misspelt method (with the registry's "did you
    mean"), or one the run does not include (add it with ``--methods`` or to the config)."""
    from methods import METHODS

    if not args:
        return methods
    if methods is None:
        first = next(iter(args))
        raise MethodArgsError(f"{FLAG} {first}: the run names no methods (the default methods run with their "
                              f"defaults); name the methods to run with --methods or in the config's methods")
    entries = [dict(m) if isinstance(m, dict) else m for m in methods]
    for name, raw in args.items():
        hits = [m for m in entries if isinstance(m, dict) and name in (m.get("name"), m.get("label"))]
        if not hits:
            try:
                METHODS.get(name)
            except KeyError as exc:
                raise MethodArgsError(f"{FLAG} {name}: {exc}") from None
            run_names = ", ".join(str(m.get("label") or m.get("name")) for m in entries if isinstance(m, dict))
            raise MethodArgsError(f"{FLAG} {name}: {name!r} is not among the run's methods ({run_names}); add it "
                                  f"with --methods or to the config's methods")
        for entry in hits:
            try:
                method_cls = METHODS.get(entry.get("name"))
            except KeyError:
                continue  # the config check names the unknown method
            params = typed_params(method_cls, raw, name)
            before = entry.get("params") or {}
            entry["params"] = {**before, **params} if isinstance(before, dict) else before  # else: the schema's error
    return entries
