"""Config validation (training/config.py and the dataclass beside each section): every field of
every config and sweep file refuses bad values with one line naming it, before anything is built
or written; the relations between fields; the shipped configs pass.

Everything runs in-process: validation comes before JAX does any work. The entry points
(train.py, eval.py overrides, sweeps) are tested in test_validation_entry_points.py.
"""

import math
import os

import ml_collections
import pytest

from latent_attention import config_files
from latent_attention.studies import sweep as sweep_lib
from latent_attention.training.config import validate_config

from conftest import ROOT

VARIANTS = ("mha", "gqa", "mqa", "mla", "gla", "gta", "tpa", "lowrank_gated", "head_gated")
# Every argument of every config file at least once, runlocal included (each spec is walked
# field by field; `test_every_shipped_config_and_sweep_passes` takes every combination).
WALKED = [
    *(f"lm_shakespeare.py:{v},runlocal" for v in VARIANTS),
    "lm_shakespeare.py", "lm_shakespeare.py:perceiver_ar",
    "lm_shakespeare.py:perceiver_ar,runlocal",
    "lm_shakespeare.py:nanogpt_cpu", "lm_shakespeare.py:sentencepiece",
    "lm_shakespeare.py:sentencepiece,runlocal",
    "lm1b.py", "lm1b.py:gqa,runlocal", "lm1b.py:mla,synthetic", "lm1b.py:tpa,synthetic,runlocal",
    "lm_mqar.py", "lm_mqar.py:mla,runlocal", "lm_mqar.py:perceiver_ar",
    "lm_mqar.py:perceiver_ar,runlocal", "lm_mqar.py:mla,zoology",
    "lm_mqar.py:gqa,zoology,multihead",
    "lm_mqar.py:head_gated,zoology,multihead,runlocal",
    "lm_decode.py", "lm_decode.py:runlocal",
    "perceiver_fashion_mnist.py", "perceiver_fashion_mnist.py:mla,runlocal",
    "perceiver_fashion_mnist.py:pixels", "perceiver_fashion_mnist.py:gqa,patches,induced",
    "perceiver_fashion_mnist.py:mqa,conv1x1,mnist,runlocal",
]
SWEEPS = ["lm_attention.py", "lm_attention.py:large", "lm1b_attention.py", "mla_rank.py",
          "mqar.py", "mqar.py:t128", "mqar.py:full", "mqar.py:zoology", "mqar.py:zoology_lr",
          "mqar.py:zoology_heads", "mqar.py:zoology_lr_tight", "perceiver_latents.py"]

# Fields whose every value of their type is valid: only a value of another type is refused.
FREE = {
    "model.tie_embeddings": "a switch: a tied or a separate output head",
    "model.attention.mla_kv_norm": "a switch: the latent with or without its RMSNorm",
    "model.cross_attention.mla_kv_norm": "a switch, as model.attention.mla_kv_norm",
    "data.data_dir": "any directory; None is $TFDS_DATA_DIR (read when the data loads)",
    "data.token_cache_dir": "any directory; None is ~/.cache/latent_attention (made when needed)",
    "data.scored_positions": "a switch of the synthetic tasks (refused for text data and for "
                             "perceiver_ar: test_relations_between_fields)",
    "data.mqar_random_filler": "a switch of the MQAR generator",
    "data.mqar_distinct_values": "a switch of the MQAR generator",
    "data.mqar_show_answer": "a switch of the MQAR generator",
    "train.init_from": "any run directory; a fresh run checks that it holds checkpoints",
    "eval.prompt": "any text (empty only without a sample; characters outside a char vocabulary "
                   "are refused once it is built: test_a_prompt_outside_the_vocabulary...)",
}
# Bad values of the field's own type, by type; a field named here gets these instead.
BAD_BY_TYPE = {int: [-1, 0], float: [-1.0, 0.0, math.nan, math.inf], str: ["nope", ""],
               bool: [], type(None): []}
BAD_BY_NAME = {"model.attention.mla_rope_pairs": ["0;x"], "train.b1": [1.0], "train.b2": [1.0],
               # The DSA warm-up's switch: refused where the model has no indexer.
               "train.freeze_main": [True]}
# A value of another type, by the field's type.
WRONG_TYPE = {int: "1", float: "1.0", str: 1, bool: 1, type(None): 1}


def leaves(section, prefix=()):
  """(path, value) of every field, in nested sections (model.attention) too."""
  for key, value in section.items():
    if isinstance(value, dict):
      yield from leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def refusal(check, where: str) -> str | None:
  """The ValueError message of check(), or None when it passes; it must name `where`."""
  try:
    check()
  except ValueError as e:
    assert where in str(e) and "\n" not in str(e), (where, str(e))
    return str(e)
  return None


@pytest.mark.parametrize("spec", WALKED)
def test_every_field_of_every_config_refuses_a_bad_value(spec):
  config = config_files.load(os.path.join(ROOT, "configs", spec)).to_dict()
  validate_config(config)
  unchecked = []
  for path, value in leaves(config):
    name, kind = ".".join(path), type(value)
    parent = config
    for part in path[:-1]:
      parent = parent[part]
    try:
      parent[path[-1]] = WRONG_TYPE[kind]
      assert refusal(lambda: validate_config(config), f"{name}="), (name, WRONG_TYPE[kind])
      if name in FREE:
        continue
      refused = False
      for bad in BAD_BY_NAME.get(name, BAD_BY_TYPE[kind]):
        parent[path[-1]] = bad
        if refusal(lambda: validate_config(config), f"{name}="):
          refused = True
          break
      if not refused:
        unchecked.append(name)
    finally:
      parent[path[-1]] = value
  assert not unchecked, f"{spec}: no bad value refused for {unchecked}; check them or add FREE"


def test_free_fields_exist():
  names = {".".join(p) for spec in WALKED
           for p, _ in leaves(config_files.load(os.path.join(ROOT, "configs", spec)).to_dict())}
  assert set(FREE) <= names, set(FREE) - names


def _plan(sweep, first):
  for runlocal in (False, True):
    sweep_lib.plan(sweep, runlocal, only=[first])


# The sweep file's fields: a bad value of the field's type, and one of another type.
SWEEP_BAD = {
    "base": ("configs/nope.py", 3), "overrides": ({"nope": 1}, 3),
    "runlocal_overrides": ({"nope": 1}, 3), "runs": ([{"name": "x", "overide": {}}], 3),
    "grid": (ml_collections.ConfigDict({"model.d_model": ()}, allow_dotted_keys=True), 3),
    "benchmark.steps": (0, "x"), "benchmark.warmup": (-1, 1.5), "decode.context": (0, "x"),
    "decode.batch": (0, "x"), "decode.steps": (0, "x"), "quality": ("bits", 3),
    "seeds": ((0, 0), 3), "reference": ("nope", 3),
}


@pytest.mark.parametrize("spec", SWEEPS)
def test_every_field_of_every_sweep_file_refuses_a_bad_value(spec):
  path = os.path.join(ROOT, "configs", "sweeps", spec)
  sweep = config_files.load(path)
  first = next(iter(sweep_lib.expand(sweep)))
  _plan(sweep, first)
  fields = [f"{k}.{sub}" if sub else k for k in sweep
            for sub in (sweep[k].keys() if k in ("benchmark", "decode") else [None])]
  for field in fields:
    for bad in SWEEP_BAD[field]:
      sweep = config_files.load(path)
      *parents, last = field.split(".")
      section = sweep[parents[0]] if parents else sweep
      del section[last]
      section[last] = bad
      assert refusal(lambda: _plan(sweep, first), f"sweep {field}"), (spec, field, bad)


# (config spec, dotted changes, the start of the error). Before validate_config, every case
# passed the checks that run before train.py makes the workdir; those marked `setup` were
# refused by loop.setup once it had (`later`: once the data loaded), the others were accepted.
RELATIONS = [
    ("lm_shakespeare.py:mla,runlocal", {"train.warmup_steps": 30},
     "train.warmup_steps=30 is invalid: must be <= train.num_steps=20"),
    ("lm_shakespeare.py:mla,runlocal", {"train.decay_steps": 2},
     "train.decay_steps=2 is invalid: must be 0 (= num_steps) or > train.warmup_steps=2"),
    ("lm_shakespeare.py:mla,runlocal", {"train.end_learning_rate": 0.01},
     "train.end_learning_rate=0.01 is invalid: the cosine decays to it: must be <= "
     "train.learning_rate=0.002"),
    ("lm_shakespeare.py:mla,runlocal", {"train.b2": 1.0}, "train.b2=1.0 is invalid: must be in "
     "[0, 1)"),
    ("lm_shakespeare.py:mla", {"model.attention.rope_scaling": "yarn"},  # setup.
     "model.attention.rope_original_len=0 is invalid: rope_scaling=yarn needs"),
    ("lm_shakespeare.py:mla", {"model.attention.rope_mscale": 0.5},
     "model.attention.rope_mscale=0.5 is invalid: it applies with rope_scaling='yarn' only"),
    ("lm_shakespeare.py:gqa", {"model.attention.num_kv_heads": 3},  # setup.
     "model.attention.num_kv_heads=3 is invalid: must divide num_heads=4"),
    ("lm_shakespeare.py:mla", {"model.attention.kv_lora_rank": 256},  # setup.
     "model.attention.kv_lora_rank=256 is invalid: must be <= model.d_model=128"),
    ("perceiver_fashion_mnist.py:mla", {"model.cross_attention.kv_lora_rank": 128},  # setup,
     # naming model.attention (as the next one).
     "model.cross_attention.kv_lora_rank=128 is invalid: must be <= model.d_model=64"),
    ("perceiver_fashion_mnist.py", {"model.cross_attention.kind": "flash"},  # setup.
     "model.cross_attention.kind='flash' is invalid: choose one of"),
    ("lm_shakespeare.py:tpa", {"model.attention.kv_lora_rank": -4},
     "model.attention.kv_lora_rank=-4 is invalid: must be a positive integer"),
    ("lm_shakespeare.py:mla", {"model.attention.head_gated_keep_fraction": 1.5},
     "model.attention.head_gated_keep_fraction=1.5 is invalid: must be in (0, 1]"),
    ("lm_shakespeare.py:mla", {"model.num_layers": 2.0},  # setup.
     "model.num_layers=2.0 is invalid: must be an integer"),
    ("lm_shakespeare.py:mla", {"model.tie_embeddings": 1},
     "model.tie_embeddings=1 is invalid: must be True or False"),
    ("lm_shakespeare.py:mla", {"data.name": "mnist"},  # setup: a crash (tuple unpacking).
     "data.name='mnist' is invalid: model.name='lm' models token sequences"),
    ("perceiver_fashion_mnist.py", {"data.name": "tiny_shakespeare"},  # setup: AttributeError.
     "data.name='tiny_shakespeare' is invalid: model.name='perceiver' classifies images"),
    ("perceiver_fashion_mnist.py", {"model.num_classes": 5},
     "model.num_classes=5 is invalid: fashion_mnist has 10 classes"),
    ("lm_shakespeare.py:mla,sentencepiece", {"model.vocab_size": 1000},  # setup.
     "model.vocab_size=1000 is invalid: must equal data.vocab_size=1024"),
    ("lm_shakespeare.py:mla,sentencepiece", {"data.vocab_size": 100, "model.vocab_size": 100},
     # setup.
     "data.vocab_size=100 is invalid: a sentencepiece vocabulary needs at least 260 ids"),
    ("lm_shakespeare.py:mla", {"data.vocab_size": 100},
     "data.vocab_size=100 is invalid: tokenizer='char' takes its vocabulary from the train"),
    ("lm_mqar.py:mla", {"model.vocab_size": 4096},
     "model.vocab_size=4096 is invalid: must be >= data.vocab_size=8192"),
    ("lm_mqar.py:mla", {"data.num_kv_pairs": 40},  # later.
     "data.num_kv_pairs=40 is invalid: 2*n context tokens plus n query slots"),
    ("lm_mqar.py:mla", {"data.eval_split": "validation+test"},
     "data.eval_split='validation+test' is invalid: choose one of train, validation, test"),
    ("lm_mqar.py:mla", {"data.mqar_power_a": 0.0},  # later.
     "data.mqar_power_a=0.0 is invalid: must be in (0, 1]"),
    ("lm_mqar.py:mla,perceiver_ar", {"data.scored_positions": True},
     "data.scored_positions=True is invalid: model.name='perceiver_ar' scores its last M"),
    ("lm_shakespeare.py:mla", {"data.scored_positions": True},
     "data.scored_positions=True is invalid: only the synthetic tasks"),
    ("lm_shakespeare.py:perceiver_ar", {"data.eval_window_targets": 0},
     "data.eval_window_targets=0 is invalid: model.name='perceiver_ar' scores only its last "
     "model.num_latents=64 positions: give 1..64"),
    ("lm_shakespeare.py:mla", {"data.eval_window_targets": 129},  # later.
     "data.eval_window_targets=129 is invalid: must be in [0, data.seq_len=128]"),
    ("lm_mqar.py:mla", {"eval.sample_len": 10},
     "eval.sample_len=10 is invalid: data.name='mqar' has no text to sample"),
    ("lm_shakespeare.py:mla", {"eval.prompt": ""},
     "eval.prompt='' is invalid: eval.sample_len=300 continues a prompt"),
    ("lm_shakespeare.py:mla", {"eval.top_k": 100},
     "eval.top_k=100 is invalid: must be <= model.vocab_size=65"),
    ("lm_shakespeare.py:mla", {"seed": -1}, "seed=-1 is invalid: must be a non-negative integer"),
    ("lm_mqar.py:gla,zoology", {},  # setup. GLA's latent heads need zoology,multihead.
     "model.attention.gla_latent_heads=2 is invalid: must divide num_heads=1"),
]


@pytest.mark.parametrize("spec,changes,message", RELATIONS,
                         ids=[f"{s}-{','.join(c)}" for s, c, _ in RELATIONS])
def test_relations_between_fields(spec, changes, message):
  config = config_files.load(os.path.join(ROOT, "configs", spec)).to_dict()
  for key, value in changes.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[last] = value
  with pytest.raises(ValueError) as e:
    validate_config(config)
  assert str(e.value).startswith(message), str(e.value)


def test_unknown_sections_and_sweep_fields_are_refused():
  with pytest.raises(ValueError, match=r"^the config has no section 'trian'; sections: seed, "):
    validate_config({"trian": {}})
  sweep = config_files.load(os.path.join(ROOT, "configs/sweeps/mla_rank.py"))
  sweep.seed = 3
  with pytest.raises(ValueError, match=r"^sweep seed is not a sweep field; fields: base, "):
    sweep_lib.plan(sweep)
  sweep = config_files.load(os.path.join(ROOT, "configs/sweeps/lm1b_attention.py"))
  sweep.decode.steps = 4096
  with pytest.raises(ValueError, match=r"^sweep decode.steps=4096 is invalid: must be < "
                     r"decode.context=4096"):
    sweep_lib.plan(sweep)


def _every_config_spec():
  """Every combination of arguments the config files accept."""
  yield from ("lm_decode.py", "lm_decode.py:runlocal")
  for v in VARIANTS:
    for extra in ("", ",perceiver_ar", ",nanogpt_cpu", ",sentencepiece"):
      for local in ("", ",runlocal"):
        yield f"lm_shakespeare.py:{v}{extra}{local}"
    for extra in ("", ",synthetic", ",runlocal", ",synthetic,runlocal"):
      yield f"lm1b.py:{v}{extra}"
    # zoology alone is one head: for the kinds that have one (test_relations...: gla).
    zoology = ("",) if v in ("gla", "head_gated") else ("", ",zoology")
    for extra in (",perceiver_ar", ",zoology,multihead", *zoology):
      for local in ("", ",runlocal"):
        yield f"lm_mqar.py:{v}{extra}{local}"
  for kind in ("mha", "gqa", "mqa", "mla"):
    for prep in ("pixels", "patches", "conv1x1", "conv"):
      for extra in ("", ",induced", ",mnist", ",runlocal", ",induced,mnist,runlocal"):
        yield f"perceiver_fashion_mnist.py:{kind},{prep}{extra}"


def test_every_shipped_config_and_sweep_passes():
  failed = []
  for spec in _every_config_spec():
    try:
      validate_config(config_files.load(os.path.join(ROOT, "configs", spec)))
    except ValueError as e:
      failed.append(f"{spec}: {e}")
  for spec in SWEEPS:  # every run, with and without --runlocal.
    sweep = config_files.load(os.path.join(ROOT, "configs", "sweeps", spec))
    for runlocal in (False, True):
      try:
        sweep_lib.plan(sweep, runlocal)
      except ValueError as e:
        failed.append(f"sweeps/{spec} (runlocal={runlocal}): {e}")
  assert not failed, "\n".join(failed)
