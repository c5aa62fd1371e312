"""DeepSeek Sparse Attention (attention/indexer.py, kind mla with index_topk > 0) against numpy
written from DeepSeek-V3.2's equations (tests/numpy_reference.py): the indexer's scores, the
selected sets (ties included), the layer's output and its KL; dense MLA exactly when top_k >= T;
decode equal to the forward pass; which gradients reach the indexer; the warm-up and conversion
from a dense run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from conftest import ROOT, F32_EPS, assert_f32_close, lm_terms, runlocal, tiny_lm_config
from latent_attention.attention import AttentionConfig, indexer, make_attention
from latent_attention.models import build_model, parse_config
from latent_attention.models.decoding import decode_chunks, init_cache

D, B, T = 32, 2, 12
DSA = dict(kind="mla", num_heads=4, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4,
           v_head_dim=6, q_lora_rank=16, index_topk=4, index_n_heads=2, index_head_dim=8)


def _lm(**attention):
  """A one-block LM with DSA (every layer runs the same code; one halves the compile time)."""
  cfg = tiny_lm_config("mla", **{k: v for k, v in {**DSA, **attention}.items() if k != "kind"})
  cfg.num_layers = 1
  return cfg, build_model(parse_config(cfg))


def _layer(**overrides):
  cfg = AttentionConfig(**{**DSA, **overrides})
  module = make_attention(cfg, D, jnp.float32)
  x_BTD = jax.random.normal(jax.random.key(1), (B, T, D))
  pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  params = module.init(jax.random.key(0), x_BTD, pos_BT=pos_BT)["params"]
  return cfg, module, params, x_BTD, pos_BT


def _reference(cfg, params, x_BTD, pos_BT):
  """numpy: (scores, selected mask, layer output, KL) from the equations."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h, pos = np.asarray(x_BTD, np.float64), np.asarray(pos_BT)
  c_q = ref.rms_norm(np.einsum("btd,dc->btc", h, p["q_down"]["kernel"]), p["q_norm"]["scale"])
  scores = ref.indexer_scores(p["indexer"], h, c_q, pos, cfg.qk_rope_head_dim)
  keep = ref.top_k_causal(scores, cfg.index_topk)
  kv = ref.mla_kv(p, h, pos, {})
  nope = cfg.qk_nope_head_dim
  y = ref.mla_attention(p, h, pos, kv, {"nope": nope}, keep)
  q = np.concatenate(ref.mla_query(p, h, pos, nope), -1)
  probs = ref.attention_probs(q, ref.mla_keys(p, kv, nope), q.shape[-1] ** -0.5, keep)
  return scores, keep, y, ref.indexer_kl(probs, scores, keep)


def test_indexer_scores_selection_output_and_kl_equal_numpy():
  cfg, module, params, x_BTD, pos_BT = _layer()
  apply = jax.jit(lambda p: module.apply({"params": p}, x_BTD, pos_BT=pos_BT,
                                         mutable=["losses", "intermediates"],
                                         capture_intermediates=True))
  (y_BTD, state) = apply(params)
  q_i, w_i, k_i = state["intermediates"]["indexer"]["__call__"][0]
  scores_BTS = jax.jit(indexer.scores)(q_i, w_i, k_i)
  want_scores, want_keep, want_y, want_kl = _reference(cfg, params, x_BTD, pos_BT)
  # scores: W_k over D, LayerNorm over d_I, W_q over d_c' (c_Q over D), q·k over d_I, Σ_h.
  assert_f32_close(scores_BTS, want_scores, terms=2 * D + 16 + 2 * 8 + 2)
  visible_BTS = jnp.tril(jnp.ones((T, T), bool))[None].repeat(B, 0)
  keep_BTS = indexer.selected_mask(*indexer.select(scores_BTS, visible_BTS, cfg.index_topk), T)
  np.testing.assert_array_equal(keep_BTS, want_keep)
  assert (want_keep.sum(-1) == np.minimum(np.arange(T) + 1, cfg.index_topk)).all()
  # y: c_Q and c_KV over D, q over d_c', k and v over d_c, q·k, the softmax over T, W_O.
  assert_f32_close(y_BTD, want_y, terms=2 * D + 16 + 2 * 12 + 12 + T + 4 * 6)
  (kl,) = state["losses"]["indexer_kl"]
  assert_f32_close(kl, want_kl, terms=2 * D + 16 + 2 * 12 + 12 + 2 * T, scale=1.0)
  assert want_kl > 1e-3  # an untrained indexer does not match the attention yet.


def test_selection_breaks_ties_by_lowest_position_and_treats_signed_zeros_as_equal():
  scores_BTS = jnp.array([[[0.0, -0.0, 2.0, 0.0, -0.0, 1.0, -1.0]]])
  visible_BTS = jnp.array([[[True, True, True, True, True, True, False]]])
  idx_BTK, valid_BTK = indexer.select(scores_BTS, visible_BTS, 4)
  np.testing.assert_array_equal(idx_BTK[0, 0], [2, 5, 0, 1])  # 2.0, 1.0, then zeros 0, 1.
  assert valid_BTK.all()
  want = ref.top_k_causal(np.asarray(scores_BTS).repeat(7, 1), 4)[:, -1:]  # numpy: row t = 6.
  want[..., 6] = False  # position 6 is invisible here.
  np.testing.assert_array_equal(indexer.selected_mask(idx_BTK, valid_BTK, 7), want)
  # A query seeing fewer than k positions gets invisible ones too, marked invalid.
  _, valid_BTK = indexer.select(scores_BTS, visible_BTS.at[..., 3:].set(False), 5)
  assert valid_BTK.sum() == 3


def test_top_k_at_least_t_equals_dense_mla_exactly():
  cfg = tiny_lm_config("mla", **{k: v for k, v in DSA.items() if k != "kind"})
  cfg.attention.index_topk = T
  model = build_model(parse_config(cfg))
  tokens_BT = jax.random.randint(jax.random.key(2), (B, T), 0, cfg.vocab_size)
  params = model.init(jax.random.key(0), tokens_BT)["params"]
  dense_cfg = tiny_lm_config("mla", **{k: v for k, v in DSA.items() if k != "kind"})
  dense_cfg.attention.index_topk = 0
  dense = {name: {**blk, "attn": {k: v for k, v in blk["attn"].items() if k != "indexer"}}
           if "attn" in blk else blk for name, blk in params.items()}
  np.testing.assert_array_equal(model.apply({"params": params}, tokens_BT),
                                build_model(parse_config(dense_cfg)).apply({"params": dense},
                                                                           tokens_BT))


@pytest.mark.parametrize("mode,chunks,heads,tied", [
    ("absorbed", (1,) * T, 1, False), ("latent", (2, 1, 1, 3, 1, 4), 2, False),
    ("naive", (4, 1, 1, 3, 1, 2), 2, False), ("absorbed", (1,) * T, 2, True),
    ("absorbed", (5, 1, 1, 4, 1), 2, True)])
def test_decode_equals_the_forward_pass(mode, chunks, heads, tied):
  """Token by token and in chunks; with one indexer head about half the scores are exact zeros
  (ReLU), and `tied` zeroes the head weights so that every score is 0: the selected sets of
  prefill and decode must still agree (lowest position wins)."""
  cfg, model = _lm(mla_decode_mode=mode, index_n_heads=heads)
  tokens_BT = jax.random.randint(jax.random.key(3), (B, T), 0, cfg.vocab_size)
  params = model.init(jax.random.key(0), tokens_BT)["params"]
  if tied:
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if "weights" in jax.tree_util.keystr(path) else a,
        params)
  full_BTV = model.apply({"params": params}, tokens_BT)
  decoded_BTV, _ = decode_chunks(model, params, tokens_BT, chunks,
                                 jax.jit(model.apply, static_argnames=("decode", "mutable")))
  assert_f32_close(decoded_BTV, full_BTV, terms=lm_terms(cfg, T))


def _dot_operand_shapes(jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield from (tuple(v.aval.shape) for v in eqn.invars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _dot_operand_shapes(inner)


@pytest.mark.parametrize("mode", ["absorbed", "latent"])
def test_a_decode_step_reads_only_the_selected_latents(mode):
  """No contraction of a one-token step touches the whole latent cache [B, S, d_c]: it gathers
  top_k rows; the cache holds d_c + d_R + d_I per token per layer."""
  s = 64
  cfg, model = _lm(mla_decode_mode=mode)
  params = model.init(jax.random.key(0), jnp.zeros((B, 4), jnp.int32))["params"]
  cache = init_cache(model, B, s)
  sizes = {k: v.shape for k, v in jax.tree_util.tree_flatten_with_path(cache)[0]}
  assert sum(np.prod(v) * 4 for v in sizes.values() if len(v) == 3) == (
      model.cache_elements(s, B) * 4) == cfg.num_layers * s * B * 4 * (12 + 4 + 8)
  step = jax.make_jaxpr(lambda c: model.apply({"params": params, "cache": c},
                                              jnp.zeros((B, 1), jnp.int32), decode=True,
                                              mutable=["cache"]))(cache)
  shapes = set(_dot_operand_shapes(step.jaxpr))
  assert (B, s, 12) not in shapes and (B, s, 4) not in shapes, shapes
  assert (B, DSA["index_topk"], 12) in shapes or (B, 4, DSA["index_topk"], 8) in shapes, shapes
  assert (B, s, 8) in shapes  # the indexer reads every key: d_I per token.


@pytest.mark.parametrize("index_mode", ["sparse", "dense_warmup"])
def test_the_indexer_learns_from_its_kl_alone_and_the_model_from_the_lm_loss_alone(index_mode):
  cfg, model = _lm(index_mode=index_mode)
  tokens_BT = jax.random.randint(jax.random.key(4), (B, T), 0, cfg.vocab_size)
  params = model.init(jax.random.key(0), tokens_BT)["params"]

  def nll(p):
    logits = model.apply({"params": p}, tokens_BT)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens_BT[..., None], -1).mean()

  def kl(p):
    _, sown = model.apply({"params": p}, tokens_BT, mutable=["losses"])
    return sum(jax.tree.leaves(sown["losses"]))

  def split(grads):
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    mine = [np.abs(g).max() for k, g in flat if "indexer" in jax.tree_util.keystr(k)]
    rest = [np.abs(g).max() for k, g in flat if "indexer" not in jax.tree_util.keystr(k)]
    return max(mine), max(rest)

  nll_indexer, nll_main = split(jax.jit(jax.grad(nll))(params))
  kl_indexer, kl_main = split(jax.jit(jax.grad(kl))(params))
  assert nll_indexer == 0 and kl_main == 0
  assert nll_main > 100 * F32_EPS and kl_indexer > 100 * F32_EPS


def test_invalid_dsa_configs_are_one_line_errors():
  cases = [({"kind": "gqa"}, "model.attention.index_topk=4"),
           ({"mla_rope_heads": 2}, "model.attention.mla_rope_heads=2"),
           ({"index_head_dim": 2}, "model.attention.index_head_dim=2"),
           ({"index_mode": "dense"}, "model.attention.index_mode='dense'")]
  for overrides, where in cases:
    with pytest.raises(ValueError, match=r"^[^\n]*" + where.replace("'", ".")):
      AttentionConfig(**{**DSA, **overrides})
  cfg = tiny_lm_config("mla", **{k: v for k, v in DSA.items() if k != "kind"})
  for field, value in (("decode_cache", "paged"), ("kv_share_every", 2)):
    with pytest.raises(ValueError, match=f"model.{field}="):
      parse_config({**cfg.to_dict(), field: value})


def test_warm_up_keeps_the_dense_model_and_conversion_starts_from_it(tmp_path):
  """A dense run and its warm-up (main model frozen, dense attention: stage a), through
  train.init_from as a user runs them; the sparse stage (b) starts from the warm-up's
  checkpoint the same way (configs/sweeps/dsa.py's convert_top* runs)."""
  from latent_attention.training import checkpoint
  from latent_attention.training.loop import train_and_evaluate

  def params(workdir):
    mngr = checkpoint.manager(workdir, read_only=True)
    try:
      step = mngr.latest_step()
      meta = checkpoint.param_metadata(workdir, step)
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
      return jax.tree_util.tree_flatten_with_path(checkpoint.restore_params(mngr, step,
                                                                            abstract))[0]
    finally:
      mngr.close()

  short = dict(num_steps=2, checkpoint_every=0, eval_every=0, log_every=2, warmup_steps=1)
  train_and_evaluate(runlocal("mla", **short), str(tmp_path / "dense"))
  warm = runlocal("dsa", init_from=str(tmp_path / "dense"), freeze_main=True, **short)
  warm.model.attention.index_mode = "dense_warmup"
  out = train_and_evaluate(warm, str(tmp_path / "warm"))
  dense, warmed = dict(params(tmp_path / "dense")), dict(params(tmp_path / "warm"))
  for k, v in warmed.items():
    if "indexer" in jax.tree_util.keystr(k):
      assert k not in dense
    else:
      np.testing.assert_array_equal(v, dense[k])  # frozen: bit for bit the dense run's.
  assert np.isfinite(out["eval"]["loss"])


def test_a_sweep_run_starts_from_an_earlier_run_of_the_same_seed(tmp_path):
  from latent_attention import config_files
  from latent_attention.studies import sweep as sweep_lib
  sweep = config_files.load(os.path.join(ROOT, "configs/sweeps/dsa.py"))
  runs, seeds, jobs = sweep_lib.plan(sweep)
  order = [name for name, _ in jobs]
  assert seeds == [0, 1, 2] and order.index("warmup") > order.index("dense")
  assert min(order.index(f"convert_top{k}") for k in (64, 128, 256)) > order.index("warmup")
  sweep.runs[0]["overrides"] = {"train.init_from": "run:warmup"}  # a later run: refused.
  with pytest.raises(ValueError, match="sweep run 'dense': train.init_from='run:warmup' is "
                     "invalid: name an earlier run of the sweep"):
    sweep_lib.plan(sweep)


def test_decode_benchmark_counts_only_what_a_sparse_step_reads():
  from latent_attention import config_files
  from latent_attention.bench import decode as decode_bench
  model = config_files.load(os.path.join(ROOT, "configs/lm_decode.py:runlocal")).model
  cfg = decode_bench.variant_config(model, "mla_sparse", 8, index_topk=4)
  (row,) = decode_bench.measure(cfg, context=32, batches=(2,), steps=2, bandwidth=1e9,
                                flops_rate=1e9)
  a = cfg.attention
  per_layer = 32 * a.index_head_dim + 4 * (a.kv_lora_rank + a.qk_rope_head_dim)
  assert row["bytes_read_per_step"] - row["weight_bytes"] == cfg.num_layers * per_layer * 2 * 4
  assert row["cache_bytes_per_sequence"] == row["cache_formula_bytes_per_sequence"] == (
      cfg.num_layers * 32 * (a.index_head_dim + a.kv_lora_rank + a.qk_rope_head_dim) * 4)


def test_the_sparse_decode_step_compiles_for_a_tpu_slice():
  """The pre-flight (bench/preflight.py) compiles DSA's decode step (top-k and gathers) with
  the real TPU compiler; its arguments are the cache (indexer keys included) and the weights."""
  from latent_attention import config_files, kv_cache_formula_bytes
  from latent_attention.bench import preflight
  if not preflight.extras_available():
    pytest.skip(preflight.MISSING)
  config = config_files.load(os.path.join(ROOT, "configs/lm_shakespeare.py:dsa,runlocal"))
  (report,) = preflight.compile_config(config, "v5e:2x2", batch=4, steps=("decode",))
  assert report.fits
  (gpu,) = preflight.compile_config(config, "h100:1x1x1", batch=2, steps=("decode",))
  model_cfg = parse_config(config.model)
  shapes = jax.eval_shape(build_model(model_cfg).init, jax.random.key(0),
                          jnp.zeros((1, 8), jnp.int32))
  expected = (kv_cache_formula_bytes(model_cfg, config.data.seq_len, 2)
              + 4 * sum(x.size for x in jax.tree.leaves(shapes["params"])) + 4 * 2)
  assert expected <= gpu.argument_bytes <= expected + 4 * config.model.num_layers


def test_study_table_aggregates_seeds_and_counts_bytes_read(tmp_path):
  """studies/dsa_tables.py on rows shaped like the sweep's result.json files."""
  import json as json_lib
  from latent_attention import config_files
  from latent_attention.studies import dsa_tables, pages
  for name, topk, ppls in (("dense", 0, (5.0, 5.2)), ("scratch_top8", 8, (5.5, 5.9))):
    config = config_files.load(os.path.join(ROOT, "configs/lm_shakespeare.py:dsa,runlocal"))
    config.model.attention.index_topk = topk
    for seed, ppl in enumerate(ppls):
      path = tmp_path / name / f"seed{seed}"
      path.mkdir(parents=True)
      (path / "result.json").write_text(json_lib.dumps({
          "name": name, "seed": seed, "status": "ok", "perplexity": ppl, "eval_loss": 1.0,
          "kv_formula_bytes_per_token": 4, "step_time_ms": 3.0, "config": config.to_dict()}))
  table = dsa_tables.quality_table(str(tmp_path), "cmd", "machine", "date")
  rendered = pages.render_table(table)
  dense, sparse = table["rows"]
  assert dense[5] == "5.100 ± 0.141" and dense[6] == "ref" and sparse[2] == "8 (T/4)"
  assert sparse[6].startswith("+0.600 [")  # Welch's interval of the difference (n = 2 each).
  # Paired by seed: differences 0.5 and 0.7, mean 0.6, sd 0.1414, t(0.975, 1 dof) = 12.706
  # (tables): 0.6 ± 12.706 * 0.1414 / sqrt(2) = 0.6 ± 1.271.
  assert (sparse[7], sparse[8]) == ("dense", "+0.600 [-0.671, +1.871] (n.s.)")
  a = config.model.attention  # d_c 8, d_R 4, d_I 8, one layer: bytes read at 1k of dense's.
  read, dense_read = 1024 * 8 + 8 * (8 + 4), 1024 * (8 + 4)
  assert sparse[10] == f"{read * 4 / 1024:,.0f} ({read / dense_read:.0%})", (sparse[10], a)
  assert "| scratch_top8 | DSA from scratch | 8 (T/4) |" in rendered
  with pytest.raises(ValueError, match="holds no finished run"):
    dsa_tables.quality_table(str(tmp_path / "none"), "cmd", "machine", "date")


def test_the_published_tables_are_what_the_committed_runs_give():
  """docs/results/dsa/{quality,decode}.json rebuilt from the runs' files in dsa/raw/."""
  import json as json_lib
  from latent_attention.studies import dsa_tables
  pub = os.path.join(ROOT, "docs", "results", "dsa")
  built = {"quality": dsa_tables.quality_table(os.path.join(pub, "raw"), "", "", ""),
           "decode": dsa_tables.decode_table(os.path.join(pub, "raw", "decode.json"), "", "", "")}
  for name, table in built.items():
    with open(os.path.join(pub, f"{name}.json")) as f:
      published = json_lib.load(f)
    assert published["columns"] == table["columns"] and published["rows"] == table["rows"], name
