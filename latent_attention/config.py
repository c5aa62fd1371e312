"""Turning `ml_collections.ConfigDict` sections into the frozen dataclasses modules take."""

import dataclasses
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


def check_fields(cfg, section: str, *, positive=(), non_negative=(), choices=None) -> None:
  """Raises one ValueError naming `section.field`, its value and what is allowed."""
  for fields, low, word in ((positive, 1, "positive"), (non_negative, 0, "non-negative")):
    for f in fields:
      v = getattr(cfg, f)
      if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{section}.{f}={v!r} is invalid: must be a {word} integer")
  for f, allowed in (choices or {}).items():
    if getattr(cfg, f) not in allowed:
      raise ValueError(f"{section}.{f}={getattr(cfg, f)!r} is invalid: choose one of "
                       f"{', '.join(allowed)}")
