"""MHA/GQA/MQA -> MLA conversion (models/mla_conversion.py, studies/conversion.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention.models import build_model, mla_conversion, parse_config
from latent_attention.models.decoding import decode_chunks
from latent_attention.studies import conversion, conversion_study
from latent_attention.training import checkpoint, loop
from latent_attention.training.evaluate import restore_experiment

from conftest import assert_f32_close, lm_terms, runlocal, tiny_lm_config


def _source(kind, seed=0, **extra):
  cfg = tiny_lm_config(kind, **extra)
  model = build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
  batches = [np.asarray(jax.random.randint(jax.random.key(seed + i), (2, 16), 0, 31))
             for i in (1, 2)]
  return cfg, model, params, batches


@pytest.mark.parametrize("kind,extra", [("mha", {}), ("gqa", {"num_kv_heads": 2})])
def test_full_rank_conversion_keeping_every_pair_is_the_source_model(kind, extra):
  """C = rank of [W_K,nope | W_V] = min(D, K·H) and d_R = H: equal logits in float32, and
  the converted model decodes as its forward pass."""
  cfg, model, params, batches = _source(kind, **extra)
  kv_heads = {"mha": 4, "gqa": 2}[kind]
  model_cfg, new_params, layers = mla_conversion.convert(
      params, model, cfg.to_dict(), batches, kv_lora_rank=min(cfg.d_model, kv_heads * 8),
      rope_dims=8)
  new_cfg = parse_config(model_cfg)
  assert new_cfg.attention.mla_rope_heads == kv_heads
  assert [layer["kv_relative_error"] < 1e-6 for layer in layers] == [True, True]
  tokens_BT = jax.random.randint(jax.random.key(7), (2, 12), 0, cfg.vocab_size)
  source_BTV = jax.jit(model.apply)({"params": params}, tokens_BT)  # one compile, not many ops.
  converted = build_model(new_cfg)
  converted_BTV = jax.jit(converted.apply)({"params": new_params}, tokens_BT)
  # Two evaluations of the same LM; the SVD factors add a D-long contraction per layer.
  terms = lm_terms(cfg, 12) + cfg.num_layers * cfg.d_model
  assert_f32_close(converted_BTV, source_BTV, terms=terms)
  if kind == "mha":  # the converted layout's decoding (RoPE key per kv head, no latent norm).
    apply = jax.jit(converted.apply, static_argnames=("decode", "mutable"))
    decoded_BTV, _ = decode_chunks(converted, new_params, tokens_BT, (5, 1, 6), apply)
    assert_f32_close(decoded_BTV, converted_BTV, terms=terms)


def test_rope_pairs_follow_the_two_norm_criterion():
  """Pairs whose key weights are made 100x larger (different ones per kv head and layer) are
  the ones kept; the converted config lists them per layer and kv head."""
  cfg, model, params, batches = _source("gqa", num_kv_heads=2)
  boost = {("block_0", 0): (1, 3), ("block_0", 1): (0, 2), ("block_1", 0): (2, 3),
           ("block_1", 1): (0, 1)}
  params = jax.tree.map(np.array, params)
  for (layer, k), pairs in boost.items():
    for j in pairs:  # pair j = dims j and j + H/2 of the half-split RoPE (H = 8).
      params[layer]["attn"]["key"]["kernel"][:, k, [j, j + 4]] *= 100
  model_cfg, _, layers = mla_conversion.convert(params, model, cfg.to_dict(), batches,
                                                kv_lora_rank=8, rope_dims=4)
  assert [layer["rope_pairs"] for layer in layers] == [[[1, 3], [0, 2]], [[2, 3], [0, 1]]]
  assert model_cfg["attention"]["mla_rope_pairs"] == "1,3;0,2|2,3;0,1"


def test_low_rank_error_falls_with_rank_and_activation_aware_is_best_on_calibration():
  rng = np.random.default_rng(0)
  x_TD = rng.normal(size=(200, 16)) * np.geomspace(3, 0.1, 16)  # anisotropic inputs.
  attn = {name: {"kernel": rng.normal(size=(16, 2, 8))} for name in ("query", "key", "value")}
  attn["out"] = {"kernel": rng.normal(size=(2, 8, 16))}
  gram = x_TD.T @ x_TD
  errors = {m: [mla_conversion.convert_layer(attn, [[0, 1], [2, 3]], 2, c, gram, m)[1]
                for c in (2, 4, 8, 16)] for m in mla_conversion.METHODS}
  for method, errs in errors.items():
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-6, (method, errs)
  # Optimal in the calibration norm it is measured in (Eckart-Young), up to rounding.
  assert all(a <= s + 1e-12 for a, s in zip(errors["activation"], errors["svd"]))
  assert errors["activation"][0] < errors["svd"][0]


@pytest.mark.parametrize("request_,message", [
    (dict(kv_lora_rank=0, rope_dims=8), r"--kv_lora_rank=0 is invalid: in \[1, 32\]"),
    (dict(kv_lora_rank=8, rope_dims=3), r"--rope_dims=3 is invalid: an even number in \[2, "
                                        r"head_dim=8\]"),
    (dict(kv_lora_rank=8, rope_dims=4, method="pca"), r"--method='pca' is invalid: choose one "
                                                     r"of activation, svd")])
def test_bad_conversion_requests_are_one_line_errors(request_, message):
  with pytest.raises(ValueError, match=message):
    mla_conversion.check_request(tiny_lm_config("mha").to_dict(), **{"method": "activation",
                                                                      **request_})
  with pytest.raises(ValueError, match=r"source model='lm/mla' is invalid: convert a language "
                                       r"model \(name 'lm'\) of kind mha, gqa, mqa"):
    mla_conversion.check_request(tiny_lm_config("mla").to_dict(), 8, 4, "activation")
  shared = tiny_lm_config("mha").to_dict()
  shared["kv_share_every"] = 2
  with pytest.raises(ValueError, match=r"source model.kv_share_every=2 is invalid"):
    mla_conversion.check_request(shared, 8, 4, "activation")


def test_conversion_study_on_a_full_rank_conversion(tmp_path):
  """A step-0 source run (random init: full-rank conversion needs no training to be exact) through
  the study: the converted workdir restores (eval.py's path) to the source's logits and
  perplexity, the fine-tune starts from the conversion (train.init_from), the table and plot are
  written; converting into a finished directory again is refused, leaving it untouched. (Both
  methods are exact at full rank: test_low_rank_error_falls_with_rank_...)"""
  source, study = str(tmp_path / "mha"), str(tmp_path / "study")
  config = runlocal("mha")
  exp = loop.setup(config)
  state = exp.init_state(jax.random.key(0))
  mngr = checkpoint.manager(source)
  checkpoint.save(mngr, 0, state, iter(exp.dataset.train_loader(8, 0)), config,
                  exp.dataset.metadata(), force=True)
  mngr.wait_until_finished()
  mngr.close()
  d, att = config.model.d_model, config.model.attention
  rows = conversion_study.run(source, study, [(d, att.head_dim)], finetune_steps=2,
                              scratch=False, num_batches=2, methods=("activation",))
  assert [r["method"] for r in rows] == ["original (mha)", "converted (activation)",
                                         "converted + 2-step fine-tune"]
  # Both layouts cache 2·N·H = 64 per layer (runlocal: one): d_c = D = 32 plus N RoPE keys of
  # H = 8.
  assert {r["kv_bytes_per_token"] for r in rows} == {config.model.num_layers * 64 * 4}
  assert abs(rows[1]["perplexity"] / rows[0]["perplexity"] - 1) < 1e-5
  out = os.path.join(study, f"c{d}_r{att.head_dim}_activation")
  new_exp, new_params, step = restore_experiment(out)
  assert step == 0 and new_exp.config.model.attention.kind == "mla"
  tokens_BT = jnp.asarray(next(iter(exp.dataset.eval_batches("validation", 2)))["inputs"])
  assert_f32_close(new_exp.model.apply({"params": new_params}, tokens_BT),
                   exp.model.apply({"params": state.params}, tokens_BT),
                   terms=lm_terms(parse_config(config.model), tokens_BT.shape[1]) + 2 * d)
  ft = json.load(open(os.path.join(out + "_ft", "train_results.json")))
  assert ft["step"] == 2 and ft["eval"]["perplexity"] == rows[2]["perplexity"]
  paths = conversion_study.write(rows, study)
  table = open(paths["md"]).read()
  assert (f"| {d} | 8 | {rows[1]['kv_bytes_per_token']} | {rows[1]['perplexity']:.3f} | "
          f"{rows[2]['perplexity']:.3f} |") in table
  assert os.path.getsize(paths["png"]) > 10_000
  with pytest.raises(ValueError, match=r"already holds a run"):
    conversion.convert_workdir(source, out, kv_lora_rank=8, rope_dims=8)
  assert os.listdir(os.path.join(out, "checkpoints")) == ["0"]
  assert json.load(open(os.path.join(out, "conversion.json")))["kv_lora_rank"] == d
