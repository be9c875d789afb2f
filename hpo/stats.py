"""Comparisons of two tuned algorithms: effect, 95% CI, verdict and one-sentence summary, at two units.

Setting. Each algorithm's hyperparameter search ends in a final configuration (its finalist), which
is retrained with S independent training seeds (S >= 2, possibly different per algorithm and per
search); every trained network is tested on the same fixed, ordered set of E test episodes. The input
per finalist is a matrix ``acc[S, E]`` of per-episode accuracies (fractions). Everything is reported in
percentage points.

Two units, two functions:

* ``compare_seeds`` — one search per algorithm; the training seed is the unit. Its CI covers seeds and
  test episodes *given the configurations this search found*. With ``unit="config"`` its kinds say so
  (``config_<winner>_better``, ``config_equivalent``, ``config_inconclusive``).
* ``compare_search_finalists`` — K independent searches per algorithm (K may differ by algorithm), each
  finalist retrained with S_k fresh seeds; the search is the unit. Measured on this project, the search
  moves the effect (sd about 1 point between searches) far more than one study's CI covers (SE
  0.2-0.4), so only this CI supports a claim about the algorithms.

``compare_searches`` keeps the older route (one effect per separately run study, a one-sample t interval,
used by ``hpo.across``), and ``expected_best`` gives Dodge et al.'s expected-best-validation curve.

Seed unit (compare_seeds). effect = mean_s(X_c,s) - mean_s(X_b,s), X_s = acc[s].mean() one network's test
accuracy. One network's X_s varies as sigma_seed^2 + sigma_noise^2/E, the second part its own network x
episode noise; MS_res/E estimates it precisely, MS_res being the interaction (residual) mean square of
that algorithm's seeds x episodes layout, (S - 1)(E - 1) df. The variance of the effect has two parts:
  * between seeds, per algorithm max(s^2, MS_res/E)/S (s^2 the sample variance of the X_s, ddof=1;
    sigma_seed^2 clipped at 0, the usual variance-component estimate);
  * the finite shared episode set, v_ep = max(0, var_e(d_e) - MS_res,b/S_b - MS_res,c/S_c)/E with
    d_e = mean_s acc_c[s, e] - mean_s acc_b[s, e]. Both algorithms see the same episodes, so episode
    difficulty cancels; var_e(d_e) holds the algorithm x episode interaction (what another episode sample
    would move) *and* the network x episode noise again, which the seed terms already hold: subtracted.
The previous version added s^2/S and the whole var_e(d_e)/E, counting that noise twice. df:
Welch-Satterthwaite over the parts; each seed term's own df is Satterthwaite's for max(s^2, MS_res/E)
(the scaled chi-square with its mean and variance; S - 1 when seeds differ by much more than their
episode noise, more when the precisely known noise is most of it; see _seed_parts), v_ep has E - 1.
Simulated (tests/test_stats.py, 500 studies each, no true difference, algorithm x episode interaction of
sd 2 points): coverage 94.8-98.2% at S = 2, 3, 5 vs 2 seeds and seed sd 0.1 or 0.5 point (old 93.8-98.4%);
where seeds agree closely (sd 0.1 point, below one network's episode noise of ~0.17) the median width is
0.87-0.95 of the old one (S = 5, 3, 2); where seeds differ (sd 0.5) it is 1.01 (S = 3) and 1.09 (S = 2:
the old interval there borrowed df from the double-counted, E - 1 df part). With S - 1 df for the whole
seed term, 2 seeds that agree gave intervals 1.5x the old; with (S - 1)(E - 1) df for the noise share,
coverage fell to 90%. The CI is effect +- t_{0.975, df} * SE and the p-value is the two-sided p of the
same t statistic, so the decision and the interval never disagree.

Search unit (compare_search_finalists). m_A,k is search k's finalist mean test accuracy (mean over its
seeds); effect = mean_k m_c,k - mean_k m_b,k. Two levels, searches and seeds within them: the
variance of a search mean, and so the sample variance of the m_A,k, holds the search-to-search variance
of the finalist's quality plus that finalist's seed and network x episode noise at its S_k. The CI is
Welch's t over the per-search means, unpaired (K may differ by algorithm), plus one term for the test
episodes:
    SE^2 = s_mb^2/K_b + s_mc^2/K_c + v_ep,
    v_ep = max(0, var_e(D_e) - MS_kxe,b/K_b - MS_kxe,c/K_c)/E,
D_e = (mean over searches and seeds of the challenger's accuracy on episode e) - (the same for the
baseline), MS_kxe the interaction mean square of an algorithm's searches x episodes layout of seed-
averaged accuracies. Why the episode term: every search of one study is tested on the same episodes, so
the algorithm x episode interaction averaged over that one episode set is common to all of an
algorithm's searches and does not show in their spread; a rerun of the whole procedure (another --seed)
draws other episodes. The subtraction removes what the between-search variances already hold (config x
episode and network x episode noise), as in the seed unit; E[MS_kxe]/K is exactly that part, even with
unequal S_k. df: Welch-Satterthwaite over the two search terms alone (K_b - 1, K_c - 1); the episode
term widens the interval but adds no df. Giving it its E - 1 df let a chance-small pair of search sds
at K = 3 raise the df as well as shrink the SE: 94.2% coverage and 5.5% false winners over 3000
simulated studies (K = 3, S = 3), against 95.3% and 4.5% now.
Decided by simulation (tests/test_stats.py, test_the_episode_term_is_needed_when_searches_agree): with
searches that agree (search sd 0.2 point for both, seed sd 0.1) and an algorithm x episode interaction of
sd 3 points, Welch over the search means alone covers 90.2% at K = 5, S = 3, with the episode term 97.2%;
with the measured search sds (1.1 and 0.2 points) the term hardly matters (95.5% vs 94.9%), and where
there is no interaction its clipped estimate is ~0. It is cheap, estimable from the data at hand, and
only matters where it is needed. Calibration with the measured sds (1000 studies each, search sd 1.1 and
0.2, seed sd 0.3, E = 600): false winners 4.5-5.4% and coverage 93.9-95.2% for K in {3, 5} x S in
{2, 3}; a true 2.5-point gap at K = 5, S = 3 is found in 100% of 300 studies, never the wrong way. Welch
itself is slightly liberal at K = 3 with so unequal sds (5.7% in a pure-normal simulation).

Verdict (margin M in points, default 1), the same at every unit: "equivalent" if the CI lies inside
(-M, +M), which wins even when the CI excludes 0 (significant but negligible); "<winner>_better" if the
CI excludes 0; otherwise "inconclusive", with how many units would decide it.

How many searches would decide it: the smallest n searches per algorithm whose study would reach a
verdict (CI excluding 0, or inside +-M) with 80% power if the true effect were the observed one, the
between-search variances at their one-sided upper 80% confidence bound, s^2 (K - 1) / chi2_{0.20, K-1}
(x2.12 on the sd at K = 3, x1.56 at K = 5), the episode term fixed (more searches do not shrink it).
Planning from a pilot's plug-in sd gives the planned power only about half the time; the 80% upper
bound gives at least the planned power with probability ~0.8 (Browne 1995, "On the use of a pilot sample
for sample size determination"; Kieser & Wassmer 1996); a 90% bound would be x3.1 on the sd at K = 3,
which asks for absurd numbers of searches from three pilots. Power: the noncentral t for "excludes 0",
and t-distributed estimate within +-(M - t*SE) for "inside the margin"; the easier of the two counts.

One search for either algorithm (K = 1): no between-search variance can be estimated for it, so there is
no claim about the algorithms. The result then has unit "config" and the config-level kinds (as
compare_seeds(unit="config")): its CI covers seeds and episodes given the configurations found, and its
sentence says so. searches_needed is then MIN_SEARCHES = 3, a lower bound ("at least 3 searches per
algorithm"): with 2 searches each sd has 1 df, its 80% upper bound is x3.9 the estimate and Welch's
t_{0.975} lies between 4.3 and 12.7, so no plan made from 2 is worth stating; the sd measured for the
other algorithm is no stand-in (measured: 1.1 vs 0.2 points). For K >= 2 the config-level interval is
reported alongside (config_ci_low/high) so the search's share of the uncertainty is visible.

Why t intervals and not percentile bootstraps? With 3-5 units a percentile bootstrap is anti-conservative:
the bootstrap variance of a mean of n values is the plug-in variance, smaller than the unbiased one by
(n - 1)/n (2/3 at n = 3), and its quantiles come from only n^n resamples. A t interval with Welch df widens
exactly where few units make the variance itself uncertain.

Probability of improvement (Agarwal et al. 2021, rliable): P(challenger seed > baseline seed) over all
seed pairs, ties counting half, reported as the exact count ("7.5 of 9 pairs") with the two-sided
Mann-Whitney p: exact (scipy.stats.mannwhitneyu(method="exact")) without ties, an exact permutation test
of the same U statistic with ties (scipy's PermutationMethod, i.e. scipy.stats.permutation_test; a
random-permutation p from 9,999 permutations when there are more than 10,000 arrangements, 8 vs 8 seeds and up). It
replaces a percentile-bootstrap CI that was degenerate ("1.00 (1.00 to 1.00)") whenever 3 vs 3 seeds did
not overlap, whose exact p is 0.10: under no difference 12-20% of studies printed such an interval (11% in
tests/test_stats.py, where the old interval covered 0.5 in 82% of studies; the exact test, whose smallest
p at 3 vs 3 is 0.1, rejects in none, and in 3.6% at 5 vs 5, whose exact size is 3.2%). Like the
pairs it counts, the p is about networks tested on these episodes: where the algorithms see these
episodes differently it finds that too, as it should, but it leaves out the shared episode term, so it
is not a claim about the algorithms (the t interval is).

Also reported, as a secondary line conditional on the trained networks, a Wilcoxon signed-rank test on
the paired episode differences. That line never decides anything: it ignores seed variance, and its
direction (a pseudo-median) can differ from the mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .formatting import signed

# Averaging equal values in floating point can leave a variance of ~1e-30 instead of 0; anything below
# this (points^2, i.e. an SD under 1e-7 points) is float noise, never real spread of accuracies.
ZERO_VARIANCE = 1e-14
# Per-seed accuracies that are equal in exact arithmetic can differ in the last bit; round before
# comparing them so such seeds tie (count 0.5) in the probability of improvement.
COMPARE_DECIMALS = 10
MAX_SEEDS = 1000
MAX_SEARCHES = 1000
# Fewest searches per algorithm for which a search-to-search sd is worth planning from (module note).
MIN_SEARCHES = 3
# Planning the number of searches: power, and the one-sided confidence of the upper bound on each sd.
PLANNING_POWER = 0.80
PLANNING_CONFIDENCE = 0.80
# The Mann-Whitney permutation p is exact up to this many arrangements of the seeds, random above.
EXACT_PERMUTATIONS = 10_000
RANDOM_PERMUTATIONS = 9_999
UNITS = ("seed", "config")


@dataclass(frozen=True)
class Verdict:
    """What a comparison decides, the same at every unit (module note, "Verdict"): the effect and its CI,
    the margin, the kind the CI gives and the one sentence that says it. The MLflow tags verdict.kind and
    verdict.unit, and the metrics effect_points, ci_low_points and ci_high_points, are its fields."""

    effect: float  # points, challenger - baseline
    ci_low: float  # points, (1 - alpha) CI at this unit
    ci_high: float
    margin: float  # M, points
    unit: str  # "seed", "search", "study", or "config": the kinds say the answer is about these configurations
    kind: str  # "<winner>_better" | "equivalent" | "inconclusive"; "config_"-prefixed for unit "config"
    sentence: str  # the one-sentence verdict


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
    verdict: Verdict  # unit "seed", or "config" for one search's finalists
    df: float  # Welch-Satterthwaite degrees of freedom of the verdict's CI
    p_value: float  # two-sided, same t statistic as the CI
    p_improvement: float  # 0..1, P(challenger seed > baseline seed), ties counting half
    p_improvement_pairs: tuple[float, int]  # (pairs the challenger seed wins, ties counting half; all pairs)
    p_improvement_p: float  # two-sided Mann-Whitney p of those pairs (exact at few seeds)
    episode_wilcoxon_p: float  # secondary, conditional on the trained networks
    episode_mean_difference: float  # points, mean of d_e (equals effect up to float rounding)
    seeds_needed: int | None  # only for "inconclusive"; None otherwise or when unattainable


def compare_seeds(
    baseline: str,
    baseline_acc: np.ndarray,
    challenger: str,
    challenger_acc: np.ndarray,
    margin: float = 1.0,
    budget: str = "",
    alpha: float = 0.05,
    seed: int = 0,
    unit: str = "seed",
) -> SeedComparison:
    """Compare challenger against baseline from per-episode accuracies ``[S, E]`` (fractions) of each seed.

    ``unit="config"`` marks one search's finalists compared as configurations: the kinds carry the
    prefix "config_" and the sentence says it is not a claim about the algorithms. ``seed`` seeds the
    random permutations of the probability-of-improvement test, used only with ties and many seeds."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    b = _validated(baseline, baseline_acc)
    c = _validated(challenger, challenger_acc)
    if b.shape[1] != c.shape[1]:
        raise ValueError(f"both algorithms must be tested on the same episodes: E={b.shape[1]} vs E={c.shape[1]}")
    _check_margin_alpha(margin, alpha)
    n_b, n_c, n_ep = b.shape[0], c.shape[0], b.shape[1]

    # Work in points from here on, so every variance and threshold is in the reported unit.
    x_b = b.mean(axis=1) * 100  # per-seed test accuracy
    x_c = c.mean(axis=1) * 100
    d = (c.mean(axis=0) - b.mean(axis=0)) * 100  # paired per-episode difference of seed-averaged accuracies
    effect = float(x_c.mean() - x_b.mean())

    var_b = _clean(float(x_b.var(ddof=1)))
    var_c = _clean(float(x_c.var(ddof=1)))
    # Each seed term splits into the seeds' own variance and the network x episode noise; the latter is
    # also in var_e(d_e), where it is taken out, so it is counted once.
    per_seed_b, per_seed_c = _seed_components(b * 100), _seed_components(c * 100)
    held = per_seed_b[1] * n_ep / n_b + per_seed_c[1] * n_ep / n_c
    var_ep = _clean(max(0.0, float(d.var(ddof=1)) - held) / n_ep)
    parts = _seed_parts(per_seed_b, n_b, n_ep) + _seed_parts(per_seed_c, n_c, n_ep) + [(var_ep, n_ep - 1)]
    ci_low, ci_high, df, p_value = _t_interval(effect, parts, alpha)

    plain_kind = _kind(baseline, challenger, effect, ci_low, ci_high, margin)
    seeds_needed, episodes_limit = None, False
    q = 1 - alpha / 2
    if plain_kind == "inconclusive":
        seeds_needed, episodes_limit = _seeds_needed(
            per_seed_b, per_seed_c, var_ep, n_ep, _deciding_half_width(effect, margin), max(n_b, n_c), q
        )

    won, pairs, p_imp_p = _improvement_test(x_c, x_b, seed)
    wilcoxon_p = _wilcoxon_p(d)

    seeds = {baseline: n_b, challenger: n_c}
    budget_clause = f"; budget: {budget}" if budget else ""

    def context(first: str, second: str) -> str:
        return f"{seeds[first]} {first} vs {seeds[second]} {second} training seeds, {n_ep} shared test episodes{budget_clause}"

    if seeds_needed is not None:
        undecided = f"about {seeds_needed} seeds per algorithm would be needed to decide"
    elif episodes_limit:
        undecided = (
            "more seeds alone cannot decide it because the test-episode set is too small; more test episodes are needed"
        )
    else:
        undecided = f"even {MAX_SEEDS} seeds per algorithm would not decide it"
    sentence = _sentence(
        baseline, challenger, effect, ci_low, ci_high, margin, plain_kind, 1 - alpha, context, undecided
    )
    kind = plain_kind
    if unit == "config":
        kind = "config_" + plain_kind
        sentence = "About these configurations (one search per algorithm), not the algorithms: " + sentence
    return SeedComparison(
        baseline=baseline,
        challenger=challenger,
        seeds=(n_b, n_c),
        episodes=n_ep,
        baseline_mean=float(x_b.mean()),
        challenger_mean=float(x_c.mean()),
        baseline_seed_sd=math.sqrt(var_b),
        challenger_seed_sd=math.sqrt(var_c),
        verdict=Verdict(effect, ci_low, ci_high, float(margin), unit, kind, sentence),
        df=df,
        p_value=p_value,
        p_improvement=won / pairs,
        p_improvement_pairs=(won, pairs),
        p_improvement_p=p_imp_p,
        episode_wilcoxon_p=wilcoxon_p,
        episode_mean_difference=float(d.mean()),
        seeds_needed=seeds_needed,
    )


@dataclass(frozen=True)
class SearchFinalistComparison:
    """K independent searches per algorithm, each finalist retrained with fresh seeds: the search is the unit."""

    baseline: str
    challenger: str
    searches: tuple[int, int]  # (K_baseline, K_challenger)
    seeds: tuple[tuple[int, ...], tuple[int, ...]]  # S_k of each search: (baseline's, challenger's)
    episodes: int  # E, shared by every network
    baseline_search_means: tuple[float, ...]  # points, each search finalist's mean test accuracy over its seeds
    challenger_search_means: tuple[float, ...]
    baseline_mean: float  # points, mean over searches
    challenger_mean: float
    baseline_search_sd: float | None  # points, search-to-search sd of the search means (ddof=1); None when K = 1
    challenger_search_sd: float | None
    verdict: Verdict  # unit "search", or "config" when an algorithm has a single search
    df: float  # of the verdict's CI: Welch-Satterthwaite over the two search terms (unit "search"), or as compare_seeds
    p_value: float  # two-sided, same t statistic as the CI
    episode_se: float  # points, the shared-test-episode part of the SE (0 when clipped)
    config_ci_low: float  # points, CI given the configurations found (seeds and episodes only)
    config_ci_high: float
    searches_needed: int | None  # "inconclusive": searches per algorithm for 80% power (None: unattainable);
    # unit "config": MIN_SEARCHES, a lower bound; None otherwise


def compare_search_finalists(
    baseline: str,
    baseline_accs: Sequence[np.ndarray],
    challenger: str,
    challenger_accs: Sequence[np.ndarray],
    margin: float = 1.0,
    alpha: float = 0.05,
    budget: str = "",
) -> SearchFinalistComparison:
    """Compare from one per-episode accuracy matrix ``[S_k, E]`` (fractions) per search k and algorithm.

    See the module docstring: Welch's t over the search means plus the shared test-episode term; with a
    single search for either algorithm, a configuration-level answer (unit "config")."""
    bs = _validated_searches(baseline, baseline_accs)
    cs = _validated_searches(challenger, challenger_accs)
    episodes = {a.shape[1] for a in bs + cs}
    if len(episodes) != 1:
        raise ValueError(f"every finalist must be tested on the same episodes: E in {sorted(episodes)}")
    _check_margin_alpha(margin, alpha)
    (n_ep,) = episodes
    k_b, k_c = len(bs), len(cs)

    # Points. profile[k, e]: search k's finalist on episode e, averaged over its seeds.
    profile_b = np.stack([a.mean(axis=0) for a in bs]) * 100
    profile_c = np.stack([a.mean(axis=0) for a in cs]) * 100
    m_b, m_c = profile_b.mean(axis=1), profile_c.mean(axis=1)
    effect = float(m_c.mean() - m_b.mean())
    var_d = float((profile_c.mean(axis=0) - profile_b.mean(axis=0)).var(ddof=1))

    # Given the configurations: seeds within searches and the episodes; the network x episode noise
    # (seeds x episodes interaction) is in the seed terms and is taken out of the episode term.
    config_parts, held = [], 0.0
    for searches in (bs, cs):
        k = len(searches)
        for a in searches:
            total, noise = _seed_components(a * 100)
            config_parts += [(v / k**2, df) for v, df in _seed_parts((total, noise), a.shape[0], n_ep)]
            held += noise * n_ep / (a.shape[0] * k**2)
    config_ep = _clean(max(0.0, var_d - held) / n_ep)
    config_low, config_high, config_df, config_p = _t_interval(effect, config_parts + [(config_ep, n_ep - 1)], alpha)

    budget_clause = f"; budget: {budget}" if budget else ""
    count = {baseline: k_b, challenger: k_c}
    seeds = {baseline: [a.shape[0] for a in bs], challenger: [a.shape[0] for a in cs]}

    def seeds_text(algorithm: str) -> str:
        low, high = min(seeds[algorithm]), max(seeds[algorithm])
        return f"{low}" if low == high else f"{low}-{high}"

    var_b = _clean(float(m_b.var(ddof=1))) if k_b > 1 else None
    var_c = _clean(float(m_c.var(ddof=1))) if k_c > 1 else None
    if var_b is None or var_c is None:
        unit, (ci_low, ci_high, df, p_value), episode_var = (
            "config",
            (config_low, config_high, config_df, config_p),
            config_ep,
        )
        plain_kind = _kind(baseline, challenger, effect, ci_low, ci_high, margin)
        searches_needed = MIN_SEARCHES
        single = " and ".join(a for a in (baseline, challenger) if count[a] == 1)

        def context(first: str, second: str) -> str:
            return (
                f"given the configurations found by {count[first]} {first} vs {count[second]} {second} searches, "
                f"{seeds_text(first)} vs {seeds_text(second)} training seeds each, {n_ep} shared test episodes"
                f"{budget_clause}"
            )

        undecided = "more seeds would narrow it, but only for these configurations"
        core = _sentence(
            baseline, challenger, effect, ci_low, ci_high, margin, plain_kind, 1 - alpha, context, undecided
        )
        sentence = (
            f"About these configurations only, not the algorithms (one search for {single}): {core} "
            f"A claim about the algorithms needs at least {MIN_SEARCHES} searches per algorithm "
            "(a search-to-search sd cannot be estimated from one search)."
        )
        kind = "config_" + plain_kind
    else:
        unit = "search"
        # Common to all of an algorithm's searches: the algorithm x episode interaction on this episode
        # set. The config x episode and network x episode noise is in the between-search variances.
        held = _interaction_ms(profile_b) / k_b + _interaction_ms(profile_c) / k_c
        episode_var = _clean(max(0.0, var_d - held) / n_ep)
        parts = [(var_b / k_b, k_b - 1), (var_c / k_c, k_c - 1)]
        # The df are the search terms' alone (module note): the episode term widens, never adds df.
        ci_low, ci_high, df, p_value = _t_interval(
            effect, parts + [(episode_var, n_ep - 1)], alpha, df=_se_and_df(parts)[1]
        )
        kind = _kind(baseline, challenger, effect, ci_low, ci_high, margin)
        searches_needed, episodes_limit = None, False
        if kind == "inconclusive":
            searches_needed, episodes_limit = _searches_needed(
                var_b, k_b, var_c, k_c, episode_var, n_ep, effect, margin, 1 - alpha / 2
            )

        def context(first: str, second: str) -> str:
            return (
                f"{count[first]} {first} vs {count[second]} {second} searches as the unit, each finalist retrained "
                f"with {seeds_text(first)} vs {seeds_text(second)} fresh seeds, {n_ep} shared test episodes{budget_clause}"
            )

        if searches_needed is not None:
            undecided = (
                f"about {searches_needed} searches per algorithm would be needed to decide "
                f"({PLANNING_POWER:.0%} power at the upper {PLANNING_CONFIDENCE:.0%} confidence bound "
                "of each search-to-search sd)"
            )
        elif episodes_limit:
            undecided = (
                "more searches alone cannot decide it because the test-episode set is too small; "
                "more test episodes are needed"
            )
        else:
            undecided = f"even {MAX_SEARCHES} searches per algorithm would not decide it"
        sentence = _sentence(baseline, challenger, effect, ci_low, ci_high, margin, kind, 1 - alpha, context, undecided)
    return SearchFinalistComparison(
        baseline=baseline,
        challenger=challenger,
        searches=(k_b, k_c),
        seeds=(tuple(a.shape[0] for a in bs), tuple(a.shape[0] for a in cs)),
        episodes=n_ep,
        baseline_search_means=tuple(float(v) for v in m_b),
        challenger_search_means=tuple(float(v) for v in m_c),
        baseline_mean=float(m_b.mean()),
        challenger_mean=float(m_c.mean()),
        baseline_search_sd=None if var_b is None else math.sqrt(var_b),
        challenger_search_sd=None if var_c is None else math.sqrt(var_c),
        verdict=Verdict(effect, ci_low, ci_high, float(margin), unit, kind, sentence),
        df=df,
        p_value=p_value,
        episode_se=math.sqrt(episode_var),
        config_ci_low=config_low,
        config_ci_high=config_high,
        searches_needed=searches_needed,
    )


@dataclass(frozen=True)
class SearchComparison:
    """The same comparison with the whole study (search, replicates, test) as the unit: one effect per
    study, each a rerun of the procedure with another searcher seed. What varies between such reruns,
    the configurations a search finds included, is what this CI covers."""

    baseline: str
    challenger: str
    effects: tuple[float, ...]  # points, challenger - baseline, one per study
    sd: float  # sd over studies (ddof=1)
    verdict: Verdict  # unit "study": its effect is the mean over studies
    studies_needed: int | None  # only for "inconclusive"; None otherwise or when unattainable


def compare_searches(
    baseline: str, challenger: str, effects: list[float], margin: float = 1.0, alpha: float = 0.05
) -> SearchComparison:
    """A one-sample t interval over the studies' effects (points). Each effect already carries its own
    seed and episode noise (each study drew its own test episodes), so their spread is the variance of
    the whole procedure; a t interval is what a handful of reruns supports (see the module note)."""
    x = np.asarray(effects, dtype=float)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"need the finite effects of at least 2 studies, got {list(effects)}")
    effect, var = float(x.mean()), _clean(float(x.var(ddof=1)))
    q = 1 - alpha / 2
    if var == 0:
        ci_low = ci_high = effect  # every study agrees; scipy's interval would be nan (0/0)
    else:
        interval = stats.ttest_1samp(x, 0.0).confidence_interval(confidence_level=1 - alpha)
        ci_low, ci_high = float(interval.low), float(interval.high)
    kind = _kind(baseline, challenger, effect, ci_low, ci_high, margin)
    needed = None
    if kind == "inconclusive":
        needed = _smallest_count(
            len(x), _deciding_half_width(effect, margin), lambda n: float(stats.t.ppf(q, n - 1)) * math.sqrt(var / n)
        )
    clause = f"{len(x)} studies (searcher seeds) as the unit, each its own search and fresh-seed replicates"
    undecided = (
        f"about {needed} studies would be needed to decide"
        if needed is not None
        else f"even {MAX_SEEDS} studies would not decide it"
    )
    sentence = _sentence(
        baseline, challenger, effect, ci_low, ci_high, margin, kind, 1 - alpha, lambda first, second: clause, undecided
    )
    return SearchComparison(
        baseline,
        challenger,
        tuple(float(v) for v in x),
        math.sqrt(var),
        Verdict(effect, ci_low, ci_high, float(margin), "study", kind, sentence),
        needed,
    )


@dataclass(frozen=True)
class ExpectedBest:
    """Expected best validation accuracy of n trials (Dodge et al. 2019, "Show your work"), n = 1..N.

    Each n draws n trials with replacement from the N observed ones. Values are in the input's unit."""

    n: tuple[int, ...]  # 1..N
    mean: tuple[float, ...]  # E[max of n]
    sd: tuple[float, ...]  # sd of the max of n: sqrt(E[max^2] - E[max]^2)
    low: tuple[float, ...]  # mean - sd, the band Dodge et al. shade
    high: tuple[float, ...]  # mean + sd, capped at the best observed value


def expected_best(values: Sequence[float], n_max: int | None = None) -> ExpectedBest:
    """E[max_n] = sum_i v_(i) [(i/N)^n - ((i-1)/N)^n] over the sorted values, for n = 1..n_max (default N)."""
    v = np.sort(np.asarray(values, dtype=float))
    if v.ndim != 1 or len(v) == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"need one or more finite values, got {list(values)}")
    count = len(v)
    n_max = count if n_max is None else int(n_max)
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    n = np.arange(1, n_max + 1)[:, None]
    cdf = np.arange(count + 1) / count  # P(one draw <= v_(i)), i = 0..N
    weights = np.diff(cdf[None, :] ** n, axis=1)  # [n, N]: P(the max of n draws is v_(i))
    mean = weights @ v
    second = weights @ v**2
    sd = np.sqrt(np.clip(second - mean**2, 0.0, None))
    # Rounding can push the mean a hair above the largest value (weights sum to 1 +- eps).
    mean = np.minimum(mean, v[-1])
    return ExpectedBest(
        tuple(int(k) for k in n[:, 0]),
        tuple(float(x) for x in mean),
        tuple(float(x) for x in sd),
        tuple(float(x) for x in mean - sd),
        tuple(float(x) for x in np.minimum(mean + sd, v[-1])),
    )


def t_half_width(values: np.ndarray, fewer_than_two: float = math.nan) -> float:
    """Half-width of the 95% t interval of the mean of `values`; `fewer_than_two` (nan unless given) for
    fewer than 2 values: there is no spread to measure."""
    n = values.size
    if n < 2:
        return fewer_than_two
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def episode_line(c: SeedComparison) -> str:
    """The secondary, network-level line: it describes these trained networks, never the algorithms."""
    return (
        "conditional on these trained networks (not a claim about the algorithms): "
        f"Wilcoxon signed-rank p={c.episode_wilcoxon_p:.3g} over {c.episodes} paired episodes, "
        f"mean difference ({c.challenger} − {c.baseline}) {signed(c.episode_mean_difference)} points"
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


def _validated_searches(name: str, accs: Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(accs, np.ndarray) and accs.ndim == 2:
        raise ValueError(f"{name}: expected a list with one [seeds, episodes] matrix per search, got one matrix")
    searches = [_validated(f"{name} search {k}", a) for k, a in enumerate(accs)]
    if not searches:
        raise ValueError(f"{name}: at least 1 search is needed")
    return searches


def _check_margin_alpha(margin: float, alpha: float) -> None:
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number of points >= 0, got {margin}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _kind(baseline: str, challenger: str, effect: float, ci_low: float, ci_high: float, margin: float) -> str:
    """The verdict from the CI alone: "equivalent" wins even over a significant but negligible difference."""
    if -margin < ci_low and ci_high < margin:
        return "equivalent"
    if ci_low > 0 or ci_high < 0:
        return f"{challenger if effect > 0 else baseline}_better"
    return "inconclusive"


def _clean(variance: float) -> float:
    return 0.0 if variance < ZERO_VARIANCE else variance


def _interaction_ms(table: np.ndarray) -> float:
    """Interaction (residual) mean square of a two-way layout [rows, episodes] under the additive model.

    Rows are seeds (or searches) of one algorithm; it estimates the mean over rows of the variance of a
    cell around row effect + episode effect, the part of each row mean's variance that is 1/E of it."""
    rows, cols = table.shape
    if rows < 2 or cols < 2:
        return 0.0
    residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + table.mean()
    return float((residual**2).sum()) / ((rows - 1) * (cols - 1))


def _se_and_df(parts: list[tuple[float, float]]) -> tuple[float, float]:
    """Standard error of a sum of independent parts (variance of its mean, df) and its Welch-Satterthwaite df."""
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


def _t_interval(
    effect: float, parts: list[tuple[float, float]], alpha: float, df: float | None = None
) -> tuple[float, float, float, float]:
    """(ci_low, ci_high, df, two-sided p) of a t interval around ``effect`` with the parts' SE and
    Welch-Satterthwaite df, or the ``df`` given."""
    se, satterthwaite = _se_and_df(parts)
    df = satterthwaite if df is None else float(df)
    if se == 0:
        # Nothing varies: the observed difference is the whole story (and a t statistic is undefined).
        return effect, effect, df, 1.0 if effect == 0 else 0.0
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return effect - half, effect + half, df, float(2 * stats.t.sf(abs(effect) / se, df))


def _seed_components(acc: np.ndarray) -> tuple[float, float]:
    """One algorithm's [seeds, E] accuracies (points) -> (s^2 of the per-network accuracies, MS_res / E).

    One network's test accuracy varies as sigma_seed^2 + sigma_noise^2 / E; MS_res / E (the seeds x
    episodes interaction mean square over E, (S - 1)(E - 1) df) estimates the second part precisely."""
    return _clean(float(acc.mean(axis=1).var(ddof=1))), _clean(_interaction_ms(acc) / acc.shape[1])


def _seed_parts(components: tuple[float, float], seeds: int, n_ep: int) -> list[tuple[float, float]]:
    """(variance of the seed-mean accuracy, df) from ``_seed_components``, at ``seeds`` seeds.

    The variance of one network's accuracy is at least its episode noise, so it is estimated by
    max(s^2, MS_res / E) (sigma_seed^2 clipped at 0, the usual variance-component estimate). Its df is
    Satterthwaite's: those of the scaled chi-square with the mean and variance of that estimator, at the
    estimate (s^2 ~ theta chi2_k / k, k = S - 1; E[chi2_k 1(chi2_k > c)] = k P(chi2_{k+2} > c)). When the
    seeds differ by much more than their episode noise this is k; when they agree closely it grows,
    because then most of the variance is the precisely known noise. (With k df throughout, 2 or 3 seeds
    that agree make the interval wider than the double-counted one it replaces; with (S-1)(E-1) df for
    the noise share, coverage falls to 90% at S = 2: tests/test_stats.py.)"""
    total, noise = components
    k = seeds - 1
    theta = max(total, noise)
    if theta == 0 or noise == 0:
        return [(theta / seeds, float(k))]
    c = noise * k / theta  # the clip point on the chi2_k scale
    below = float(stats.chi2.cdf(c, k))
    mean = noise * below + theta * float(stats.chi2.sf(c, k + 2))
    second = noise**2 * below + theta**2 * (k + 2) / k * float(stats.chi2.sf(c, k + 4))
    spread = second - mean**2
    df = 2 * mean**2 / spread if spread > 0 else math.inf
    return [(theta / seeds, min(max(float(k), df), float(k * (n_ep - 1))))]


def _seeds_needed(
    per_seed_b: tuple[float, float],
    per_seed_c: tuple[float, float],
    var_ep: float,
    n_ep: int,
    target: float,
    current: int,
    q: float,
) -> tuple[int | None, bool]:
    """Smallest n seeds per algorithm with CI half-width < target, keeping the observed components and v_ep.

    Returns (n or None, episodes_limit); episodes_limit is True when the episode term alone already
    reaches the target, so no number of seeds could decide it.
    """
    # As n grows the seed terms vanish and the half-width falls towards t_{E-1} * sqrt(v_ep).
    if float(stats.t.ppf(q, n_ep - 1)) * math.sqrt(var_ep) >= target:
        return None, True

    def half_width(n: int) -> float:
        se, df = _se_and_df(_seed_parts(per_seed_b, n, n_ep) + _seed_parts(per_seed_c, n, n_ep) + [(var_ep, n_ep - 1)])
        return float(stats.t.ppf(q, df)) * se

    return _smallest_count(current, target, half_width), False


def _decision_power(effect: float, margin: float, se: float, df: float, q: float) -> float:
    """P(the CI decides) if the true effect were ``effect``: the easier of excluding 0 and fitting in +-margin."""
    if se == 0:
        return 1.0
    t_q = float(stats.t.ppf(q, df))
    shift = abs(effect) / se
    excludes_zero = float(stats.nct.sf(t_q, df, shift) + stats.nct.cdf(-t_q, df, shift))
    # Inside the margin: -M + t SE < estimate < M - t SE, the estimate ~ effect + SE * t_df.
    upper, lower = margin / se - t_q - shift, -margin / se + t_q - shift
    inside = float(np.subtract(*stats.t.cdf([upper, lower], df))) if upper > lower else 0.0
    return max(excludes_zero, inside)


def _searches_needed(
    var_b: float, k_b: int, var_c: float, k_c: int, var_ep: float, n_ep: int, effect: float, margin: float, q: float
) -> tuple[int | None, bool]:
    """Smallest n searches per algorithm with PLANNING_POWER to decide, at the upper PLANNING_CONFIDENCE
    bounds of the two between-search variances, the episode term fixed. Returns (n or None, episodes_limit)."""

    def upper(var: float, k: int) -> float:
        return var * (k - 1) / float(stats.chi2.ppf(1 - PLANNING_CONFIDENCE, k - 1))

    up_b, up_c = upper(var_b, k_b), upper(var_c, k_c)
    if _decision_power(effect, margin, math.sqrt(var_ep), n_ep - 1, q) < PLANNING_POWER:
        return None, True  # even infinitely many searches leave the episode term undecided

    def power(n: int) -> float:
        searches = [(up_b / n, n - 1), (up_c / n, n - 1)]
        return _decision_power(
            effect, margin, _se_and_df(searches + [(var_ep, n_ep - 1)])[0], _se_and_df(searches)[1], q
        )

    return _first_true(max(k_b, k_c), MAX_SEARCHES, lambda n: power(n) >= PLANNING_POWER), False


def _deciding_half_width(effect: float, margin: float) -> float:
    """A CI around this effect narrower than this decides: it excludes 0 or fits inside +-margin."""
    return max(abs(effect), margin - abs(effect))


def _smallest_count(current: int, target: float, half_width: Callable[[int], float]) -> int | None:
    """The smallest number of units above `current` (at most MAX_SEEDS) whose CI half-width is below target."""
    return _first_true(current, MAX_SEEDS, lambda n: half_width(n) < target)


def _first_true(current: int, limit: int, ok: Callable[[int], bool]) -> int | None:
    """The smallest n in (current, limit] with ok(n), for ok monotone in n (False ... False True ... True).

    Half-widths and power are monotone in the number of units (the SE falls and the df grow), so a
    galloping search (current + 1, + 2, + 4, ...) and then a bisection find what a scan would."""
    low, step = current, 1  # ok(low) is taken as False
    while True:
        n = min(current + step, limit)
        if n <= low:
            return None
        if ok(n):
            high = n
            break
        low, step = n, 2 * step
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle
    return high


def _pi_statistic(x_c: np.ndarray, x_b: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(challenger seed > baseline seed) over all seed pairs, ties counting half; vectorized."""
    x_c = np.round(np.moveaxis(x_c, axis, -1), COMPARE_DECIMALS)
    x_b = np.round(np.moveaxis(x_b, axis, -1), COMPARE_DECIMALS)
    greater = (x_c[..., :, None] > x_b[..., None, :]).mean(axis=(-2, -1))
    equal = (x_c[..., :, None] == x_b[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * equal


def _improvement_test(x_c: np.ndarray, x_b: np.ndarray, seed: int) -> tuple[float, int, float]:
    """(pairs the challenger wins, ties counting half; number of pairs; two-sided Mann-Whitney p)."""
    x_c, x_b = np.round(x_c, COMPARE_DECIMALS), np.round(x_b, COMPARE_DECIMALS)
    pairs = len(x_c) * len(x_b)
    won = float(_pi_statistic(x_c, x_b)) * pairs
    won = round(2 * won) / 2  # a whole or half number of pairs, free of float residue
    pooled = np.concatenate([x_c, x_b])
    if np.ptp(pooled) == 0:
        return won, pairs, 1.0  # every seed ties: nothing to rank
    if len(np.unique(pooled)) == len(pooled):
        return won, pairs, float(stats.mannwhitneyu(x_c, x_b, method="exact").pvalue)
    # Ties: the exact null distribution of U given these tied values, by permuting the seeds' labels.
    arrangements = math.comb(len(pooled), len(x_c))
    if arrangements <= EXACT_PERMUTATIONS:
        method = stats.PermutationMethod(n_resamples=np.inf)
    else:
        method = stats.PermutationMethod(n_resamples=RANDOM_PERMUTATIONS, rng=np.random.default_rng(seed))
    return won, pairs, float(stats.mannwhitneyu(x_c, x_b, method=method).pvalue)


def _wilcoxon_p(d: np.ndarray) -> float:
    # Round so that differences equal in exact arithmetic tie, and exact zeros are zeros (see report.py).
    d = np.round(d, COMPARE_DECIMALS)
    if not np.any(d):
        return 1.0  # no episode differs: nothing to rank, and scipy would warn
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


def _sentence(
    baseline: str,
    challenger: str,
    effect: float,
    ci_low: float,
    ci_high: float,
    margin: float,
    kind: str,
    level: float,
    context: Callable[[str, str], str],
    undecided: str,
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
        return (
            f"{winner} is better than {loser} by {lead:.2f} points "
            f"({ci_name} {low:.2f} to {high:.2f}; {context(winner, loser)})."
        )
    interval = f"{ci_name} {signed(ci_low)} to {signed(ci_high)}"
    difference = f"{challenger} − {baseline} = {signed(effect)} points ({interval}; {context(challenger, baseline)})"
    if kind == "equivalent":
        sentence = f"{baseline} and {challenger} are equivalent within ±{margin:.1f} points: {difference}"
        if ci_low > 0 or ci_high < 0:
            sentence += f", a statistically significant difference but smaller than the ±{margin:.1f}-point margin"
        return sentence + "."
    return f"inconclusive: {difference}; {undecided}."
