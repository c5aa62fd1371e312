"""Seed statistics: mean ± std per run and Welch's t-test against a reference (`stats`)."""

import numpy as np
import pytest
from scipy import stats as sps

from latent_attention.studies import stats

EPS = float(np.finfo(np.float64).eps)  # 2**-52
# Perplexities per seed: B is clearly worse than A, C is A's equal up to noise.
PPL = {"A": [5.0, 5.2, 5.4], "B": [6.0, 6.1, 5.9], "C": [5.1, 5.3, 5.2]}
# The same numbers by hand: mean, and sample std (ddof=1) from the squared deviations.
# A: (0.04 + 0 + 0.04) / 2 = 0.04; B and C: (0 + 0.01 + 0.01) / 2 = 0.01.
HAND = {"A": (5.2, 0.2), "B": (6.0, 0.1), "C": (5.2, 0.1)}
# Seed order 2, 0, 1 and runs interleaved: aggregate must sort seeds and group by name.
SEED_ORDER = (2, 0, 1)


def close(actual, expected, *, terms, scale):
  """|actual - expected| <= terms * eps * scale: `terms` float64 roundings on values up to
  `scale`; any real bug here (a wrong ddof, dof or quantile) is off by >= 1e-3."""
  assert actual == pytest.approx(expected, rel=0, abs=terms * EPS * scale)


def row(name, seed, ppl, **extra):
  return {"name": name, "seed": seed, "kind": f"kind_{name}", "sizes": f"sizes_{name}",
          "mlp_dim": 64, "params": 1000 + ord(name), "eval_loss": float(np.log(ppl)),
          "perplexity": ppl, "bits_per_char": None, "bits_per_token": None, "accuracy": 0.5,
          "kv_bytes_per_token": 128, "kv_formula_bytes_per_token": 120,
          "step_time_ms": 10.0, "tokens_per_s": 100.0, "decode_tokens_per_s": None,
          "train_wall_s": 1.0, "status": "ok", "error": None, "eval_split": "validation",
          **extra}


def table():
  return [row(name, seed, PPL[name][seed]) for seed in SEED_ORDER for name in PPL]


def by_name(rows, **kwargs):
  return {r["name"]: r for r in stats.aggregate(rows, **kwargs)}


def welch(a, b):
  """Textbook Welch: diff of means, 95% interval and two-sided p with Welch–Satterthwaite dof."""
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  se = np.sqrt(va + vb)
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  diff = np.mean(a) - np.mean(b)
  half = sps.t.ppf(0.975, dof) * se
  return diff, diff - half, diff + half, 2 * sps.t.sf(abs(diff / se), dof)


def test_order_fields_means_stds_and_medians():
  rows = table()
  rows[0]["step_time_ms"], rows[3]["step_time_ms"] = 30.0, 11.0  # A: 30, 11, 10.
  rows[3]["tokens_per_s"] = None  # A: 100, None, 100 -> 300 below.
  rows[6]["tokens_per_s"] = 300.0
  out = stats.aggregate(rows)
  assert [r["name"] for r in out] == ["A", "B", "C"]
  for r in out:
    name = r["name"]
    assert (r["kind"], r["sizes"], r["params"]) == (f"kind_{name}", f"sizes_{name}",
                                                    1000 + ord(name))
    assert (r["kv_bytes_per_token"], r["kv_formula_bytes_per_token"]) == (128, 120)
    assert (r["mlp_dim"], r["eval_split"], r["n"], r["seeds"]) == (64, "validation", 3,
                                                                  [0, 1, 2])
    mean, std = HAND[name]
    # The mean: three rounded inputs, two additions and a division. The std: deviations carry
    # the inputs' absolute rounding (~eps * 6), squared, summed, halved and rooted.
    close(r["perplexity_mean"], mean, terms=8, scale=6.1)
    close(r["perplexity_std"], std, terms=8, scale=6.1)
    close(r["eval_loss_mean"], np.log(PPL[name]).sum() / 3, terms=8, scale=2)
    assert (r["accuracy_mean"], r["accuracy_std"]) == (0.5, 0.0)
    for q in ("bits_per_char", "bits_per_token"):  # None in every row: skipped.
      assert r[f"{q}_mean"] is None and r[f"{q}_std"] is None
    assert r["decode_tokens_per_s"] is None
  # Medians, not means: one slow seed does not move them; a missing value is left out.
  assert out[0]["step_time_ms"] == 11.0 and out[0]["tokens_per_s"] == 200.0
  assert out[1]["step_time_ms"] == 10.0


def test_welch_interval_and_significance():
  got = by_name(table())
  ref = got["A"]
  assert (ref["reference"], ref["metric"], ref["diff"]) == ("A", "perplexity", 0.0)
  assert ref["diff_low"] is ref["diff_high"] is ref["p_value"] is ref["significant"] is None
  for name in ("B", "C"):
    diff, low, high, p = welch(PPL[name], PPL["A"])
    # Means, variances, dof and the half-width: a few dozen roundings on values up to ~6; the
    # t quantile is scipy's own in both, at a dof equal to a few ulps.
    scale = max(6.1, high - low)
    close(got[name]["diff"], diff, terms=64, scale=scale)
    close(got[name]["diff_low"], low, terms=64, scale=scale)
    close(got[name]["diff_high"], high, terms=64, scale=scale)
    close(got[name]["p_value"], p, terms=64, scale=1)
  # By hand: B - A = 0.8 with se = sqrt(0.05 / 3) ~ 0.129 and ~2.94 dof: the interval lies
  # above 0. C - A = 0: the interval straddles it.
  close(got["B"]["diff"], 0.8, terms=16, scale=6.1)
  assert got["B"]["diff_low"] > 0 and got["B"]["significant"] is True
  assert got["B"]["p_value"] < 0.05
  assert got["C"]["diff_low"] < 0 < got["C"]["diff_high"] and got["C"]["significant"] is False
  assert got["C"]["p_value"] > 0.05


def test_reference_choice_mirrors_the_interval():
  got = by_name(table(), reference="B")
  forward = by_name(table())["B"]
  assert got["B"]["diff"] == 0.0 and stats.format_diff(got["B"], "{:.3f}") == "ref"
  assert all(r["reference"] == "B" for r in got.values())
  # A - B is -(B - A): the same test with the samples swapped.
  close(got["A"]["diff"], -forward["diff"], terms=4, scale=6.1)
  close(got["A"]["diff_low"], -forward["diff_high"], terms=16, scale=6.1)
  close(got["A"]["diff_high"], -forward["diff_low"], terms=16, scale=6.1)
  assert got["A"]["significant"] is True


def test_format_cells():
  got = by_name(table())
  diff, low, high, _ = welch(PPL["B"], PPL["A"])
  assert stats.format_diff(got["B"], "{:.3f}") == f"+{diff:.3f} [+{low:.3f}, +{high:.3f}]"
  assert stats.format_diff(got["B"], "{:.3f}") == "+0.800 [+0.384, +1.216]"
  assert stats.format_diff(got["C"], "{:.3f}").endswith("] (n.s.)")
  assert stats.format_diff(got["A"], "{:.3f}") == "ref"
  assert stats.format_diff(got["B"], "{:,.0f}") == "+1 [+0, +1]"
  assert stats.format_mean_std(5.1944, 0.0123, "{:.3f}") == "5.194 ± 0.012"
  assert stats.format_mean_std(5.1944, None, "{:.3f}") == "5.194"


@pytest.mark.filterwarnings("error")  # no spurious warnings in sweep logs.
def test_single_seed_has_no_std_and_no_test():
  rows = table() + [row("D", 0, 7.0)]
  got = by_name(rows)
  d = got["D"]
  assert (d["n"], d["seeds"], d["perplexity_mean"], d["perplexity_std"]) == (1, [0], 7.0, None)
  close(d["diff"], 7.0 - 5.2, terms=8, scale=7)
  assert d["diff_low"] is d["diff_high"] is d["p_value"] is d["significant"] is None
  assert stats.format_diff(d, "{:.3f}") == "+1.800"  # the difference, without an interval.
  # A single-seed reference: no run can be tested against it.
  for r in stats.aggregate(rows, reference="D"):
    assert r["significant"] is None and r["diff_low"] is None


def test_failed_rows_are_ignored():
  clean = stats.aggregate(table())
  failed = [row("A", 3, 100.0, status="failed", error="ValueError: boom"),
            {"name": "E", "status": "failed", "error": "ValueError: boom"}]
  assert stats.aggregate(failed[:1] + table() + failed[1:]) == clean
  with pytest.raises(ValueError, match=r"^reference='E' is invalid: choose one of A, B, C$"):
    stats.aggregate(table() + failed, reference="E")
  assert stats.aggregate(failed) == []


def test_partial_metrics_are_skipped():
  rows = table()
  rows[0]["accuracy"] = None  # one of A's seeds has none: A's accuracy is left out.
  got = by_name(rows, metric="accuracy")
  assert got["A"]["accuracy_mean"] is None and got["A"]["accuracy_std"] is None
  assert got["B"]["accuracy_mean"] == 0.5
  close(got["A"]["perplexity_mean"], 5.2, terms=8, scale=6.1)  # other metrics still count.
  # The reference lacks the metric: nothing to compare, and no crash.
  assert got["B"]["diff"] is None and stats.format_diff(got["B"], "{:.4f}") == ""
  assert stats.format_diff(got["A"], "{:.4f}") == "ref"
  got = by_name(table(), metric="bits_per_token")  # None everywhere.
  assert all(r["diff"] is None and r["significant"] is None for r in got.values())


@pytest.mark.filterwarnings("error")  # no spurious warnings in sweep logs.
def test_zero_spread_is_not_tested():
  rows = table()  # accuracy is 0.5 on every seed of every run: the t statistic is 0 / 0.
  for r in rows:
    if r["name"] == "B":
      r["accuracy"] = 0.75
  got = by_name(rows, metric="accuracy")
  assert got["B"]["diff"] == 0.25 and got["B"]["significant"] is None
  # Spread on one side only is an ordinary Welch test.
  rows[1]["accuracy"] = 0.7  # B: 0.7, 0.75, 0.75.
  got = by_name(rows, metric="accuracy")
  diff, low, high, _ = welch([0.7, 0.75, 0.75], [0.5] * 3)
  close(got["B"]["diff_low"], low, terms=64, scale=1)
  close(got["B"]["diff_high"], high, terms=64, scale=1)
  assert low > 0 and got["B"]["significant"] is True


@pytest.mark.parametrize("kwargs, message", [
    ({"reference": "Z"}, "reference='Z' is invalid: choose one of A, B, C"),
    ({"metric": "loss"}, "metric='loss' is invalid: choose one of eval_loss, perplexity, "
                         "bits_per_char, bits_per_token, bits_per_byte, accuracy"),
])
def test_invalid_arguments(kwargs, message):
  with pytest.raises(ValueError) as e:
    stats.aggregate(table(), **kwargs)
  assert str(e.value) == message


def test_paired_interval_by_hand_and_shared_seed_spread_cancels():
  # Differences 1, 2, 3: mean 2, sd 1, t(0.975, 2 dof) = 4.303 (tables): 2 ± 4.303 / sqrt(3).
  got = stats.paired([11.0, 22.0, 33.0], [10.0, 20.0, 30.0])
  close(got["diff"], 2.0, terms=8, scale=33)
  # The tables give t to 3 decimals: the bounds agree to half a unit of the last one.
  assert abs(got["diff_low"] - (2 - 4.303 / 3 ** 0.5)) <= 0.0005 / 3 ** 0.5
  assert abs(got["diff_high"] - (2 + 4.303 / 3 ** 0.5)) <= 0.0005 / 3 ** 0.5
  assert got["significant"] is False
  # Seeds that move both runs alike (spread 10 between seeds, a steady +0.5): Welch's interval
  # contains 0, the paired one does not.
  a, b = [10.5, 20.4, 30.6], [10.0, 20.0, 30.0]
  assert stats.paired(a, b)["significant"] is True
  assert welch(a, b)[1] < 0 < welch(a, b)[2]
  assert stats.paired([1.5, 2.5], [1.0, 2.0])["significant"] is None  # no spread: no test.
  with pytest.raises(ValueError, match=r"^paired samples differ in length \(2 against 3\)"):
    stats.paired([1.0, 2.0], [1.0, 2.0, 3.0])
