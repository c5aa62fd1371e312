"""Where a compiled step's time goes: per-op times from a `jax.profiler` trace.

The trace's device events are named after the compiled program's HLO instructions; each
instruction's `op_name` metadata says what JAX traced it from. Under `jax.grad` an op of the
forward pass is named `.../jvp(Model)/...` and its backward counterpart
`.../transpose(jvp(Model))/...`; the rest (loss reductions, gradient clipping, the AdamW
update, metrics) is counted as "optimizer and other".
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"")


def _category(op_name: str) -> str:
  if "transpose(jvp(" in op_name:
    return "backward"
  if "jvp(" in op_name:
    return "forward"
  return "optimizer and other"


def op_names(compiled) -> dict:
  """HLO instruction name -> op_name of the entry computation's instructions."""
  text = compiled.as_text()
  entry = text[text.index("\nENTRY "):]
  return {m.group(1): m.group(2) for m in map(_INSTRUCTION.match, entry.splitlines()) if m}


def profile(compiled, args, steps: int = 10, top: int = 15) -> dict:
  """Runs `compiled(*args)` `steps` times under the profiler (each call's outputs feed the next
  call's first argument, as a train step's state does) and returns per-step op times in ms:
  {"total_ms", "by_category": {category: ms}, "top": [{op_name, instructions, category, ms,
  share}]}, where the top ops sum the same op over all layers."""
  names = op_names(compiled)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    try:
      for _ in range(steps):
        out = compiled(*args)
        jax.block_until_ready(out)
        args = (out[0], *args[1:])
    finally:
      jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      per_op[e["name"]] += e["dur"] / 1e3 / steps  # trace durations are in microseconds.
  total = sum(per_op.values())
  by_category = collections.Counter()
  for op, ms in per_op.items():
    by_category[_category(names[op])] += ms
  # The same op in every layer is one row: block_3/mlp/up -> block_*/mlp/up.
  per_kind, count = collections.Counter(), collections.Counter()
  for op, ms in per_op.items():
    kind = re.sub(r"block_\d+", "block_*", names[op].split("/", 1)[-1])
    per_kind[kind] += ms
    count[kind] += 1
  rows = [{"op_name": kind, "instructions": count[kind], "category": _category(kind), "ms": ms,
           "share": ms / total} for kind, ms in per_kind.most_common(top)]
  return {"total_ms": total, "by_category": dict(by_category), "top": rows}


def format_profile(result: dict) -> str:
  """A short text table: the categories, then the top ops."""
  lines = [f"op time per step: {result['total_ms']:.2f} ms"]
  for cat, ms in sorted(result["by_category"].items(), key=lambda kv: -kv[1]):
    lines.append(f"  {cat:<20} {ms:8.2f} ms  {ms / result['total_ms']:6.1%}")
  lines.append("top ops (summed over layers; n = compiled instructions):")
  for r in result["top"]:
    lines.append(f"  {r['ms']:8.3f} ms {r['share']:6.1%}  {r['category']:<9.9} "
                 f"n={r['instructions']:<3} {r['op_name'][:90]}")
  return "\n".join(lines)
