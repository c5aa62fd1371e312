"""Turning `ml_collections.ConfigDict` sections into the frozen dataclasses modules take, and
the type and range checks those run on construction."""

import dataclasses
import math
import types
import typing
from typing import Any, Mapping

import ml_collections


def to_dict(section: Any) -> dict:
  if isinstance(section, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return section.to_dict()
  return dict(section)


def from_config(cls, section: Mapping, where: str, **nested):
  """cls(**section) with a clear error for unknown fields; `nested` overrides sub-sections."""
  values = to_dict(section)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"{where}.{unknown[0]} is not a field of {cls.__name__}; "
                     f"valid fields: {', '.join(sorted(names))}")
  values.update(nested)
  return cls(**values)


def default_section(cls) -> ml_collections.ConfigDict:
  """A ConfigDict holding every field of `cls` at its default (for lock_config overrides)."""
  return ml_collections.ConfigDict(dataclasses.asdict(cls()))


def fail(where: str, value, allowed: str):
  """Raises the one-line error of a bad config value: `where=value is invalid: allowed`."""
  raise ValueError(f"{where}={value!r} is invalid: {allowed}")


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
               type(None): "None"}


def _is_a(value, annotation) -> bool:
  """Whether `value` has the field type `annotation` (an int is a float; a bool no int)."""
  if isinstance(annotation, types.UnionType):
    return any(_is_a(value, a) for a in typing.get_args(annotation))
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, annotation)


def check_types(cfg, section: str) -> None:
  """Raises one ValueError for the first field of dataclass `cfg` not of its annotated type."""
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    if not _is_a(v, f.type):
      kinds = typing.get_args(f.type) if isinstance(f.type, types.UnionType) else (f.type,)
      fail(f"{section}.{f.name}", v,
           "must be " + " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds))


def check_fields(cfg, section: str, *, positive=(), non_negative=(), positive_numbers=(),
                 non_negative_numbers=(), choices=None) -> None:
  """Types, then ranges and choices; raises one ValueError naming `section.field`, its value and
  what is allowed. Numbers must also be finite."""
  check_types(cfg, section)
  for fields, low, word in ((positive, 1, "positive"), (non_negative, 0, "non-negative")):
    for f in fields:
      if getattr(cfg, f) < low:
        fail(f"{section}.{f}", getattr(cfg, f), f"must be a {word} integer")
  for fields, word in ((positive_numbers, "positive"), (non_negative_numbers, "non-negative")):
    for f in fields:
      v = getattr(cfg, f)
      if not (math.isfinite(v) and (v > 0 if word == "positive" else v >= 0)):
        fail(f"{section}.{f}", v, f"must be a finite {word} number")
  for f, allowed in (choices or {}).items():
    if getattr(cfg, f) not in allowed:
      fail(f"{section}.{f}", getattr(cfg, f), f"choose one of {', '.join(allowed)}")
