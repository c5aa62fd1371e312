r"""The KV-cache payoff as a compiled fact (studies/kv_payoff.py): per LM kind, at lm1b's shape and
a 1B-class one, the largest batch of 32k-token sequences whose compiled decode step fits one v5e
chip and one H100, and its tokens/s at the HBM-bandwidth roofline.

  python scripts/kv_payoff.py --json=/tmp/kv_payoff.json
  python scripts/kv_payoff.py --kinds=mha,mla --shapes=lm1b --targets=v5e:1x1

Needs `make preflight-deps`. Each point is a few decode-step compiles (seconds each).
"""

import json
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only devices: no chip is probed.

from absl import flags  # noqa: E402

from latent_attention import cli  # noqa: E402

_KINDS = flags.DEFINE_list("kinds", None, "LM kinds (default: all).")
_SHAPES = flags.DEFINE_list("shapes", None, "lm1b and/or 1b (default: both).")
_TARGETS = flags.DEFINE_list("targets", ["v5e:1x1", "h100:1x1x1"], "One-chip targets.")
_CONTEXT = flags.DEFINE_integer("context", 32768, "Cache length (tokens).", lower_bound=1)
_JSON = flags.DEFINE_string("json", None, "Write the table (studies/pages.py format) here.")


def main(argv):
  del argv
  from latent_attention.studies import kv_payoff  # pylint: disable=import-outside-toplevel
  from latent_attention.studies.pages import render_table  # pylint: disable=import-outside-toplevel
  for kind in _KINDS.value or ():
    if kind not in kv_payoff.KINDS:
      raise ValueError(f"--kinds: {kind!r} is invalid: choose from {', '.join(kv_payoff.KINDS)}")
  for shape in _SHAPES.value or ():
    if shape not in kv_payoff.SHAPES:
      raise ValueError(f"--shapes: {shape!r} is invalid: choose from "
                       f"{', '.join(kv_payoff.SHAPES)}")
  out = kv_payoff.table(_TARGETS.value, _SHAPES.value or tuple(kv_payoff.SHAPES),
                        _KINDS.value or kv_payoff.KINDS, _CONTEXT.value)
  out.update(command="scripts/kv_payoff.py " + " ".join(f"--{k}={v}" for k, v in (
      ("kinds", _KINDS.value), ("shapes", _SHAPES.value), ("context", _CONTEXT.value)) if v),
             machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
                     "(compile only)",
             date=time.strftime("%Y-%m-%d"),
             provenance=f"bench/preflight.py decode steps for {', '.join(_TARGETS.value)}; "
                        f"wall {out['wall_s']:.0f} s")
  print(render_table(out))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
