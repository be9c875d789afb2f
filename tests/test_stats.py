"""hpo.stats on simulated studies (error rates, coverage, power, units needed) and on hand-built cases (exact values).

The simulated studies have every source of variance the real procedure has: each search's finalist
quality (search to search), training seeds, network x episode noise, 75-query episodes (accuracies are
multiples of 1/75 around 0.93), episode difficulty shared by both algorithms and a smaller algorithm x
episode interaction. Each study gets its own test episodes, as a rerun with another --seed would. The
rates are over seeded simulations; assertions leave room for Monte Carlo error (MCSE of a 5% rate over
n studies: sqrt(0.05 * 0.95 / n), 0.8 points at n = 800).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from hpo.stats import (
    MIN_SEARCHES,
    SearchFinalistComparison,
    SeedComparison,
    compare_search_finalists,
    compare_searches,
    compare_seeds,
    episode_line,
    expected_best,
)

EPISODES = 600
QUERIES = 75  # query images per test episode, so an episode's accuracy is k / 75
LEVEL = 0.93  # accuracy around which the simulated finalists sit
SD_DIFFICULTY = 0.04  # episode difficulty, shared by both algorithms
SD_ALGORITHM_EPISODE = 0.014  # each algorithm's own episode profile: the difference has sd 2 points
SD_CONFIG_EPISODE = 0.01  # each configuration's own episode profile
SD_NOISE = 0.03  # each network's own episode profile (network x episode), on top of the binomial noise
# Measured between the finalists of searches with different searcher seeds (points / 100).
SD_SEARCH = {"hypermaml": 0.011, "maml": 0.002}


def mc_bound(rate: float, n: int, z: float = 3.0) -> float:
    """rate + z Monte Carlo standard errors of a proportion over n simulated studies."""
    return rate + z * math.sqrt(rate * (1 - rate) / n)


def shared_episodes(rng: np.random.Generator, studies: int, sigma_episode: float = 0.05) -> np.ndarray:
    """Episode difficulty [studies, 1, E]: one fixed episode set per study, seen by every network."""
    return rng.normal(0.0, sigma_episode, (studies, 1, EPISODES))


def simulate(
    rng: np.random.Generator,
    episode_effect: np.ndarray,
    seeds: int,
    mu: float,
    sigma_seed: float = 0.01,
    sigma_interaction: float = 0.03,
) -> np.ndarray:
    """Per-episode accuracies [studies, seeds, E] of one algorithm trained with ``seeds`` seeds."""
    studies = episode_effect.shape[0]
    seed_effect = rng.normal(0.0, sigma_seed, (studies, seeds, 1))
    interaction = rng.normal(0.0, sigma_interaction, (studies, seeds, EPISODES))
    p = np.clip(mu + seed_effect + episode_effect + interaction, 0.01, 0.99)
    return rng.binomial(QUERIES, p) / QUERIES


def run_studies(seed: int, studies: int, seeds: int, mu_b: float, mu_c: float, **noise: float) -> list[SeedComparison]:
    rng = np.random.default_rng(seed)
    episode_effect = shared_episodes(rng, studies)
    b = simulate(rng, episode_effect, seeds, mu_b, **noise)
    c = simulate(rng, episode_effect, seeds, mu_c, **noise)
    return [compare_seeds("maml", b[i], "hypermaml", c[i], seed=i) for i in range(studies)]


def simulate_finalists(
    rng: np.random.Generator,
    difficulty: np.ndarray,
    searches: int,
    seeds: int,
    mu: float,
    sd_search: float,
    sd_seed: float,
    sd_algorithm_episode: float = SD_ALGORITHM_EPISODE,
    sd_config_episode: float = SD_CONFIG_EPISODE,
) -> np.ndarray:
    """Per-episode accuracies [studies, searches, seeds, E] of one algorithm's search finalists."""
    studies, episodes = difficulty.shape[0], difficulty.shape[-1]
    p = (
        mu
        + rng.normal(0.0, sd_search, (studies, searches, 1, 1))  # the configuration each search found
        + rng.normal(0.0, sd_seed, (studies, searches, seeds, 1))  # the training seed
        + difficulty  # [studies, 1, 1, E], shared by both algorithms
        + rng.normal(0.0, sd_algorithm_episode, (studies, 1, 1, episodes))  # this algorithm on these episodes
        + rng.normal(0.0, sd_config_episode, (studies, searches, 1, episodes))
        + rng.normal(0.0, SD_NOISE, (studies, searches, seeds, episodes))
    )
    return rng.binomial(QUERIES, np.clip(p, 0.0, 1.0)) / QUERIES


def expected_accuracy(
    mu: float, sd_search: float, sd_seed: float, sd_algorithm_episode: float = SD_ALGORITHM_EPISODE
) -> float:
    """The procedure's expected test accuracy (points): E[clip(p, 0, 1)] of the normal p above (E[k/75] = p)."""
    sd = math.sqrt(
        sd_search**2 + sd_seed**2 + SD_DIFFICULTY**2 + sd_algorithm_episode**2 + SD_CONFIG_EPISODE**2 + SD_NOISE**2
    )
    return 100 * float(stats.norm.expect(lambda x: np.clip(x, 0.0, 1.0), loc=mu, scale=sd))


@functools.cache
def search_studies(
    seed: int,
    studies: int,
    searches: int,
    seeds: int,
    gap: float = 0.0,
    sd_seed: float = 0.003,
    sd_search: tuple[float, float] = (SD_SEARCH["maml"], SD_SEARCH["hypermaml"]),
    sd_algorithm_episode: float = SD_ALGORITHM_EPISODE,
    episodes: int = EPISODES,
) -> tuple[float, list[SearchFinalistComparison]]:
    """(true effect in points, one comparison per simulated study): K searches per algorithm, S seeds each."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, SD_DIFFICULTY, (studies, 1, 1, episodes))
    b = simulate_finalists(rng, difficulty, searches, seeds, LEVEL, sd_search[0], sd_seed, sd_algorithm_episode)
    c = simulate_finalists(rng, difficulty, searches, seeds, LEVEL + gap, sd_search[1], sd_seed, sd_algorithm_episode)
    truth = expected_accuracy(LEVEL + gap, sd_search[1], sd_seed, sd_algorithm_episode) - expected_accuracy(
        LEVEL, sd_search[0], sd_seed, sd_algorithm_episode
    )
    return truth, [compare_search_finalists("maml", list(b[i]), "hypermaml", list(c[i])) for i in range(studies)]


def assert_consistent(c: SeedComparison) -> None:
    """The sentence's direction comes from the numbers: winner <=> sign of effect, no 'better' otherwise."""
    assert c.verdict.kind in {f"{c.challenger}_better", f"{c.baseline}_better", "equivalent", "inconclusive"}
    assert c.verdict.effect == pytest.approx(c.episode_mean_difference, abs=1e-9)
    assert c.verdict.ci_low <= c.verdict.effect <= c.verdict.ci_high
    if c.verdict.kind.endswith("_better"):
        winner = c.verdict.kind.removesuffix("_better")
        loser = c.baseline if winner == c.challenger else c.challenger
        assert (c.verdict.effect > 0) == (winner == c.challenger)
        assert c.verdict.ci_low > 0 or c.verdict.ci_high < 0
        assert c.verdict.sentence.startswith(f"{winner} is better than {loser} by {abs(c.verdict.effect):.2f} points")
        assert c.p_value < 0.05
    else:
        assert "better" not in c.verdict.sentence
        opening = (
            "inconclusive:" if c.verdict.kind == "inconclusive" else f"{c.baseline} and {c.challenger} are equivalent"
        )
        assert c.verdict.sentence.startswith(opening)
    assert (c.seeds_needed is not None) <= (c.verdict.kind == "inconclusive")
    won, pairs = c.p_improvement_pairs
    assert pairs == c.seeds[0] * c.seeds[1] and c.p_improvement == pytest.approx(won / pairs)
    assert 0 < c.p_improvement_p <= 1


@pytest.mark.parametrize("seeds", [3, 5])
def test_no_true_difference_rarely_declares_a_winner(seeds: int) -> None:
    results = run_studies(seed=seeds, studies=200, seeds=seeds, mu_b=0.90, mu_c=0.90)
    for c in results:
        assert_consistent(c)
    rate = np.mean([c.verdict.kind.endswith("_better") for c in results])
    print(f"\nno true difference, {seeds} seeds per algorithm: a winner declared in {rate:.1%} of 200 studies")
    assert rate <= 0.07


def test_three_point_gap_is_found() -> None:
    results = run_studies(seed=11, studies=200, seeds=5, mu_b=0.90, mu_c=0.93)
    for c in results:
        assert_consistent(c)
    right = np.mean([c.verdict.kind == "hypermaml_better" for c in results])
    wrong = sum(c.verdict.kind == "maml_better" for c in results)
    print(f"\ntrue 3-point gap, 5 seeds per algorithm: correct winner in {right:.1%}, wrong winner in {wrong} of 200")
    assert right >= 0.80
    assert wrong == 0


def skewed_case(big_gain: int, swap: bool) -> tuple[SeedComparison, np.ndarray]:
    """90% of episodes favour maml by 1 query image, 10% favour hypermaml by ``big_gain`` images.

    The per-episode median and pseudo-median favour maml, while the mean favours hypermaml for
    big_gain > 9. With swap, the arrays trade names so the mean favours maml.
    """
    d = np.where(np.arange(EPISODES) % 10 == 0, big_gain, -1) / QUERIES
    offsets = np.array([-0.002, 0.0, 0.002])[:, None]  # a little seed-to-seed spread
    b = 0.7 + offsets + np.zeros(EPISODES)
    c = 0.7 + offsets[::-1] + d
    if swap:
        b, c = c, b
    return compare_seeds("maml", b, "hypermaml", c), c.mean(axis=0) - b.mean(axis=0)


@pytest.mark.parametrize(
    ("big_gain", "swap", "kind"),
    [
        (20, False, "hypermaml_better"),
        (20, True, "maml_better"),
        (13, False, "inconclusive"),
        (10, False, "equivalent"),
        (10, True, "equivalent"),
    ],
)
def test_sentence_follows_the_mean_when_the_median_disagrees(big_gain: int, swap: bool, kind: str) -> None:
    c, d = skewed_case(big_gain, swap)
    walsh = (d[:, None] + d[None, :])[np.triu_indices(EPISODES)]
    hodges_lehmann = np.median(walsh)
    # The construction does what it claims: mean and pseudo-median point in opposite directions.
    assert np.sign(d.mean()) == -np.sign(hodges_lehmann) == -np.sign(np.median(d)) != 0
    assert c.episode_wilcoxon_p < 1e-6  # the network-level test is sure of the *other* direction
    assert c.verdict.kind == kind
    assert c.verdict.effect == pytest.approx(c.episode_mean_difference, abs=1e-9)
    assert np.sign(c.verdict.effect) == np.sign(d.mean())
    assert_consistent(c)
    assert f"{c.episode_mean_difference:+.2f}".replace("-", "−") in episode_line(c)


def test_equivalent_when_noise_is_tiny_and_seeds_are_many() -> None:
    (c,) = run_studies(seed=3, studies=1, seeds=10, mu_b=0.90, mu_c=0.90, sigma_seed=0.001, sigma_interaction=0.005)
    assert c.verdict.kind == "equivalent"
    assert -1.0 < c.verdict.ci_low < c.verdict.ci_high < 1.0
    assert c.verdict.sentence.startswith("maml and hypermaml are equivalent within ±1.0 points: hypermaml − maml = ")
    assert_consistent(c)


def test_significant_but_negligible_difference_is_equivalent() -> None:
    # A real 0.5-point gain, measured precisely: the CI excludes 0 yet lies inside ±1 point.
    (c,) = run_studies(seed=4, studies=1, seeds=10, mu_b=0.900, mu_c=0.905, sigma_seed=0.001, sigma_interaction=0.005)
    assert 0 < c.verdict.ci_low < c.verdict.ci_high < 1.0
    assert c.p_value < 0.05
    assert c.verdict.kind == "equivalent"
    assert "statistically significant" in c.verdict.sentence
    assert_consistent(c)


def test_seeds_needed_shrinks_the_interval_to_about_the_target() -> None:
    # A 0.8-point true gap with 1-point seed noise usually cannot be settled with 3 seeds.
    rng = np.random.default_rng(5)
    ratios = []
    for study in range(12):
        (c,) = run_studies(seed=100 + study, studies=1, seeds=3, mu_b=0.90, mu_c=0.908)
        if c.verdict.kind != "inconclusive":
            continue
        assert c.seeds_needed is not None and c.seeds_needed > 3
        assert f"about {c.seeds_needed} seeds per algorithm" in c.verdict.sentence
        target = max(abs(c.verdict.effect), c.verdict.margin - abs(c.verdict.effect))
        # Re-run the same study design with the suggested seeds: 20 fresh draws.
        episode_effect = shared_episodes(rng, 20)
        b = simulate(rng, episode_effect, c.seeds_needed, 0.90)
        h = simulate(rng, episode_effect, c.seeds_needed, 0.908)
        reruns = [compare_seeds("maml", b[i], "hypermaml", h[i]) for i in range(20)]
        half_widths = [(r.verdict.ci_high - r.verdict.ci_low) / 2 for r in reruns]
        ratios.append(float(np.median(half_widths)) / target)
    # The plan uses the seed variance seen in only 3 seeds, so one study can be off by a factor
    # sigma / s (often 0.6..1.4); the typical study is not.
    print(f"\nmedian re-run half-width / target, per inconclusive study: {[round(r, 2) for r in ratios]}")
    assert len(ratios) >= 6
    assert 0.7 <= np.median(ratios) <= 1.3


def test_hand_computed_example() -> None:
    baseline = np.array([[0.5, 0.7], [0.7, 0.7], [0.8, 0.8]])  # per seed: 0.6, 0.7, 0.8
    challenger = np.array([[0.6, 0.8], [0.9, 0.7], [0.9, 0.9]])  # per seed: 0.7, 0.8, 0.9
    c = compare_seeds("maml", baseline, "hypermaml", challenger, budget="12 trials x 1000 episodes per algorithm")
    assert (c.seeds, c.episodes) == ((3, 3), 2)
    assert c.baseline_mean == pytest.approx(70.0)
    assert c.challenger_mean == pytest.approx(80.0)
    assert c.baseline_seed_sd == pytest.approx(10.0)
    assert c.challenger_seed_sd == pytest.approx(10.0)
    assert c.verdict.effect == pytest.approx(10.0)
    assert c.episode_mean_difference == pytest.approx(10.0)
    # Seeds x episodes residuals (points): baseline +-6.67, +-3.33, +-3.33 -> SS 133.3 over (3-1)(2-1) df,
    # MS_res 66.7; challenger +-10, +-10, 0 -> MS_res 200. Per network, the episode noise is MS_res / E:
    # 33.3 and 100, both <= s^2 = 100, so each seed term is 100/3 with 2 df (capped at (S-1)(E-1) = 2).
    # d = (13.33, 6.67): var 200/9, but the network noise it holds, 66.7/3 + 200/3 = 88.9, is already in
    # the seed terms: the episode term is max(0, 200/9 - 88.9) / 2 = 0. (Before: + 100/9, df 4.9.)
    var, df = 100 / 3 + 100 / 3, 4.0
    assert c.df == pytest.approx(df)
    half = stats.t.ppf(0.975, df) * math.sqrt(var)
    assert (c.verdict.ci_low, c.verdict.ci_high) == (pytest.approx(10 - half), pytest.approx(10 + half))
    assert c.p_value == pytest.approx(2 * stats.t.sf(10 / math.sqrt(var), df))
    # Pairs (challenger > baseline): 0.7 beats 0.6, ties 0.7 -> 1.5; 0.8 -> 2.5; 0.9 -> 3. Total 7 of 9.
    assert c.p_improvement == pytest.approx(7 / 9)
    assert c.p_improvement_pairs == (7.0, 9)
    # With ties (70 and 80 twice): the exact permutation p over all C(6, 3) = 20 labellings.
    pooled = [70.0, 80.0, 90.0, 60.0, 70.0, 80.0]
    u = [
        sum((x > y) + 0.5 * (x == y) for x in chosen for y in (pooled[i] for i in range(6) if i not in idx))
        for idx in itertools.combinations(range(6), 3)
        for chosen in [[pooled[i] for i in idx]]
    ]
    exact = min(1.0, 2 * min(np.mean(np.array(u) >= 7), np.mean(np.array(u) <= 7)))
    assert c.p_improvement_p == pytest.approx(exact) == 0.5
    assert c.verdict.kind == "inconclusive"
    # Without the double-counted episode term, seeds can decide it: t_{2(n-1)} * sqrt(200 / n) < 10 first
    # at n = 9 (2.120 * 4.714 = 9.99); at n = 8, 2.145 * 5 = 10.7. (Before: "more test episodes are needed".)
    assert c.seeds_needed == 9
    assert "about 9 seeds per algorithm would be needed to decide" in c.verdict.sentence
    assert "budget: 12 trials x 1000 episodes per algorithm" in c.verdict.sentence
    assert "3 hypermaml vs 3 maml training seeds, 2 shared test episodes" in c.verdict.sentence
    assert c.episode_wilcoxon_p == pytest.approx(0.5)  # two positive differences: exact p = 2 * 1/4
    assert_consistent(c)


def test_hand_computed_episode_term() -> None:
    # Additive in seeds and episodes (no network x episode noise), with opposite episode profiles: all
    # the per-episode difference is the algorithms' own view of the episodes, and it stays in full.
    baseline = np.array([[0.5, 0.9, 0.7], [0.6, 1.0, 0.8]])
    challenger = np.array([[0.9, 0.5, 0.7], [1.0, 0.6, 0.8]])
    c = compare_seeds("maml", baseline, "hypermaml", challenger)
    # Seed terms: per-seed 70 and 80, s^2 = 50, /2 seeds = 25 each (1 df). d = (40, -40, 0): var 1600, /3.
    parts = [(25.0, 1), (25.0, 1), (1600 / 3, 2)]
    var = sum(v for v, _ in parts)
    df = var**2 / sum(v**2 / k for v, k in parts)
    assert c.verdict.effect == pytest.approx(0.0, abs=1e-9)
    assert c.df == pytest.approx(df) == pytest.approx(2.3717, abs=1e-4)
    assert c.verdict.ci_high == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(var))
    assert c.verdict.kind == "inconclusive" and c.seeds_needed is None
    assert "more test episodes are needed" in c.verdict.sentence


@pytest.mark.parametrize(
    ("baseline", "challenger", "message"),
    [
        (np.full((1, 10), 0.8), np.full((3, 10), 0.8), "at least 2 seeds"),
        (np.full((3, 10), 0.8), np.full((3, 11), 0.8), "same episodes"),
        (np.full(10, 0.8), np.full((3, 10), 0.8), "shaped"),
        (np.full((3, 10), np.nan), np.full((3, 10), 0.8), "finite"),
        (np.full((3, 10), 80.0), np.full((3, 10), 0.8), "fractions"),
    ],
)
def test_invalid_inputs_raise(baseline: np.ndarray, challenger: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare_seeds("maml", baseline, "hypermaml", challenger)


def test_degenerate_inputs_give_exact_answers_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare_seeds("maml", np.full((3, EPISODES), 0.8), "hypermaml", np.full((5, EPISODES), 0.8))
        apart = compare_seeds("maml", np.full((3, EPISODES), 0.8), "hypermaml", np.full((3, EPISODES), 0.9))
    assert (same.verdict.effect, same.verdict.ci_low, same.verdict.ci_high) == (0.0, 0.0, 0.0)
    assert same.verdict.kind == "equivalent"
    assert same.p_value == 1.0
    assert same.episode_wilcoxon_p == 1.0
    assert (same.p_improvement, same.p_improvement_pairs, same.p_improvement_p) == (0.5, (7.5, 15), 1.0)
    assert math.isfinite(same.df) and same.df >= 1
    assert_consistent(same)
    # Zero variance but a real gap: a zero-width CI at 10 points, and every seed pair favours hypermaml,
    # which with 3 tied seeds against 3 tied seeds is still only 1 of the 20 labellings each way: p = 0.1.
    assert apart.verdict.effect == pytest.approx(10.0)
    assert apart.verdict.ci_low == apart.verdict.ci_high == apart.verdict.effect
    assert apart.verdict.kind == "hypermaml_better"
    assert (apart.p_improvement, apart.p_improvement_pairs) == (1.0, (9.0, 9))
    assert apart.p_improvement_p == pytest.approx(0.1)
    assert_consistent(apart)


def test_config_unit_says_the_answer_is_about_configurations() -> None:
    (default,) = run_studies(seed=11, studies=1, seeds=5, mu_b=0.90, mu_c=0.93)
    rng = np.random.default_rng(11)
    episode_effect = shared_episodes(rng, 1)
    b, c = simulate(rng, episode_effect, 5, 0.90)[0], simulate(rng, episode_effect, 5, 0.93)[0]
    seed_unit = compare_seeds("maml", b, "hypermaml", c, seed=0)
    config = compare_seeds("maml", b, "hypermaml", c, seed=0, unit="config")
    assert (
        default.verdict.unit == seed_unit.verdict.unit == "seed"
        and seed_unit.verdict.kind == default.verdict.kind == "hypermaml_better"
    )
    assert config.verdict.unit == "config" and config.verdict.kind == "config_hypermaml_better"
    assert (config.verdict.effect, config.verdict.ci_low, config.verdict.ci_high) == (
        seed_unit.verdict.effect,
        seed_unit.verdict.ci_low,
        seed_unit.verdict.ci_high,
    )
    assert (
        config.verdict.sentence
        == "About these configurations (one search per algorithm), not the algorithms: " + seed_unit.verdict.sentence
    )
    same = compare_seeds("maml", np.full((3, 10), 0.8), "hypermaml", np.full((3, 10), 0.8), unit="config")
    assert same.verdict.kind == "config_equivalent"
    with pytest.raises(ValueError, match="unit"):
        compare_seeds("maml", b, "hypermaml", c, unit="search")


# ---- the seed-level CI counts each network's episode noise once ---------------------------------------


def old_interval_width(b: np.ndarray, c: np.ndarray) -> float:
    """The previous CI width (points): s^2/S per algorithm + var_e(d_e)/E, the network noise twice."""
    x_b, x_c, d = b.mean(axis=1) * 100, c.mean(axis=1) * 100, (c.mean(axis=0) - b.mean(axis=0)) * 100
    parts = [
        (x_b.var(ddof=1) / len(x_b), len(x_b) - 1),
        (x_c.var(ddof=1) / len(x_c), len(x_c) - 1),
        (d.var(ddof=1) / len(d), len(d) - 1),
    ]
    total = sum(v for v, _ in parts)
    df = total**2 / sum(v**2 / k for v, k in parts)
    return 2 * float(stats.t.ppf(0.975, df)) * math.sqrt(total)


@functools.cache
def seed_studies(
    seed: int, studies: int, seeds: int, sd_seed: float, episode_profiles: bool = True
) -> tuple[list[SeedComparison], np.ndarray]:
    """One configuration per algorithm, no true difference: (comparisons, old CI widths). Without
    episode profiles, both see the episodes alike: no algorithm or configuration x episode interaction."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, SD_DIFFICULTY, (studies, 1, 1, EPISODES))
    profiles = (SD_ALGORITHM_EPISODE, SD_CONFIG_EPISODE) if episode_profiles else (0.0, 0.0)
    b = simulate_finalists(rng, difficulty, 1, seeds, LEVEL, 0.0, sd_seed, *profiles)[:, 0]
    c = simulate_finalists(rng, difficulty, 1, seeds, LEVEL, 0.0, sd_seed, *profiles)[:, 0]
    results = [compare_seeds("maml", b[i], "hypermaml", c[i]) for i in range(studies)]
    return results, np.array([old_interval_width(b[i], c[i]) for i in range(studies)])


SEED_CASES = [(2, 0.001), (3, 0.001), (5, 0.001), (2, 0.005), (3, 0.005)]


@pytest.mark.parametrize(("seeds", "sd_seed"), SEED_CASES)
def test_seed_interval_counts_network_noise_once(seeds: int, sd_seed: float) -> None:
    """No true difference: the CI covers 0 in >= 93% of studies, and where seeds agree closely (sd 0.1
    point, under one network's episode noise of ~0.17 point) it is narrower than the double-counted one."""
    studies = 500
    results, old = seed_studies(100 * seeds + int(1e4 * sd_seed), studies, seeds, sd_seed)
    coverage = np.mean([c.verdict.ci_low <= 0 <= c.verdict.ci_high for c in results])
    old_coverage = np.mean([abs(c.verdict.effect) <= w / 2 for c, w in zip(results, old)])
    ratio = float(np.median(np.array([c.verdict.ci_high - c.verdict.ci_low for c in results]) / old))
    winners = np.mean([c.verdict.kind.endswith("_better") for c in results])
    print(
        f"\n{seeds} vs {seeds} seeds, seed sd {100 * sd_seed:.1f} point: coverage {coverage:.1%} (old {old_coverage:.1%}), "
        f"false winners {winners:.1%}, median width new/old {ratio:.2f} ({studies} studies)"
    )
    assert coverage >= 0.93
    assert winners <= mc_bound(0.05, studies)
    if sd_seed <= 0.001:  # seeds agree closely: narrower
        assert ratio <= (0.97 if seeds == 2 else 0.92)
    else:  # seeds dominate: about the old width (at 2 seeds the old one borrowed df from the double count)
        assert 0.9 <= ratio <= 1.15


# ---- probability of improvement -------------------------------------------------------------------------


def old_percentile_bootstrap(x_c: np.ndarray, x_b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The previous report's 95% CI of P(challenger seed > baseline seed): a percentile bootstrap."""

    def statistic(c, b, axis=-1):
        c, b = np.moveaxis(c, axis, -1), np.moveaxis(b, axis, -1)
        return ((c[..., :, None] > b[..., None, :]) + 0.5 * (c[..., :, None] == b[..., None, :])).mean(axis=(-2, -1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        ci = stats.bootstrap(
            (x_c, x_b),
            statistic,
            n_resamples=2000,
            vectorized=True,
            paired=False,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
    return float(ci.low), float(ci.high)


def test_complete_separation_of_three_seeds_is_not_a_certainty() -> None:
    x_b, x_c = np.array([0.80, 0.81, 0.82]), np.array([0.83, 0.84, 0.85])
    # The old interval: every resample keeps every challenger seed above every baseline seed.
    low, high = old_percentile_bootstrap(x_c, x_b)
    assert low == high == 1.0  # degenerate, and it "excludes" 0.5
    c = compare_seeds("maml", x_b[:, None] + np.zeros(EPISODES), "hypermaml", x_c[:, None] + np.zeros(EPISODES))
    assert c.p_improvement == 1.0 and c.p_improvement_pairs == (9.0, 9)
    # One of the C(6, 3) = 20 equally likely labellings under no difference is this extreme, each way.
    assert c.p_improvement_p == pytest.approx(0.1)
    assert c.p_improvement_p == pytest.approx(stats.mannwhitneyu(x_c, x_b, method="exact").pvalue)
    assert c.p_improvement_p > 0.05  # no difference claimed


@pytest.mark.parametrize("seeds", [3, 5])
def test_probability_of_improvement_test_is_calibrated(seeds: int) -> None:
    """The pairs and their p are about networks tested on these episodes: under no difference on them
    (no algorithm or configuration x episode interaction, so the seeds of both algorithms are
    exchangeable), the exact test rejects at most 5% (never at 3 vs 3, whose smallest p is 0.1; its
    exact size at 5 vs 5 is 3.2%)."""
    results, _ = seed_studies(100 * seeds + 10, 500, seeds, 0.001, episode_profiles=False)
    rejects = np.mean([c.p_improvement_p < 0.05 for c in results])
    print(f"\nno true difference, {seeds} vs {seeds} seeds: Mann-Whitney p < 0.05 in {rejects:.1%} of 500 studies")
    assert rejects <= mc_bound(0.05, 500)
    if seeds == 3:
        assert rejects == 0.0


def test_old_bootstrap_of_three_seeds_was_miscalibrated() -> None:
    """Under no difference, per-seed accuracies of 3 vs 3 seeds: the old percentile interval is
    degenerate whenever the seeds separate and misses 0.5 far more than 5%; the new test rejects never
    (its smallest exact p is 0.1)."""
    rng = np.random.default_rng(7)
    x = rng.normal(93.0, 0.3, (300, 2, 3))  # [study, algorithm, seed], points
    old = np.array([old_percentile_bootstrap(x[i, 1], x[i, 0], seed=i) for i in range(len(x))])
    degenerate = np.mean(old[:, 0] == old[:, 1])
    covers = np.mean((old[:, 0] <= 0.5) & (0.5 <= old[:, 1]))
    acc = x[..., None] / 100 + np.zeros(4)  # constant over 4 episodes: the seed's accuracy
    new = [compare_seeds("maml", acc[i, 0], "hypermaml", acc[i, 1], seed=i) for i in range(len(x))]
    rejects = np.mean([c.p_improvement_p < 0.05 for c in new])
    print(
        f"\n3 vs 3 seeds, no difference: old bootstrap degenerate in {degenerate:.1%}, covers 0.5 in {covers:.1%}; "
        f"new exact test rejects in {rejects:.1%} (300 studies)"
    )
    assert degenerate >= 0.05 and covers <= 0.85
    assert rejects == 0.0


# ---- the search as the unit ---------------------------------------------------------------------------


@pytest.mark.parametrize("searches", [3, 5])
@pytest.mark.parametrize("seeds", [2, 3])
def test_search_level_calibration_under_no_difference(searches: int, seeds: int) -> None:
    studies = 1000
    truth, results = search_studies(searches * 10 + seeds, studies, searches, seeds)
    covers = np.mean([c.verdict.ci_low <= truth <= c.verdict.ci_high for c in results])
    winners = np.mean([c.verdict.kind.endswith("_better") for c in results])
    config_covers = np.mean([c.config_ci_low <= truth <= c.config_ci_high for c in results])
    sd = {a: np.median([getattr(c, f"{a}_search_sd") for c in results]) for a in ("baseline", "challenger")}
    print(
        f"\nK={searches}, S={seeds}, no difference (truth {truth:+.3f}): false winners {winners:.1%}, coverage "
        f"{covers:.1%}; the configuration-level CI would cover {config_covers:.1%}; median search sd maml "
        f"{sd['baseline']:.2f}, hypermaml {sd['challenger']:.2f} points ({studies} studies)"
    )
    assert all(c.verdict.unit == "search" and c.searches == (searches, searches) for c in results)
    assert winners <= mc_bound(0.05, studies)
    assert covers >= 0.93
    assert config_covers < 0.8  # what ignoring the search would claim


def test_search_level_finds_a_three_point_gap() -> None:
    studies = 300
    truth, results = search_studies(99, studies, 5, 3, gap=0.03)
    right = np.mean([c.verdict.kind == "hypermaml_better" for c in results])
    wrong = sum(c.verdict.kind == "maml_better" for c in results)
    print(
        f"\nK=5, S=3, true gap {truth:.2f} points: correct winner in {right:.1%}, wrong winner in {wrong} of {studies}"
    )
    assert right >= 0.8
    assert wrong == 0
    assert all(
        c.verdict.sentence.startswith("hypermaml is better than maml by")
        for c in results
        if c.verdict.kind == "hypermaml_better"
    )


def test_the_episode_term_is_needed_when_searches_agree() -> None:
    """Every search of one study shares its test episodes, so the algorithm x episode interaction on that
    set does not show in the spread of the search means. When searches agree (sd 0.2 point for both) and
    the algorithms see the episodes differently (sd 3 points), Welch over the search means alone
    under-covers; with the episode term it does not. When one algorithm's searches spread 1.1 points
    (the measured case; the calibration runs above), the term hardly matters."""

    def coverages(truth: float, results: list[SearchFinalistComparison]) -> tuple[float, float]:
        welch = stats.ttest_ind(
            np.array([c.challenger_search_means for c in results]),
            np.array([c.baseline_search_means for c in results]),
            axis=1,
            equal_var=False,
        ).confidence_interval()
        return (
            float(np.mean([c.verdict.ci_low <= truth <= c.verdict.ci_high for c in results])),
            float(np.mean((welch.low <= truth) & (truth <= welch.high))),
        )

    ours, welch_only = coverages(
        *search_studies(5, 800, 5, 3, sd_seed=0.001, sd_search=(0.002, 0.002), sd_algorithm_episode=0.021)
    )
    ours_r, welch_only_r = coverages(*search_studies(53, 1000, 5, 3))  # as the K=5, S=3 calibration
    print(
        f"\nK=5, S=3, searches agree (sd 0.2), algorithm x episode sd 3 points: coverage {ours:.1%} with the "
        f"episode term, {welch_only:.1%} without; search sd 1.1 / 0.2: {ours_r:.1%} vs {welch_only_r:.1%}"
    )
    assert ours >= 0.93
    assert welch_only <= ours - 0.025
    assert abs(ours_r - welch_only_r) <= 0.01


def test_searches_needed_plan_decides_most_reruns() -> None:
    # A true 2-point gap, 3 searches each: often inconclusive; the plan (80% power at the upper 80%
    # bound of each search sd) is then tried on fresh studies with the median suggested number.
    truth, pilots = search_studies(21, 40, 3, 3, gap=0.02)
    plans = [c.searches_needed for c in pilots if c.verdict.kind == "inconclusive"]
    assert len(plans) >= 10 and all(n is None or n > 3 for n in plans)
    assert all(
        f"about {c.searches_needed} searches per algorithm" in c.verdict.sentence
        for c in pilots
        if c.verdict.kind == "inconclusive" and c.searches_needed
    )
    planned = int(np.median([n if n is not None else 10**6 for n in plans]))
    assert planned <= 40
    _, reruns = search_studies(22, 60, planned, 3, gap=0.02)
    decided = np.mean([c.verdict.kind != "inconclusive" for c in reruns])
    print(
        f"\ntrue gap {truth:.2f}: {len(plans)} of 40 pilots (K=3) inconclusive, median plan {planned} searches; "
        f"decided in {decided:.0%} of 60 reruns with {planned}"
    )
    assert decided >= 0.8
    assert not any(c.verdict.kind == "maml_better" for c in reruns)


def test_one_search_is_a_configuration_level_answer() -> None:
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0.0, SD_DIFFICULTY, (1, 1, 1, EPISODES))
    b = simulate_finalists(rng, difficulty, 3, 3, LEVEL, SD_SEARCH["maml"], 0.003)[0]
    c = simulate_finalists(rng, difficulty, 1, 3, LEVEL + 0.03, SD_SEARCH["hypermaml"], 0.003)[0]
    one = compare_search_finalists("maml", [b[0]], "hypermaml", [c[0]], budget="12 trials")
    seeds = compare_seeds("maml", b[0], "hypermaml", c[0], unit="config")
    assert one.verdict.unit == "config" and one.verdict.kind == seeds.verdict.kind == "config_hypermaml_better"
    assert (one.verdict.effect, one.verdict.ci_low, one.verdict.ci_high, one.df) == pytest.approx(
        (seeds.verdict.effect, seeds.verdict.ci_low, seeds.verdict.ci_high, seeds.df)
    )
    assert (one.verdict.ci_low, one.verdict.ci_high) == (one.config_ci_low, one.config_ci_high)
    assert one.baseline_search_sd is None and one.challenger_search_sd is None
    assert one.searches_needed == MIN_SEARCHES
    assert one.verdict.sentence.startswith(
        "About these configurations only, not the algorithms (one search for maml and hypermaml): "
        "hypermaml is better than maml by"
    )
    assert (
        f"at least {MIN_SEARCHES} searches per algorithm" in one.verdict.sentence
        and "budget: 12 trials" in one.verdict.sentence
    )
    mixed = compare_search_finalists("maml", list(b), "hypermaml", [c[0]])
    assert mixed.verdict.unit == "config" and mixed.verdict.kind.startswith("config_") and mixed.searches == (3, 1)
    assert mixed.baseline_search_sd is not None and mixed.challenger_search_sd is None
    assert "(one search for hypermaml)" in mixed.verdict.sentence


def test_search_level_matches_welch_when_the_episodes_agree() -> None:
    # Every network scores the same on every episode: the episode term is 0 and the CI is Welch's.
    def finalist(*per_seed: float) -> np.ndarray:
        return np.array(per_seed)[:, None] + np.zeros(20)

    b = [finalist(0.80, 0.82), finalist(0.78, 0.80, 0.79), finalist(0.85, 0.83)]
    c = [finalist(0.86, 0.85), finalist(0.80, 0.81), finalist(0.83, 0.84, 0.82), finalist(0.88, 0.87)]
    r = compare_search_finalists("maml", b, "hypermaml", c)
    m_b, m_c = [100 * a.mean() for a in b], [100 * a.mean() for a in c]
    welch = stats.ttest_ind(m_c, m_b, equal_var=False)
    assert r.seeds == ((2, 3, 2), (2, 2, 3, 2)) and r.episodes == 20
    assert r.baseline_search_means == pytest.approx(tuple(m_b))
    assert r.verdict.effect == pytest.approx(np.mean(m_c) - np.mean(m_b))
    assert r.baseline_search_sd == pytest.approx(np.std(m_b, ddof=1))
    assert r.episode_se == 0.0
    assert (r.verdict.ci_low, r.verdict.ci_high) == pytest.approx(tuple(welch.confidence_interval()))
    assert r.p_value == pytest.approx(welch.pvalue) and r.df == pytest.approx(welch.df)
    assert r.config_ci_high - r.config_ci_low < r.verdict.ci_high - r.verdict.ci_low


def test_hand_computed_search_episode_term() -> None:
    # Three episodes; each algorithm sees them its own way, each search shifts its finalist (no
    # search x episode or network x episode noise, 2 identical seeds): the episode term is var_e(D_e)/E.
    def finalist(profile: tuple[float, ...], shift: float) -> np.ndarray:
        return np.tile(np.array(profile) + shift, (2, 1))

    b = [finalist((0.80, 0.90, 0.70), s) for s in (0.0, 0.02, -0.01)]  # search means 80, 82, 79
    c = [finalist((0.90, 0.70, 0.80), s) for s in (0.01, 0.03)]  # 81, 83
    r = compare_search_finalists("maml", b, "hypermaml", c)
    # D_e = (92 - 80.33, 72 - 90.33, 82 - 70.33) = (11.67, -18.33, 11.67): var 300, over E = 3 -> 100.
    # Search terms: var(80, 82, 79) = 2.33, /3 = 0.78 (2 df); var(81, 83) = 2, /2 = 1 (1 df). The df are
    # Welch's over the search terms alone: (0.78 + 1)^2 / (0.78^2 / 2 + 1^2 / 1) = 2.43.
    searches = [(7 / 3 / 3, 2), (1.0, 1)]
    var = sum(v for v, _ in searches) + 100.0
    df = sum(v for v, _ in searches) ** 2 / sum(v**2 / k for v, k in searches)
    assert df == pytest.approx(2.427, abs=1e-3)
    assert r.verdict.effect == pytest.approx(82 - 241 / 3)
    assert r.episode_se == pytest.approx(10.0)
    assert r.baseline_search_sd == pytest.approx(math.sqrt(7 / 3))
    assert r.df == pytest.approx(df)
    assert r.verdict.ci_high - r.verdict.effect == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(var))
    assert r.verdict.kind == "inconclusive"
    assert r.searches_needed is None and "more test episodes are needed" in r.verdict.sentence


@pytest.mark.parametrize(
    ("baseline", "challenger", "message"),
    [
        ([], [np.full((3, 10), 0.8)], "at least 1 search"),
        (np.full((3, 10), 0.8), [np.full((3, 10), 0.8)], "one \\[seeds, episodes\\] matrix per search"),
        ([np.full((3, 10), 0.8)], [np.full((3, 10), 0.8), np.full((3, 11), 0.8)], "same episodes"),
        ([np.full((1, 10), 0.8)], [np.full((3, 10), 0.8)], "at least 2 seeds"),
        ([np.full((3, 10), 80.0)], [np.full((3, 10), 0.8)], "fractions"),
    ],
)
def test_search_level_invalid_inputs_raise(baseline, challenger, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare_search_finalists("maml", baseline, "hypermaml", challenger)


def test_search_level_degenerate_inputs_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare_search_finalists("maml", [np.full((3, 50), 0.8)] * 3, "hypermaml", [np.full((2, 50), 0.8)] * 4)
        apart = compare_search_finalists("maml", [np.full((3, 50), 0.8)] * 3, "hypermaml", [np.full((3, 50), 0.9)] * 3)
    assert (same.verdict.effect, same.verdict.ci_low, same.verdict.ci_high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    assert same.verdict.kind == "equivalent"
    assert apart.verdict.kind == "hypermaml_better" and apart.verdict.ci_low == apart.verdict.ci_high == pytest.approx(
        10.0
    )


def test_compare_searches_agreeing_studies_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = compare_searches("maml", "hypermaml", [0.5, 0.5, 0.5])
    assert (r.verdict.ci_low, r.verdict.ci_high, r.verdict.kind) == (0.5, 0.5, "equivalent")


# ---- expected best of n trials --------------------------------------------------------------------------


def test_expected_best_by_value() -> None:
    values = [0.62, 0.71, 0.55, 0.71, 0.80, 0.66]
    curve = expected_best(values)
    mean = np.array(curve.mean)
    assert curve.n == tuple(range(1, 7))
    assert mean[0] == pytest.approx(np.mean(values))
    assert curve.sd[0] == pytest.approx(np.std(values))  # one draw: the values' own (population) sd
    assert np.all(np.diff(mean) >= -1e-12) and np.all(mean <= max(values))
    assert np.all(np.array(curve.low) <= mean) and np.all(mean <= np.array(curve.high))
    assert max(curve.high) <= max(values)
    far = expected_best(values, n_max=50 * len(values))
    assert far.mean[-1] == pytest.approx(max(values), abs=1e-6)
    assert far.sd[-1] == pytest.approx(0.0, abs=1e-3)
    flat = expected_best([0.7] * 5)
    assert flat.mean == pytest.approx((0.7,) * 5) and flat.sd == pytest.approx((0.0,) * 5, abs=1e-7)


def test_expected_best_hand_computed() -> None:
    # Values 0.2, 0.5, 0.8; two draws: P(max = v_(i)) = (i/3)^2 - ((i-1)/3)^2 = 1/9, 3/9, 5/9.
    curve = expected_best([0.8, 0.2, 0.5])
    assert curve.mean[1] == pytest.approx((0.2 + 3 * 0.5 + 5 * 0.8) / 9)  # 0.6333
    second = (0.04 + 3 * 0.25 + 5 * 0.64) / 9
    assert curve.sd[1] == pytest.approx(math.sqrt(second - (5.7 / 9) ** 2))  # 0.2055
    # Three draws: 1/27, 7/27, 19/27.
    assert curve.mean[2] == pytest.approx((0.2 + 7 * 0.5 + 19 * 0.8) / 27)
    with pytest.raises(ValueError, match="finite"):
        expected_best([])
