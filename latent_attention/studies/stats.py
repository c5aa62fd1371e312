"""Statistics over seeds: one row per run with mean ± std, and Welch's t-test against a reference.

A sweep with seeds has one row per (run, seed), sharing the run's `name` (sweep.py). `aggregate`
folds them into one row per run; `format_mean_std` and `format_diff` write its cells for
results.md.
"""

import math
import warnings

import numpy as np
from scipy import stats

# Metrics aggregated as mean and sample standard deviation over a run's seeds.
QUALITY = ("eval_loss", "perplexity", "bits_per_char", "bits_per_token", "bits_per_byte",
           "accuracy")
# Taken from a run's first row: they describe the run, not one seed's result.
DESCRIPTIVE = ("name", "kind", "sizes", "mlp_dim", "params", "kv_bytes_per_token",
               "kv_formula_bytes_per_token", "eval_split")
# Aggregated as the median over seeds: timings, where one slow seed (a busy machine) is noise.
TIMINGS = ("step_time_ms", "tokens_per_s", "mfu", "decode_tokens_per_s", "decode_ms_per_step",
           "decode_x_bound")
CONFIDENCE = 0.95


def aggregate(rows, reference: str | None = None, metric: str = "perplexity") -> list[dict]:
  """One dict per run (in order of first appearance) from the rows with status 'ok'.

  Keys: DESCRIPTIVE (from the run's first row); n and seeds (sorted); <q>_mean and <q>_std for
  each q in QUALITY (std with ddof=1, None when n < 2; both None unless every seed has q); the
  TIMINGS as medians over the seeds that have them; and the comparison of `metric` with
  `reference` (default: the first run): reference and metric (names), diff (this run's mean
  minus the reference's; 0.0 for the reference), diff_low and diff_high (the 95% confidence
  interval of the difference, Welch's t-test), p_value, and significant (whether the interval
  excludes 0). The interval, p_value and significant are None for the reference, when either
  side has n < 2 or lacks `metric`, or when both have zero spread (the test is undefined).
  No finished rows: [].
  """
  if metric not in QUALITY:
    raise ValueError(f"metric={metric!r} is invalid: choose one of {', '.join(QUALITY)}")
  runs = {}
  for r in rows:
    if r.get("status") == "ok":
      runs.setdefault(r["name"], []).append(r)
  if not runs:
    return []
  reference = next(iter(runs)) if reference is None else reference
  if reference not in runs:
    raise ValueError(f"reference={reference!r} is invalid: choose one of {', '.join(runs)}")
  values = {name: _values(seeds, metric) for name, seeds in runs.items()}
  out = []
  for name, seeds in runs.items():
    row = {k: seeds[0].get(k) for k in DESCRIPTIVE}
    row["n"] = len(seeds)
    row["seeds"] = sorted(s["seed"] for s in seeds if s.get("seed") is not None)
    for q in QUALITY:
      v = _values(seeds, q)
      row[f"{q}_mean"] = None if v is None else float(np.mean(v))
      row[f"{q}_std"] = None if v is None or len(v) < 2 else float(np.std(v, ddof=1))
    for k in TIMINGS:
      v = [s[k] for s in seeds if s.get(k) is not None]
      row[k] = float(np.median(v)) if v else None
    row.update(reference=reference, metric=metric,
               **_compare(values[name], values[reference], name == reference))
    out.append(row)
  return out


def _values(seeds, key) -> list[float] | None:
  """The seeds' values of `key`; None unless every seed has one (a mean over some seeds would
  be labelled with the wrong n)."""
  v = [s.get(key) for s in seeds]
  return None if any(x is None for x in v) else [float(x) for x in v]


def _compare(a, b, is_reference) -> dict:
  """diff, its Welch confidence interval, p_value and significant for samples a minus b."""
  out = dict(diff=None, diff_low=None, diff_high=None, p_value=None, significant=None)
  if a is None or b is None:
    return out
  out["diff"] = 0.0 if is_reference else float(np.mean(a) - np.mean(b))
  # With zero spread on both sides the standard error is 0 and scipy returns a degenerate
  # interval (a point) with t = ±inf or nan: no test to report.
  testable = (not is_reference and min(len(a), len(b)) >= 2 and all(map(math.isfinite, a + b))
              and np.var(a, ddof=1) + np.var(b, ddof=1) > 0)
  if testable:
    with warnings.catch_warnings():
      # scipy calls a constant sample (e.g. accuracy 1.0 on every seed) a catastrophic
      # cancellation; its variance, 0, is exact.
      if min(len(set(a)), len(set(b))) == 1:
        warnings.simplefilter("ignore", RuntimeWarning)
      # Welch's test: seeds of different runs need not share a variance.
      test = stats.ttest_ind(a, b, equal_var=False)
      ci = test.confidence_interval(CONFIDENCE)  # of mean(a) - mean(b), with Welch's dof.
    low, high = float(ci.low), float(ci.high)
    out.update(diff_low=low, diff_high=high, p_value=float(test.pvalue),
               significant=not (low <= 0.0 <= high))
  return out


def paired(a, b) -> dict:
  """diff = mean of a_i - b_i over pairs (one per seed), its Student-t confidence interval and
  significant: the test for runs whose seed i shares data order (and, for a run started from
  another, its parent) with the other's seed i, where seed-to-seed spread cancels."""
  if len(a) != len(b):
    raise ValueError(f"paired samples differ in length ({len(a)} against {len(b)}): one value "
                     "per seed on both sides")
  d = np.asarray(a, float) - np.asarray(b, float)
  out = dict(diff=float(d.mean()), diff_low=None, diff_high=None, significant=None)
  if len(d) >= 2 and np.var(d, ddof=1) > 0:  # no spread: no test (as in _compare).
    ci = stats.ttest_rel(a, b).confidence_interval(CONFIDENCE)  # of mean(a - b).
    out.update(diff_low=float(ci.low), diff_high=float(ci.high),
               significant=not ci.low <= 0.0 <= ci.high)
  return out


def format_mean_std(mean: float, std: float | None, fmt: str) -> str:
  """'5.194 ± 0.012' with fmt '{:.3f}'; only the mean when std is None."""
  return fmt.format(mean) if std is None else f"{fmt.format(mean)} ± {fmt.format(std)}"


def format_diff(row: dict, fmt: str) -> str:
  """An `aggregate` row's difference cell: '+0.027 [+0.010, +0.044]', with ' (n.s.)' when the
  interval contains 0; 'ref' for the reference; the signed diff alone without an interval
  (n < 2); '' without a diff."""
  if row["name"] == row["reference"]:
    return "ref"
  if row["diff"] is None:
    return ""
  signed = fmt.replace("{:", "{:+", 1) if "{:" in fmt else "{:+}"
  cell = signed.format(row["diff"])
  if row["significant"] is None:
    return cell
  cell += f" [{signed.format(row['diff_low'])}, {signed.format(row['diff_high'])}]"
  return cell if row["significant"] else f"{cell} (n.s.)"
