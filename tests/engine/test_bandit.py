"""Bandits and slate policies: seeded determinism, learning, and exact propensities that sum to 1."""

import itertools
import math

import numpy as np
import pytest

from kairos.engine.bandit import (
    EpsilonGreedySlatePolicy,
    LinUCB,
    PlackettLuceSlatePolicy,
    ThompsonSampler,
    ThompsonSlatePolicy,
    epsilon_greedy_marginals,
    plackett_luce_probability,
    softmax,
)

SCORES = np.array([2.0, 0.5, 1.0, -1.0])
ITEMS = ["a", "b", "c", "d"]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_plackett_luce_slate_probabilities_sum_to_one(k):
    weights = softmax(SCORES, temperature=0.7)
    total = sum(plackett_luce_probability(weights, order) for order in itertools.permutations(range(4), k))
    assert total == pytest.approx(1.0)


def test_plackett_luce_hand_computed():
    # weights 0.5, 0.3, 0.2: P(order 2, 0) = 0.2 * 0.5 / 0.8
    assert plackett_luce_probability(np.array([0.5, 0.3, 0.2]), [2, 0]) == pytest.approx(0.125)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_epsilon_greedy_slate_probabilities_sum_to_one(k):
    policy = EpsilonGreedySlatePolicy(epsilon=0.2)
    slates = list(itertools.permutations(range(4), k))
    probs = [policy.slate_probability(SCORES, order, k) for order in slates]
    assert sum(probs) == pytest.approx(1.0)
    # greedy slate (a, c, b)[:k] gets 0.8 + 0.2 / P(4, k)
    assert max(probs) == pytest.approx(0.8 + 0.2 / math.perm(4, k))


def test_position_marginals_are_distributions_per_position():
    for policy in (PlackettLuceSlatePolicy(temperature=0.5), EpsilonGreedySlatePolicy(epsilon=0.3)):
        marginals = policy.position_marginals(SCORES, 3)
        assert marginals.shape == (4, 3)
        np.testing.assert_allclose(marginals.sum(axis=0), 1.0)
        assert (marginals.sum(axis=1) <= 1.0 + 1e-12).all()  # an item appears at most once


def test_thompson_slate_marginals_are_distributions_per_position():
    sds = np.array([0.5, 1.0, 0.2, 2.0])
    marginals = ThompsonSlatePolicy(epsilon=0.1, draws=4000, seed=1).position_marginals(SCORES, sds, 3)
    assert marginals.shape == (4, 3)
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0)
    assert (marginals.sum(axis=1) <= 1.0 + 1e-12).all()
    assert (marginals >= 0.1 / 4 - 1e-12).all()  # the epsilon floor under every item at every position


def test_thompson_slate_without_uncertainty_is_greedy_but_for_epsilon():
    policy = ThompsonSlatePolicy(epsilon=0.0, seed=0)
    for _ in range(20):
        slate = policy.sample(ITEMS, SCORES, 2, sds=np.zeros(4))
        assert slate.item_ids == ("a", "c") and not slate.explored
        assert slate.position_propensities == (1.0, 1.0) and slate.propensity == 1.0


def test_thompson_slate_without_uncertainty_logs_the_epsilon_greedy_propensities_exactly():
    # With every sd 0 the policy is epsilon-greedy, and its logged propensities are that policy's closed form,
    # not a Monte Carlo estimate: greedy and random slates alike.
    thompson, greedy = ThompsonSlatePolicy(epsilon=0.3, seed=3), EpsilonGreedySlatePolicy(epsilon=0.3)
    marginals = greedy.position_marginals(SCORES, 3)
    explored = 0
    for _ in range(200):
        slate = thompson.sample(ITEMS, SCORES, 3, sds=np.zeros(4))
        order = [ITEMS.index(i) for i in slate.item_ids]
        explored += slate.explored
        assert slate.propensity == pytest.approx(greedy.slate_probability(SCORES, order, 3), abs=1e-12)
        expected = [marginals[i, pos] for pos, i in enumerate(order)]
        np.testing.assert_allclose(slate.position_propensities, expected, atol=1e-12)
    assert 30 <= explored <= 90  # the random branch ran (0.3 of 200), so off-greedy slates were checked too


def test_thompson_slate_shows_items_as_often_as_their_marginals_say():
    # Two close candidates, the weaker one uncertain: it must lead the slate about as often as the Monte Carlo
    # propensities logged with the slates say, and those must agree with the closed form for two normals.
    scores, sds = np.array([0.0, -0.3, -4.0]), np.array([0.1, 1.0, 0.1])
    policy = ThompsonSlatePolicy(epsilon=0.05, draws=256, seed=7)
    first_b, logged = 0, []
    for _ in range(3000):
        slate = policy.sample(["a", "b", "c"], scores, 1, sds=sds)
        if slate.item_ids[0] == "b":
            first_b += 1
            logged.append(slate.position_propensities[0])
    p_ts = 0.5 * (1 + math.erf(-0.3 / math.sqrt(2 * (0.1**2 + 1.0**2))))  # P(b's draw above a's); c never wins
    expected = 0.95 * p_ts + 0.05 / 3
    assert first_b / 3000 == pytest.approx(expected, abs=0.03)
    assert float(np.mean(logged)) == pytest.approx(expected, abs=0.02)


def test_thompson_slate_explores_the_item_it_knows_least_about():
    # A leader known well, and two candidates 1.5 logits behind it: the one nothing is known about is drawn above
    # the leader now and then; the one known well (shown often without clicks) never is.
    policy = ThompsonSlatePolicy(epsilon=0.0, draws=2000, seed=2)
    scores = np.array([0.0, -1.5, -1.5])
    marginals = policy.position_marginals(scores, np.array([0.05, 1.0, 0.05]), 1)
    assert marginals[1, 0] > 0.05  # uncertain item 1.5 logits behind: drawn above the leader now and then
    assert marginals[2, 0] == 0.0  # as far behind but well known: never


def test_thompson_slate_is_reproducible_with_its_seed():
    first, second, sds = ThompsonSlatePolicy(seed=5), ThompsonSlatePolicy(seed=5), np.ones(4)
    slates = [first.sample(ITEMS, SCORES, 3, sds) for _ in range(5)]
    assert slates == [second.sample(ITEMS, SCORES, 3, sds) for _ in range(5)]
    assert len({s.item_ids for s in slates}) > 1  # with this much uncertainty the slates differ


def test_epsilon_greedy_marginals_hand_computed():
    m = epsilon_greedy_marginals(SCORES[None, :], 2, 0.2)[0]
    # greedy order a(0), c(2): a at position 0 -> 0.8 + 0.2/4, c at position 1 -> 0.85, others 0.05
    assert m[0, 0] == pytest.approx(0.85) and m[2, 1] == pytest.approx(0.85)
    assert m[1, 0] == pytest.approx(0.05) and m[3, 1] == pytest.approx(0.05)


def test_plackett_luce_gumbel_marginals_close_to_exact():
    exact = PlackettLuceSlatePolicy(temperature=1.0).position_marginals(SCORES, 2)
    approx = PlackettLuceSlatePolicy(temperature=1.0, exact_limit=0).position_marginals(SCORES, 2)
    np.testing.assert_allclose(approx, exact, atol=0.015)


def test_sampled_slate_records_its_exact_propensity():
    policy = PlackettLuceSlatePolicy(temperature=1.0, seed=3)
    weights = softmax(SCORES)
    counts = {}
    for _ in range(3000):
        slate = policy.sample(ITEMS, SCORES, k=2)
        order = [ITEMS.index(i) for i in slate.item_ids]
        assert slate.propensity == pytest.approx(plackett_luce_probability(weights, order))
        counts[slate.item_ids] = counts.get(slate.item_ids, 0) + 1
    # empirical frequency of the most likely slate matches its propensity
    top = max(counts, key=counts.get)
    expected = plackett_luce_probability(weights, [ITEMS.index(i) for i in top])
    assert counts[top] / 3000 == pytest.approx(expected, abs=0.03)


def test_epsilon_greedy_sample_is_seeded_and_flags_exploration():
    a = [EpsilonGreedySlatePolicy(0.5, seed=7).sample(ITEMS, SCORES, 2) for _ in range(1)]
    b = [EpsilonGreedySlatePolicy(0.5, seed=7).sample(ITEMS, SCORES, 2) for _ in range(1)]
    assert a == b
    greedy = EpsilonGreedySlatePolicy(0.0).sample(ITEMS, SCORES, 2)
    assert greedy.item_ids == ("a", "c") and greedy.propensity == 1.0 and not greedy.explored
    assert greedy.position_propensities == (1.0, 1.0)


def test_thompson_learns_better_variant_and_tracks_ctr():
    rng = np.random.default_rng(0)
    ts = ThompsonSampler(seed=0)
    true_ctr = {"v0": 0.02, "v1": 0.10}
    for arm in true_ctr:
        ts.add_arm(arm, alpha=1, beta=1)
    for _ in range(2000):
        arm = ts.choose(list(true_ctr))
        ts.update(arm, clicked=rng.random() < true_ctr[arm])
    assert ts.stats("v1").impressions > ts.stats("v0").impressions
    assert ts.stats("v1").ctr == pytest.approx(0.10, abs=0.03)
    probs = ts.choice_probabilities(["v0", "v1"])
    assert probs.sum() == pytest.approx(1.0) and probs[1] > 0.9


def test_thompson_is_seeded_and_uses_priors():
    def picks(seed):
        ts = ThompsonSampler(seed=seed)
        ts.add_arm("strong", alpha=50, beta=950)  # prior CTR 0.05 from history
        ts.add_arm("new", alpha=1, beta=19)  # generated variant, weak prior
        return [ts.choose(["strong", "new"]) for _ in range(50)]

    assert picks(1) == picks(1)
    assert ts_mean(50, 950) == pytest.approx(0.05)


def ts_mean(alpha, beta):
    ts = ThompsonSampler()
    ts.add_arm("x", alpha, beta)
    return ts.stats("x").posterior_mean


def test_linucb_prefers_arm_rewarded_in_context():
    bandit = LinUCB(dim=2, alpha=0.5)
    x_a, x_b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    for _ in range(30):
        bandit.update("left", x_a, 1.0)
        bandit.update("left", x_b, 0.0)
        bandit.update("right", x_a, 0.0)
        bandit.update("right", x_b, 1.0)
    assert bandit.choose(["left", "right"], x_a) == "left"
    assert bandit.choose(["left", "right"], x_b) == "right"
    # unexplored arm gets the optimistic bonus: alpha * sqrt(x' x / ridge) = 0.5
    assert bandit.ucb(["fresh"], x_a)[0] == pytest.approx(0.5)
