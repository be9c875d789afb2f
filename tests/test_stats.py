"""hpo.stats on simulated studies (error rates, power, seeds-needed) and on hand-built cases (exact values)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from hpo.stats import SeedComparison, compare_seeds, episode_line

EPISODES = 600
QUERIES = 75  # query images per test episode, so an episode's accuracy is k / 75


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


def assert_consistent(c: SeedComparison) -> None:
    """The sentence's direction comes from the numbers: winner <=> sign of effect, no 'better' otherwise."""
    assert c.kind in {f"{c.challenger}_better", f"{c.baseline}_better", "equivalent", "inconclusive"}
    assert c.effect == pytest.approx(c.episode_mean_difference, abs=1e-9)
    assert c.ci_low <= c.effect <= c.ci_high
    if c.kind.endswith("_better"):
        winner = c.kind.removesuffix("_better")
        loser = c.baseline if winner == c.challenger else c.challenger
        assert (c.effect > 0) == (winner == c.challenger)
        assert c.ci_low > 0 or c.ci_high < 0
        assert c.sentence.startswith(f"{winner} is better than {loser} by {abs(c.effect):.2f} points")
        assert c.p_value < 0.05
    else:
        assert "better" not in c.sentence
        opening = "inconclusive:" if c.kind == "inconclusive" else f"{c.baseline} and {c.challenger} are equivalent"
        assert c.sentence.startswith(opening)
    assert (c.seeds_needed is not None) <= (c.kind == "inconclusive")


@pytest.mark.parametrize("seeds", [3, 5])
def test_no_true_difference_rarely_declares_a_winner(seeds: int) -> None:
    results = run_studies(seed=seeds, studies=200, seeds=seeds, mu_b=0.90, mu_c=0.90)
    for c in results:
        assert_consistent(c)
    rate = np.mean([c.kind.endswith("_better") for c in results])
    print(f"\nno true difference, {seeds} seeds per algorithm: a winner declared in {rate:.1%} of 200 studies")
    assert rate <= 0.07


def test_three_point_gap_is_found() -> None:
    results = run_studies(seed=11, studies=200, seeds=5, mu_b=0.90, mu_c=0.93)
    for c in results:
        assert_consistent(c)
    right = np.mean([c.kind == "hypermaml_better" for c in results])
    wrong = sum(c.kind == "maml_better" for c in results)
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
    assert c.kind == kind
    assert c.effect == pytest.approx(c.episode_mean_difference, abs=1e-9)
    assert np.sign(c.effect) == np.sign(d.mean())
    assert_consistent(c)
    assert f"{c.episode_mean_difference:+.2f}".replace("-", "−") in episode_line(c)


def test_equivalent_when_noise_is_tiny_and_seeds_are_many() -> None:
    (c,) = run_studies(seed=3, studies=1, seeds=10, mu_b=0.90, mu_c=0.90, sigma_seed=0.001, sigma_interaction=0.005)
    assert c.kind == "equivalent"
    assert -1.0 < c.ci_low < c.ci_high < 1.0
    assert c.sentence.startswith("maml and hypermaml are equivalent within ±1.0 points: hypermaml − maml = ")
    assert_consistent(c)


def test_significant_but_negligible_difference_is_equivalent() -> None:
    # A real 0.5-point gain, measured precisely: the CI excludes 0 yet lies inside ±1 point.
    (c,) = run_studies(seed=4, studies=1, seeds=10, mu_b=0.900, mu_c=0.905, sigma_seed=0.001, sigma_interaction=0.005)
    assert 0 < c.ci_low < c.ci_high < 1.0
    assert c.p_value < 0.05
    assert c.kind == "equivalent"
    assert "statistically significant" in c.sentence
    assert_consistent(c)


def test_seeds_needed_shrinks_the_interval_to_about_the_target() -> None:
    # A 0.8-point true gap with 1-point seed noise usually cannot be settled with 3 seeds.
    rng = np.random.default_rng(5)
    ratios = []
    for study in range(12):
        (c,) = run_studies(seed=100 + study, studies=1, seeds=3, mu_b=0.90, mu_c=0.908)
        if c.kind != "inconclusive":
            continue
        assert c.seeds_needed is not None and c.seeds_needed > 3
        assert f"about {c.seeds_needed} seeds per algorithm" in c.sentence
        target = max(abs(c.effect), c.margin - abs(c.effect))
        # Re-run the same study design with the suggested seeds: 20 fresh draws.
        episode_effect = shared_episodes(rng, 20)
        b = simulate(rng, episode_effect, c.seeds_needed, 0.90)
        h = simulate(rng, episode_effect, c.seeds_needed, 0.908)
        reruns = [compare_seeds("maml", b[i], "hypermaml", h[i]) for i in range(20)]
        half_widths = [(r.ci_high - r.ci_low) / 2 for r in reruns]
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
    assert c.effect == pytest.approx(10.0)
    assert c.episode_mean_difference == pytest.approx(10.0)
    # Seed terms 100/3 each (points^2); d = (80 - 66.67, 80 - 73.33) = (13.33, 6.67): var 200/9, over E=2 -> 100/9.
    var = 100 / 3 + 100 / 3 + 100 / 9
    df = var**2 / ((100 / 3) ** 2 / 2 + (100 / 3) ** 2 / 2 + (100 / 9) ** 2 / 1)
    assert df == pytest.approx(4.9)
    assert c.df == pytest.approx(4.9)
    half = stats.t.ppf(0.975, 4.9) * math.sqrt(var)
    assert (c.ci_low, c.ci_high) == (pytest.approx(10 - half), pytest.approx(10 + half))
    assert c.p_value == pytest.approx(2 * stats.t.sf(10 / math.sqrt(var), 4.9))
    # Pairs (challenger > baseline): 0.7 beats 0.6, ties 0.7 -> 1.5; 0.8 -> 2.5; 0.9 -> 3. Total 7/9.
    assert c.p_improvement == pytest.approx(7 / 9)
    assert 0 <= c.p_improvement_low <= 7 / 9 <= c.p_improvement_high <= 1
    assert c.kind == "inconclusive"
    # Even infinitely many seeds leave t_{0.975,1} * sqrt(100/9) = 42.4 points > target 10: need episodes.
    assert c.seeds_needed is None
    assert "more test episodes are needed" in c.sentence
    assert "budget: 12 trials x 1000 episodes per algorithm" in c.sentence
    assert "3 hypermaml vs 3 maml training seeds, 2 shared test episodes" in c.sentence
    assert c.episode_wilcoxon_p == pytest.approx(0.5)  # two positive differences: exact p = 2 * 1/4
    assert_consistent(c)


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
    assert (same.effect, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert same.kind == "equivalent"
    assert same.p_value == 1.0
    assert same.episode_wilcoxon_p == 1.0
    assert (same.p_improvement, same.p_improvement_low, same.p_improvement_high) == (0.5, 0.5, 0.5)
    assert math.isfinite(same.df) and same.df >= 1
    assert_consistent(same)
    # Zero variance but a real gap: a zero-width CI at 10 points, and every seed pair favours hypermaml.
    assert apart.effect == pytest.approx(10.0)
    assert apart.ci_low == apart.ci_high == apart.effect
    assert apart.kind == "hypermaml_better"
    assert (apart.p_improvement, apart.p_improvement_low, apart.p_improvement_high) == (1.0, 1.0, 1.0)
    assert_consistent(apart)
