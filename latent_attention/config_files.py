"""Loading `configs/*.py:arg` files outside absl flags (sweeps, tests, eval), and naming the
field a dotted override key misses."""

import difflib
import glob
import importlib.util
import os

import ml_collections


def load(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> get_config(arg), as `config_flags.DEFINE_config_file` does."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    siblings = sorted(glob.glob(os.path.join(folder, "*.py"))) if os.path.isdir(folder) else []
    raise FileNotFoundError(f"config file {path!r} does not exist; "
                            + (f"choose one of {', '.join(siblings)}" if siblings
                               else f"there is no folder {folder!r}"))
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A saved config (JSON dict) back to a locked ConfigDict."""
  config = ml_collections.ConfigDict(d)
  config.lock()
  return config


def unknown_field(config, dotted_key: str) -> str | None:
  """Why `dotted_key` names no field of `config` (with the closest names), or None."""
  section, where = config, "the config"
  for part in dotted_key.split("."):
    if not isinstance(section, (ml_collections.ConfigDict, dict)):
      return f"{where} is a {type(section).__name__}, not a section with fields"
    fields = sorted(section.keys())
    if part not in fields:
      close = difflib.get_close_matches(part, fields, n=1)
      hint = f"did you mean {close[0]}? " if close else ""
      return f"{where} has no field {part!r}; {hint}fields: {', '.join(fields)}"
    section, where = section[part], (part if where == "the config" else f"{where}.{part}")
  return None
