"""From YAML and `section.field=value` overrides to the plain tree the config dataclasses are built
from, read by each field's declared type.

An override's value is text, read the way its field's annotation says:

    train.steps=20                  int (also 2_000, 0x10); "20.5" or "abc" is refused
    optimizer.lr=1e-3               float (ints accepted; inf/nan as Python spells them)
    checkpoint.resume=false         bool: true/false, yes/no, on/off, 1/0 (any case)
    model.hf_path=/models/q3        str: the text as typed (quotes around it are removed)
    data.train_files=/x.jsonl       list: a single value is a one-element list
    data.train_files=[/x.jsonl,/y.jsonl]    or a bracketed, comma-separated list
    data.train_files="['/x', '/y']" a Python/YAML literal works too
    rollout.normal.seed=none        Optional fields: none/null clear them
    rollout.chat_template_kwargs={enable_thinking: false}   dict: a YAML/Python mapping

YAML values are checked by the same types (a single string for a list field becomes a one-element
list; an int for a float field is accepted). An unknown field, a value of the wrong type, or a value
given to a section is a ConfigError naming the dotted field, with the nearest known names.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from policy_split_megatron.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


class OverrideText(str):
    """The value of a command-line override, still text: read by its field's type."""


def set_override(tree: dict, item: str) -> None:
    """Put `section.field=value` into `tree` (nested dicts) as OverrideText."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    dotted, raw = (part.strip() for part in item.split("=", 1))
    *parents, leaf = dotted.split(".")
    if not dotted or not all(parents + [leaf]):
        raise ConfigError(f"override {item!r}: {dotted!r} is not a section.field name")
    node = tree
    for depth, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents[:depth + 1])} is a value, not a section")
        node = child
    mapping = _mapping_text(raw)
    if mapping is not None:  # section={field: value, ...}: merged into the section, as YAML would be
        node[leaf] = merge_trees(node[leaf], mapping) if isinstance(node.get(leaf), dict) else mapping
    else:
        node[leaf] = OverrideText(raw)


def merge_trees(base: dict, update: dict) -> dict:
    """`update` over `base`, recursively for nested sections."""
    merged = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_trees(merged[key], value) if both else value
    return merged


def _mapping_text(raw: str) -> dict | None:
    """The mapping written as `{...}` (a Python literal or a YAML flow mapping), else None."""
    if not (raw.startswith("{") and raw.endswith("}")):
        return None
    parsed = _literal(raw)
    if parsed is _NOT_A_LITERAL:
        try:
            parsed = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"{raw!r} is neither a Python nor a YAML mapping: {' '.join(str(err).split())}") from None
    return parsed if isinstance(parsed, dict) else None


def normalize_tree(cls: type, tree: Any, path: str = "") -> dict:
    """A copy of `tree` with every value read/checked by the field types of dataclass `cls`."""
    where = path.rstrip(".") or "the configuration"
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} is a section: give its fields (e.g. {path}<field>=...), got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in tree.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f"did you mean {', '.join(path + c for c in close)}? " if close else ""
            raise ConfigError(f"{path}{key}: unknown field; {hint}fields of {where}: {', '.join(names)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            out[key] = normalize_tree(annotation, value, f"{path}{key}.")
        elif isinstance(value, dict) and not _takes_mapping(annotation):
            raise ConfigError(f"{path}{key} is a value, not a section: set it as {path}{key}=...")
        else:
            out[key] = coerce_value(value, annotation, f"{path}{key}")
    return out


def _takes_mapping(annotation: Any) -> bool:
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    return any(a is Any or a is dict or typing.get_origin(a) is dict for a in options)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_A_LITERAL


_NOT_A_LITERAL = object()


def _split_list(text: str) -> list[str]:
    """The items of "[a, 'b,c', d]" (brackets already removed): commas outside quotes split."""
    items, current, quote = [], [], None
    for char in text:
        if quote:
            current.append(char)
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
            current.append(char)
        elif char == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    last = "".join(current).strip()
    if last or items:
        items.append(last)
    return items


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def coerce_value(value: Any, annotation: Any, path: str) -> Any:
    """`value` (OverrideText or a YAML value) as a value of `annotation`, or ConfigError."""
    text = value if isinstance(value, OverrideText) else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)

    def refuse(expected: str) -> ConfigError:
        return ConfigError(f"{path} must be {expected}, got {repr(str(text)) if text is not None else repr(value)}")

    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (text is not None and text.strip().lower() in _NONE)):
            return None
        if len(options) == 1:
            return coerce_value(value, options[0], path)
        return _literal(text) if text is not None and _literal(text) is not _NOT_A_LITERAL else value
    if annotation is Any:
        if text is None:
            return value
        parsed = _literal(text)
        return str(text) if parsed is _NOT_A_LITERAL else parsed
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.strip().lower() in _TRUE | _FALSE:
            return text.strip().lower() in _TRUE
        raise refuse("true or false")
    if annotation is int:
        parsed = _literal(text) if text is not None else value
        if isinstance(parsed, int) and not isinstance(parsed, bool):
            return parsed
        raise refuse("an int")
    if annotation is float:
        parsed = value
        if text is not None:
            parsed = _literal(text)
            if parsed is _NOT_A_LITERAL:
                try:
                    parsed = float(text)  # inf, nan
                except ValueError:
                    raise refuse("a number") from None
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            return float(parsed)
        raise refuse("a number")
    if annotation is str:
        if text is not None:
            return _unquote(str(text).strip())
        if isinstance(value, str):
            return value
        raise refuse("a string")
    if origin in (list, tuple):
        return _coerce_sequence(value, text, origin, args, path, refuse)
    if origin is dict or annotation is dict:
        parsed = value
        if text is not None:
            parsed = _literal(text)
            if parsed is _NOT_A_LITERAL:
                try:
                    parsed = yaml.safe_load(str(text))
                except yaml.YAMLError:
                    raise refuse("a mapping, e.g. {key: value}") from None
        if isinstance(parsed, dict):
            return parsed
        raise refuse("a mapping, e.g. {key: value}")
    # A type this reader does not know (added later): the text as a literal, else as it is.
    if text is not None:
        parsed = _literal(text)
        return str(text) if parsed is _NOT_A_LITERAL else parsed
    return value


def _coerce_sequence(value, text, origin, args, path, refuse):
    fixed = origin is tuple and args and args[-1] is not Ellipsis
    item_types = list(args) if fixed else [args[0] if args else Any]
    if text is not None:
        stripped = text.strip()
        if stripped[:1] in "[(" and stripped[-1:] in "])":
            parsed = _literal(stripped)
            if isinstance(parsed, (list, tuple)):
                items = list(parsed)
            else:  # [a, b] with bare words: split on commas, each item read as an override
                items = [OverrideText(_unquote(item)) for item in _split_list(stripped[1:-1])]
        else:
            items = [OverrideText(stripped)]  # a single value: a one-element list
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif value is None:
        raise refuse("a list")
    else:
        items = [value]  # YAML `train_files: /x.jsonl`
    if fixed and len(items) != len(item_types):
        raise refuse(f"a list of {len(item_types)} values")
    kinds = item_types if fixed else item_types * len(items)
    try:
        coerced = [coerce_value(item, kind, f"{path}[{i}]") for i, (item, kind) in enumerate(zip(items, kinds))]
    except ConfigError:
        raise refuse(f"a list of {', '.join(sorted({_type_name(k) for k in kinds}))}") from None
    return tuple(coerced) if origin is tuple else coerced
