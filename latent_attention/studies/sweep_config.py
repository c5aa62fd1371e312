"""The fields of a sweep file (studies/sweep.py's docstring describes them) and their checks;
the config of each run is checked by `sweep.check_configs`."""

import os

from latent_attention.config import fail
from latent_attention.studies import results

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = ("base", "overrides", "runlocal_overrides", "runs", "grid", "benchmark", "decode",
          "quality", "seeds", "reference")
RUN_FIELDS = ("name", "overrides", "base")
# The integer fields of `benchmark` and `decode`, each with its lowest allowed value.
POINT_FIELDS = {"benchmark": {"steps": 1, "warmup": 0},
                "decode": {"context": 1, "batch": 1, "steps": 1}}


def check_sweep(sweep) -> None:
  """Raises one ValueError naming the first bad field of `sweep` (a sweep file's ConfigDict)."""
  unknown = sorted(set(sweep) - set(FIELDS))
  if unknown:
    raise ValueError(f"sweep {unknown[0]} is not a sweep field; fields: {', '.join(FIELDS)}")
  for f in ("overrides", "runlocal_overrides", "grid", *POINT_FIELDS):
    if sweep.get(f) is not None and not hasattr(sweep[f], "keys"):
      fail(f"sweep {f}", sweep[f], "must be a mapping")
  for f, lowest in POINT_FIELDS.items():
    for key, value in (sweep.get(f) or {}).items():
      if key not in lowest:
        raise ValueError(f"sweep {f}.{key} is not a field; {f} has {', '.join(lowest)}")
      if not isinstance(value, int) or isinstance(value, bool) or value < lowest[key]:
        fail(f"sweep {f}.{key}", value, f"must be an integer >= {lowest[key]}")
  decode = sweep.get("decode")
  if decode and not {"context", "batch"} <= set(decode):
    fail("sweep decode", dict(decode), "give its context and batch (and steps, default 16)")
  if decode and decode.get("steps", 16) >= decode["context"]:
    fail("sweep decode.steps", decode.get("steps", 16),
         f"must be < decode.context={decode['context']} (the prefill is context - steps)")
  runs = sweep.get("runs") or []
  if not isinstance(runs, (list, tuple)):
    fail("sweep runs", runs, "must be a list of {name, overrides, base}")
  for i, run in enumerate(runs):
    if not hasattr(run, "keys") or "name" not in run or set(run) - set(RUN_FIELDS) or (
        not hasattr(run.get("overrides") or {}, "keys")):
      fail(f"sweep runs[{i}]", run, "must be a dict with a name, and optionally overrides "
           "(a dict) and a base")
  for key, values in (sweep.get("grid") or {}).items():
    if not isinstance(values, (list, tuple)) or not values:
      fail(f"sweep grid[{key!r}]", values, "give a non-empty list of values")
  for i, base in [(None, sweep.get("base"))] + [(i, r.get("base")) for i, r in enumerate(runs)]:
    if base is not None and not (isinstance(base, str) and os.path.isfile(
        os.path.join(REPO_ROOT, base.partition(":")[0]))):
      fail("sweep base" if i is None else f"sweep runs[{i}].base", base,
           "give an existing config file and its argument, 'configs/<file>.py[:arg]'")
  results.check_quality(sweep.get("quality") or "perplexity")
