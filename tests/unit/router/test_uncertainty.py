import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hitl_router.router.uncertainty import apply_temperature, ensemble_scores, scores


def test_scores_match_hand_computed_values():
    s = scores(np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    h1 = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    np.testing.assert_allclose(s["max_prob"], [0.7, 0.5])
    np.testing.assert_allclose(s["margin"], [0.5, 0.25])
    np.testing.assert_allclose(s["entropy"], [h0, h1])
    np.testing.assert_allclose(s["entropy_norm"], [h0 / math.log(3), h1 / math.log(3)])


def test_zero_probabilities_contribute_no_entropy():
    s = scores(np.array([[1.0, 0.0], [0.5, 0.5]]))
    assert s["entropy"][0] == 0.0
    assert math.isclose(s["entropy_norm"][1], 1.0)


def test_ensemble_scores_match_hand_computed_values():
    members = np.array([[[0.8, 0.2], [0.4, 0.6], [0.6, 0.4]]])
    mean = np.array([0.6, 0.4])

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)

    def h(p):
        return -sum(a * math.log(a) for a in p if a > 0)

    expected_kl = np.mean([kl(m, mean) for m in members[0]])
    # votes: class 0, class 1, class 0 → fractions 2/3, 1/3
    expected_votes = h([2 / 3, 1 / 3])
    expected_bald = h(mean) - np.mean([h(m) for m in members[0]])
    s = ensemble_scores(members)
    assert math.isclose(s["ensemble_kl"][0], expected_kl, rel_tol=1e-12)
    assert math.isclose(s["vote_entropy"][0], expected_votes, rel_tol=1e-12)
    assert math.isclose(s["bald"][0], expected_bald, rel_tol=1e-12)


def _simplex(rows, k):
    return (
        arrays(np.float64, (rows, k), elements=st.floats(0.0, 1.0))
        .filter(lambda a: (a.sum(axis=1) > 1e-6).all())
        .map(lambda a: a / a.sum(axis=1, keepdims=True))
    )


@settings(max_examples=200, derandomize=True)
@given(st.integers(2, 12).flatmap(lambda k: _simplex(5, k)))
def test_scores_stay_in_range(p):
    s = scores(p)
    k = p.shape[1]
    assert np.all((s["max_prob"] >= 1 / k - 1e-9) & (s["max_prob"] <= 1 + 1e-12))
    assert np.all((s["margin"] >= 0) & (s["margin"] <= 1 + 1e-12))
    assert np.all((s["entropy"] >= 0) & (s["entropy"] <= math.log(k) + 1e-9))
    assert np.all((s["entropy_norm"] >= 0) & (s["entropy_norm"] <= 1 + 1e-9))


@settings(max_examples=150, derandomize=True)
@given(st.integers(2, 6), st.integers(2, 5), st.data())
def test_ensemble_scores_in_range_and_kl_equals_bald(k, m, data):
    members = data.draw(_simplex(3 * m, k)).reshape(3, m, k)
    s = ensemble_scores(members)
    assert np.all(s["ensemble_kl"] >= 0)
    assert np.all((s["vote_entropy"] >= 0) & (s["vote_entropy"] <= math.log(min(k, m)) + 1e-9))
    assert np.all(s["bald"] <= math.log(k) + 1e-9)
    # mean KL(member ‖ committee mean) = H(mean) − mean H(member): an identity
    np.testing.assert_allclose(s["ensemble_kl"], s["bald"], atol=1e-9)


def test_temperature_softens_and_keeps_the_argmax():
    p = np.array([[0.9, 0.07, 0.03]])
    soft = apply_temperature(p, 2.0)
    sharp = apply_temperature(p, 0.5)
    assert soft[0, 0] < 0.9 < sharp[0, 0]
    assert soft.argmax() == sharp.argmax() == 0
    np.testing.assert_allclose(soft.sum(), 1.0)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p)
    expected = np.exp(np.log(p) / 2.0)
    np.testing.assert_allclose(soft, expected / expected.sum())
