r"""Input-pipeline throughput per dataset kind vs the rate its train step consumes (a benchmark).

  python scripts/benchmark_input.py                          # every case, worker_count 0
  python scripts/benchmark_input.py --cases=lm1b_packed,mqar_zoology --worker_counts=0,2
  python scripts/benchmark_input.py --loop=lm_shakespeare.py:nanogpt_cpu \
      --loop=lm_mqar.py:mha,zoology

Per case (bench/input.py): examples/s and tokens/s of `dataset.train_loader` on this host
(batches after the first), the first batch's latency, and the examples/s the config's train
step consumes: measured on this device at --small_batch, estimated for one v5e chip and one
H100 at 50% MFU from the step's XLA FLOPs. `v5e_headroom` = pipeline / v5e chip.
`lm1b_packed` is configs/lm1b.py:mla's packing path over tiny_shakespeare's lines as documents
(lm1b is not prepared offline; the per-batch cost does not depend on the text) with an
8,000-piece tokenizer (the lines hold too few distinct pieces for 32k). With --ceilings (the
default), this host's bounds per case: Grain's per-record floor at one record per batch, and
the batch's bytes gathered alone on every core. With --loop, instead: train.py's loop time per
step beside the blocked step's, alternating for --rounds rounds in one process.
"""

import contextlib
import datetime
import json
import os
import sys
import tempfile
import time

from absl import flags

from latent_attention import cli, config_files

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (config spec, overrides of config.data); lm1b_packed also reads substitute text.
CASES = {
    "shakespeare_char": ("lm_shakespeare.py:mla", {}),
    "shakespeare_sentencepiece": ("lm_shakespeare.py:mla,sentencepiece", {}),
    "lm1b_packed": ("lm1b.py:mla", {"vocab_size": 8000}),
    "lm1b_synthetic": ("lm1b.py:mla,synthetic", {}),
    "mqar_zoology": ("lm_mqar.py:mha,zoology", {}),
    "fashion_mnist": ("perceiver_fashion_mnist.py:mla", {}),
}
_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to run, of {', '.join(CASES)}.")
_BATCHES = flags.DEFINE_integer("batches", 300, "Timed batches after the first (many more than "
                                 "Grain's read-ahead holds: a steady rate).", lower_bound=1)
_SMALL = flags.DEFINE_integer("small_batch", 2, "Batch of the compiled step (FLOPs, this "
                              "device's rate).", lower_bound=1)
_WORKERS = flags.DEFINE_list("worker_counts", ["0"], "data.worker_count values to time.")
_LOOP = flags.DEFINE_multi_string("loop", [], "A config spec (configs/FILE:ARG; repeatable) "
                                  "whose training loop to time beside the blocked step instead "
                                  "(bench/input.py loop_vs_step).")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 200, "Loop steps per --loop config.",
                                   lower_bound=8)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating loop / blocked-step rounds per --loop "
                                "config (the ratio is their median).", lower_bound=1)
_CEILINGS = flags.DEFINE_bool("ceilings", True, "Also measure this host's ceilings per case: "
                              "Grain's per-record floor and the batch's bytes gathered alone.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional raw JSON file: command, machine, date, "
                              "wall time and the rows (studies/input_tables.py builds the "
                              "page's tables from it).")


def main(argv):
  del argv
  start = time.perf_counter()
  # JAX loads after flag parsing.
  from latent_attention.bench import decode as decode_bench, input as input_bench
  unknown = [c for c in _CASES.value if c not in CASES]
  if unknown:
    raise ValueError(f"--cases={unknown[0]} is invalid: choose from {', '.join(CASES)}")
  rows = []
  for spec in _LOOP.value:
    with tempfile.TemporaryDirectory() as workdir:
      row = input_bench.loop_vs_step(config_files.load(os.path.join(_ROOT, "configs", spec)),
                                     workdir, _LOOP_STEPS.value, rounds=_ROUNDS.value)
    rows.append({"config": spec, **row})
    ratios = ", ".join(f"{r['loop_over_blocked']:.3f}" for r in row["rounds"])
    print(f"{spec:>32}: loop / blocked step per round {ratios}; median "
          f"{row['loop_over_blocked']:.3f}", flush=True)
  with tempfile.TemporaryDirectory() as cache:
    for name in [] if _LOOP.value else _CASES.value:
      spec, overrides = CASES[name]
      config = config_files.load(os.path.join(_ROOT, "configs", spec))
      config.data.update(overrides, token_cache_dir=cache)
      if "vocab_size" in overrides:
        config.model.vocab_size = overrides["vocab_size"]
      text = (input_bench.text_as_documents(input_bench.shakespeare_lines())
              if name == "lm1b_packed" else contextlib.nullcontext())
      with text:
        for row in input_bench.benchmark(config, _BATCHES.value, _SMALL.value,
                                         [int(w) for w in _WORKERS.value], _CEILINGS.value):
          rows.append({"case": name, "config": spec, **row})
          print(f"{name:>26} workers={row['worker_count']} batch={row['batch']}: "
                f"{row['ms_per_batch']:.2f} ms/batch, {row['examples_per_s']:,.0f} ex/s, "
                f"{row['tokens_per_s']:,.0f} tok/s, first {row['first_batch_s']:.2f} s | "
                f"v5e {row['v5e_examples_per_s']:,.0f} ex/s (est.), H100 "
                f"{row['h100_examples_per_s']:,.0f} (est.), here "
                f"{row['this_device_examples_per_s']:,.1f} | headroom "
                f"{row['v5e_headroom']:.1f}x", flush=True)
          if "grain_record_us" in row:
            print(f"{'':>26} ceilings: Grain {row['grain_record_us']:.0f} us/record -> "
                  f"{row['grain_ceiling_examples_per_s']:,.0f} ex/s; gather alone "
                  f"({row['bytes_per_example']:,} B/example) "
                  f"{row['gather_ceiling_examples_per_s']:,.0f} ex/s", flush=True)
  if _OUTPUT.value:  # the raw file of studies/input_tables.py.
    with open(_OUTPUT.value, "w") as f:
      json.dump({"command": " ".join(["python", *sys.argv]),
                 "machine": decode_bench.device_name(),
                 "date": datetime.date.today().isoformat(),
                 "wall_s": time.perf_counter() - start, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
