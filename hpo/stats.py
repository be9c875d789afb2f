"""Seed-level comparison of two tuned algorithms: effect, 95% CI, verdict and one-sentence summary.

Setting. After tuning, each algorithm's final configuration is retrained with S independent training
seeds (S = 2..10, possibly different per algorithm), and every trained network is tested on the same
fixed, ordered set of E test episodes. The input per algorithm is a matrix ``acc[S, E]`` of per-episode
accuracies (fractions). The training seed is the unit of replication: the claim we want is about the
algorithms, not about the particular networks that happened to be trained.

Estimand. effect = mean_s(X_c,s) - mean_s(X_b,s), where X_s = acc[s].mean() is one network's test
accuracy (c = challenger, b = baseline), reported in percentage points.

Uncertainty. Two sources are combined:
  * between-seed variance of each algorithm, s_b^2/S_b + s_c^2/S_c (sample variances, ddof=1), and
  * the finite shared episode set, v_ep = var_e(d_e)/E with d_e = mean_s acc_c[s, e] - mean_s acc_b[s, e].
    Because both algorithms see the same episodes, pairing removes episode difficulty; what remains is
    how much the verdict could move with a different episode sample.
The variance is their sum and the degrees of freedom come from Welch-Satterthwaite over the three parts
(S_b - 1, S_c - 1 and E - 1 df). The 95% CI is effect +- t_{0.975, df} * SE, and the p-value is the
two-sided p of the same t statistic, so the decision and the reported interval can never disagree.

Why a t interval and not a two-level percentile bootstrap (resample seeds, then episodes)? With 3-5
seeds a percentile bootstrap is anti-conservative: the bootstrap variance of a mean of n values is the
plug-in variance, smaller than the unbiased one by the factor (n - 1)/n (2/3 at n = 3), and its
quantiles come from only n^n resamples of n values, so they are coarse and too narrow. A t interval
with Welch df widens exactly where few seeds make the variance itself uncertain, and is close to
nominal coverage at small S.

Verdict (margin M in points, default 1): "equivalent" if the CI lies inside (-M, +M), which wins even
when the CI excludes 0 (significant but negligible); "<winner>_better" if the CI excludes 0; otherwise
"inconclusive", with an estimate of how many seeds per algorithm would decide it.

Also reported: the probability of improvement over seed pairs (Agarwal et al. 2021, "Deep RL at the
edge of the statistical precipice", rliable) with a percentile-bootstrap CI, and, as a secondary line
conditional on the trained networks, a Wilcoxon signed-rank test on the paired episode differences.
That line never decides anything: it ignores seed variance, and its direction (a pseudo-median) can
differ from the mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Averaging equal values in floating point can leave a variance of ~1e-30 instead of 0; anything below
# this (points^2, i.e. an SD under 1e-7 points) is float noise, never real spread of accuracies.
ZERO_VARIANCE = 1e-14
# Per-seed accuracies that are equal in exact arithmetic can differ in the last bit; round before
# comparing them so such seeds tie (count 0.5) in the probability of improvement.
COMPARE_DECIMALS = 10
MAX_SEEDS = 1000
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class SeedComparison:
    baseline: str
    challenger: str
    seeds: tuple[int, int]  # (S_baseline, S_challenger)
    episodes: int  # E
    baseline_mean: float  # points (0..100), mean over seeds
    challenger_mean: float
    baseline_seed_sd: float  # points, sd over seeds (ddof=1)
    challenger_seed_sd: float
    effect: float  # points, challenger - baseline
    ci_low: float  # points, (1 - alpha) CI
    ci_high: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p_value: float  # two-sided, same t statistic as the CI
    p_improvement: float  # 0..1, P(challenger seed > baseline seed)
    p_improvement_low: float
    p_improvement_high: float
    episode_wilcoxon_p: float  # secondary, conditional on the trained networks
    episode_mean_difference: float  # points, mean of d_e (equals effect up to float rounding)
    margin: float  # M, points
    kind: str  # "<challenger>_better" | "<baseline>_better" | "equivalent" | "inconclusive"
    seeds_needed: int | None  # only for "inconclusive"; None otherwise or when unattainable
    sentence: str  # the one-sentence verdict


def compare_seeds(
    baseline: str,
    baseline_acc: np.ndarray,
    challenger: str,
    challenger_acc: np.ndarray,
    margin: float = 1.0,
    budget: str = "",
    alpha: float = 0.05,
    seed: int = 0,
) -> SeedComparison:
    """Compare challenger against baseline from per-episode accuracies ``[S, E]`` (fractions) of each seed."""
    b = _validated(baseline, baseline_acc)
    c = _validated(challenger, challenger_acc)
    if b.shape[1] != c.shape[1]:
        raise ValueError(f"both algorithms must be tested on the same episodes: E={b.shape[1]} vs E={c.shape[1]}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number of points >= 0, got {margin}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n_b, n_c, n_ep = b.shape[0], c.shape[0], b.shape[1]

    # Work in points from here on, so every variance and threshold is in the reported unit.
    x_b = b.mean(axis=1) * 100  # per-seed test accuracy
    x_c = c.mean(axis=1) * 100
    d = (c.mean(axis=0) - b.mean(axis=0)) * 100  # paired per-episode difference of seed-averaged accuracies
    effect = float(x_c.mean() - x_b.mean())

    var_b = _clean(float(x_b.var(ddof=1)))
    var_c = _clean(float(x_c.var(ddof=1)))
    var_ep = _clean(float(d.var(ddof=1))) / n_ep
    se, df = _se_and_df(var_b, n_b, var_c, n_c, var_ep, n_ep)

    q = 1 - alpha / 2
    if se == 0:
        # Nothing varies: the observed difference is the whole story (and a t statistic is undefined).
        ci_low = ci_high = effect
        p_value = 1.0 if effect == 0 else 0.0
    else:
        half = float(stats.t.ppf(q, df)) * se
        ci_low, ci_high = effect - half, effect + half
        p_value = float(2 * stats.t.sf(abs(effect) / se, df))

    kind = _kind(baseline, challenger, effect, ci_low, ci_high, margin)

    seeds_needed, episodes_limit = None, False
    if kind == "inconclusive":
        seeds_needed, episodes_limit = _seeds_needed(var_b, var_c, var_ep, n_ep, _deciding_half_width(effect, margin),
                                                     max(n_b, n_c), q)

    p_imp, p_imp_low, p_imp_high = _probability_of_improvement(x_c, x_b, alpha, seed)
    wilcoxon_p = _wilcoxon_p(d)

    seeds = {baseline: n_b, challenger: n_c}
    budget_clause = f"; budget: {budget}" if budget else ""

    def context(first: str, second: str) -> str:
        return f"{seeds[first]} {first} vs {seeds[second]} {second} training seeds, {n_ep} shared test episodes{budget_clause}"

    if seeds_needed is not None:
        undecided = f"about {seeds_needed} seeds per algorithm would be needed to decide"
    elif episodes_limit:
        undecided = "more seeds alone cannot decide it because the test-episode set is too small; more test episodes are needed"
    else:
        undecided = f"even {MAX_SEEDS} seeds per algorithm would not decide it"
    sentence = _sentence(baseline, challenger, effect, ci_low, ci_high, margin, kind, 1 - alpha, context, undecided)
    return SeedComparison(
        baseline=baseline,
        challenger=challenger,
        seeds=(n_b, n_c),
        episodes=n_ep,
        baseline_mean=float(x_b.mean()),
        challenger_mean=float(x_c.mean()),
        baseline_seed_sd=math.sqrt(var_b),
        challenger_seed_sd=math.sqrt(var_c),
        effect=effect,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        df=df,
        p_value=p_value,
        p_improvement=p_imp,
        p_improvement_low=p_imp_low,
        p_improvement_high=p_imp_high,
        episode_wilcoxon_p=wilcoxon_p,
        episode_mean_difference=float(d.mean()),
        margin=float(margin),
        kind=kind,
        seeds_needed=seeds_needed,
        sentence=sentence,
    )


@dataclass(frozen=True)
class SearchComparison:
    """The same comparison with the whole study (search, replicates, test) as the unit: one effect per
    study, each a rerun of the procedure with another searcher seed. What varies between such reruns,
    the configurations a search finds included, is what this CI covers."""
    baseline: str
    challenger: str
    effects: tuple[float, ...]  # points, challenger - baseline, one per study
    effect: float  # mean over studies
    sd: float  # sd over studies (ddof=1)
    ci_low: float
    ci_high: float
    margin: float
    kind: str
    studies_needed: int | None  # only for "inconclusive"; None otherwise or when unattainable
    sentence: str


def compare_searches(baseline: str, challenger: str, effects: list[float], margin: float = 1.0,
                     alpha: float = 0.05) -> SearchComparison:
    """A one-sample t interval over the studies' effects (points). Each effect already carries its own
    seed and episode noise, so their spread is the variance of the whole procedure; a t interval is
    what a handful of reruns supports (see the module note on bootstraps with few units)."""
    x = np.asarray(effects, dtype=float)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"need the finite effects of at least 2 studies, got {list(effects)}")
    effect, var = float(x.mean()), _clean(float(x.var(ddof=1)))
    q = 1 - alpha / 2
    half = float(stats.t.ppf(q, len(x) - 1)) * math.sqrt(var / len(x))
    ci_low, ci_high = effect - half, effect + half
    kind = _kind(baseline, challenger, effect, ci_low, ci_high, margin)
    needed = None
    if kind == "inconclusive":
        needed = _smallest_count(len(x), _deciding_half_width(effect, margin),
                                 lambda n: float(stats.t.ppf(q, n - 1)) * math.sqrt(var / n))
    clause = f"{len(x)} studies (searcher seeds) as the unit, each its own search and fresh-seed replicates"
    undecided = (f"about {needed} studies would be needed to decide" if needed is not None
                 else f"even {MAX_SEEDS} studies would not decide it")
    sentence = _sentence(baseline, challenger, effect, ci_low, ci_high, margin, kind, 1 - alpha,
                         lambda first, second: clause, undecided)
    return SearchComparison(baseline, challenger, tuple(float(v) for v in x), effect, math.sqrt(var),
                            float(ci_low), float(ci_high), float(margin), kind, needed, sentence)


def episode_line(c: SeedComparison) -> str:
    """The secondary, network-level line: it describes these trained networks, never the algorithms."""
    return (
        "conditional on these trained networks (not a claim about the algorithms): "
        f"Wilcoxon signed-rank p={c.episode_wilcoxon_p:.3g} over {c.episodes} paired episodes, "
        f"mean difference ({c.challenger} − {c.baseline}) {_signed(c.episode_mean_difference)} points"
    )


def _validated(name: str, acc: np.ndarray) -> np.ndarray:
    acc = np.asarray(acc, dtype=float)
    if acc.ndim != 2:
        raise ValueError(f"{name}: expected accuracies shaped [seeds, episodes], got shape {acc.shape}")
    if acc.shape[0] < 2:
        raise ValueError(f"{name}: at least 2 seeds per algorithm are needed (seed variance), got {acc.shape[0]}")
    if acc.shape[1] < 2:
        raise ValueError(f"{name}: at least 2 test episodes are needed (episode variance), got {acc.shape[1]}")
    if not np.all(np.isfinite(acc)):
        raise ValueError(f"{name}: accuracies must be finite")
    # Catches accuracies passed in percent, which would silently scale every result by 100.
    if acc.min() < 0 or acc.max() > 1:
        raise ValueError(f"{name}: accuracies must be fractions in [0, 1]")
    return acc


def _kind(baseline: str, challenger: str, effect: float, ci_low: float, ci_high: float, margin: float) -> str:
    """The verdict from the CI alone: "equivalent" wins even over a significant but negligible difference."""
    if -margin < ci_low and ci_high < margin:
        return "equivalent"
    if ci_low > 0 or ci_high < 0:
        return f"{challenger if effect > 0 else baseline}_better"
    return "inconclusive"


def _clean(variance: float) -> float:
    return 0.0 if variance < ZERO_VARIANCE else variance


def _se_and_df(var_b: float, n_b: int, var_c: float, n_c: int, var_ep: float, n_ep: int) -> tuple[float, float]:
    """Standard error of the effect and its Welch-Satterthwaite df.

    var_b and var_c are sample variances of per-seed accuracies (divided by the seed counts here);
    var_ep is already the variance of the episode-mean difference, var_e(d_e) / E.
    """
    parts = [(var_b / n_b, n_b - 1), (var_c / n_c, n_c - 1), (var_ep, n_ep - 1)]
    total = sum(v for v, _ in parts)
    nonzero = [(v, k) for v, k in parts if v > 0]
    if not nonzero:
        # No variance anywhere: df is irrelevant to the zero-width CI; report the smallest part's df
        # so it stays finite and >= 1.
        return 0.0, float(min(k for _, k in parts))
    df = total**2 / sum(v**2 / k for v, k in nonzero)
    # Welch-Satterthwaite lies between the smallest and the summed df of the parts in exact arithmetic;
    # the clip only guards float rounding.
    df = min(max(df, min(k for _, k in nonzero)), sum(k for _, k in nonzero))
    return math.sqrt(total), float(df)


def _seeds_needed(
    var_b: float, var_c: float, var_ep: float, n_ep: int, target: float, current: int, q: float
) -> tuple[int | None, bool]:
    """Smallest n seeds per algorithm with CI half-width < target, keeping the observed s^2 and v_ep.

    Returns (n or None, episodes_limit); episodes_limit is True when the episode term alone already
    reaches the target, so no number of seeds could decide it.
    """
    # As n grows the seed terms vanish and the half-width falls towards t_{E-1} * sqrt(v_ep).
    if float(stats.t.ppf(q, n_ep - 1)) * math.sqrt(var_ep) >= target:
        return None, True

    def half_width(n: int) -> float:
        se, df = _se_and_df(var_b, n, var_c, n, var_ep, n_ep)
        return float(stats.t.ppf(q, df)) * se

    return _smallest_count(current, target, half_width), False


def _deciding_half_width(effect: float, margin: float) -> float:
    """A CI around this effect narrower than this decides: it excludes 0 or fits inside +-margin."""
    return max(abs(effect), margin - abs(effect))


def _smallest_count(current: int, target: float, half_width: Callable[[int], float]) -> int | None:
    """The smallest number of units above `current` (at most MAX_SEEDS) whose CI half-width is below target."""
    return next((n for n in range(current + 1, MAX_SEEDS + 1) if half_width(n) < target), None)


def _pi_statistic(x_c: np.ndarray, x_b: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(challenger seed > baseline seed) over all seed pairs, ties counting half; vectorized for bootstrap."""
    x_c = np.round(np.moveaxis(x_c, axis, -1), COMPARE_DECIMALS)
    x_b = np.round(np.moveaxis(x_b, axis, -1), COMPARE_DECIMALS)
    greater = (x_c[..., :, None] > x_b[..., None, :]).mean(axis=(-2, -1))
    equal = (x_c[..., :, None] == x_b[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * equal


def _probability_of_improvement(
    x_c: np.ndarray, x_b: np.ndarray, alpha: float, seed: int
) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap CI, the two seed samples resampled independently."""
    point = float(_pi_statistic(x_c, x_b))
    if np.ptp(np.concatenate([x_c, x_b])) == 0:
        return point, point, point  # every resample gives the same value; skip the bootstrap
    with warnings.catch_warnings():
        # A resampling distribution with a single value is an expected outcome with few seeds
        # (e.g. every challenger seed beats every baseline seed); the fallback below handles it.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (x_c, x_b), _pi_statistic, n_resamples=BOOTSTRAP_RESAMPLES, vectorized=True, paired=False,
            confidence_level=1 - alpha, method="percentile", rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return point, point, point
    return point, low, high


def _wilcoxon_p(d: np.ndarray) -> float:
    # Round so that differences equal in exact arithmetic tie, and exact zeros are zeros (see report.py).
    d = np.round(d, COMPARE_DECIMALS)
    if not np.any(d):
        return 1.0  # no episode differs: nothing to rank, and scipy would warn
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


def _signed(x: float) -> str:
    # Round first so -0.001 prints as +0.00, then use a typographic minus.
    return f"{round(x, 2) + 0.0:+.2f}".replace("-", "−")


def _sentence(
    baseline: str, challenger: str, effect: float, ci_low: float, ci_high: float, margin: float, kind: str,
    level: float, context: Callable[[str, str], str], undecided: str,
) -> str:
    """One sentence whose direction words come only from ``kind`` and the sign of ``effect``.

    ``context(first, second)`` is the clause saying what the interval is over, naming ``first`` first;
    ``undecided`` ends an inconclusive sentence (what would decide it)."""
    ci_name = f"{level:.0%} CI"
    if kind.endswith("_better"):
        # Orient everything so the winner's lead is positive.
        if effect > 0:
            winner, loser, lead, low, high = challenger, baseline, effect, ci_low, ci_high
        else:
            winner, loser, lead, low, high = baseline, challenger, -effect, -ci_high, -ci_low
        return (f"{winner} is better than {loser} by {lead:.2f} points "
                f"({ci_name} {low:.2f} to {high:.2f}; {context(winner, loser)}).")
    interval = f"{ci_name} {_signed(ci_low)} to {_signed(ci_high)}"
    difference = f"{challenger} − {baseline} = {_signed(effect)} points ({interval}; {context(challenger, baseline)})"
    if kind == "equivalent":
        sentence = f"{baseline} and {challenger} are equivalent within ±{margin:.1f} points: {difference}"
        if ci_low > 0 or ci_high < 0:
            sentence += f", a statistically significant difference but smaller than the ±{margin:.1f}-point margin"
        return sentence + "."
    return f"inconclusive: {difference}; {undecided}."
