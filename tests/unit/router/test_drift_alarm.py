"""Drift alarms on persistence (k drifted of the last m windows): the rule against a brute
force, the false-alarm formula against an exact enumeration, and the rate measured on a
clean stream through the real monitor."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hitl_router.errors import ConfigError
from hitl_router.router.config import parse_config
from hitl_router.router.drift import DriftMonitor
from hitl_router.router.drift_alarm import Persistence, PersistenceSpec, parse_persistence
from hitl_router.router.drift_pool import build_profile
from hitl_router.simulate import Simulator

W = 100


@given(
    verdicts=st.lists(st.booleans(), max_size=60),
    m=st.integers(1, 8),
    data=st.data(),
)
def test_the_alarm_is_k_of_the_last_m_windows(verdicts, m, data):
    k = data.draw(st.integers(1, m))
    p = Persistence(PersistenceSpec(k, m))
    states = [p.update("a", v) for v in verdicts]
    want = [sum(verdicts[max(0, i - m + 1) : i + 1]) >= k for i in range(len(verdicts))]
    assert states == want
    assert p.onsets["a"] == sum(1 for i, s in enumerate(want) if s and (i == 0 or not want[i - 1]))
    assert p.on("a") == (want[-1] if want else False) and not p.on("b")


@pytest.mark.parametrize("m", range(1, 8))
def test_the_onset_probability_is_the_exact_one(m):
    """Enumerate the m + 1 windows an onset depends on (the one leaving, the m − 1 kept,
    the new one), each drifted with probability alpha."""
    alpha = 0.13
    for k in range(1, m + 1):
        exact = 0.0
        for xs in itertools.product((0, 1), repeat=m + 1):
            before, after = sum(xs[:-1]), sum(xs[1:])
            if after >= k > before:
                exact += alpha ** sum(xs) * (1 - alpha) ** (m + 1 - sum(xs))
        assert math.isclose(PersistenceSpec(k, m).onset_probability(alpha), exact, rel_tol=1e-12)


def test_the_default_rate_at_1000_predictions_a_second():
    """What the README states: 4 of 6 at alpha 0.01, windows of 1,000 at 1,000/s."""
    per_day = PersistenceSpec().false_alarms_per_day(alpha=0.01, windows_per_day=86_400)
    assert 0.008 < per_day < 0.009  # one in about four months
    one_window = PersistenceSpec(1, 1).false_alarms_per_day(alpha=0.01, windows_per_day=86_400)
    assert 850 < one_window < 860


def test_false_alarms_on_a_clean_stream_match_the_formula():
    """A clean stream through the real monitor: windows resampled from predictions the
    profile never saw. At alpha 0.01 alarms are too rare to count in a test, so the
    profile is recalibrated to alpha 0.2 with 2 of 3 windows, where the formula predicts
    an onset every ~20 windows; the measured window rate goes into the formula."""
    records = list(Simulator(seed=7).records(12_000))
    profile = build_profile(records[:8_000], window=W, alpha=0.01, bootstrap=400, seed=1)
    held = records[8_000:]
    spec = PersistenceSpec(drifted=2, windows=3)
    monitor = DriftMonitor(profile, alpha=0.2, persistence=spec)
    rows = np.random.default_rng(3).integers(0, len(held), size=(1_500, W))
    reports = monitor.update(held[i] for i in rows.ravel())
    verdicts = {r.window: r.window_drifted for r in reports}
    assert len(verdicts) == 1_500
    rate = sum(verdicts.values()) / len(verdicts)
    assert 0.15 < rate < 0.25  # the recalibrated alpha holds on unseen data
    expected = spec.onset_probability(rate) * len(verdicts)
    onsets = monitor.alarms.onsets["digits-committee@1"]
    assert abs(onsets - expected) < 3 * math.sqrt(expected), (onsets, expected)
    assert monitor.summary()["alarms"] == onsets


def test_persistence_config():
    assert parse_config({}).drift.persistence == PersistenceSpec(4, 6)
    cfg = parse_config({"drift": {"persistence": {"drifted": 2, "windows": 3}}})
    assert cfg.drift.persistence == PersistenceSpec(2, 3)
    assert parse_persistence({"windows": 2}) == PersistenceSpec(2, 2)  # k capped at m
    assert cfg.describe()["drift"]["persistence"] == {"drifted": 2, "windows": 3}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"drifted": 7, "windows": 6},
            r"drift\.persistence\.drifted: must be an integer from 1 to windows \(6\)",
        ),
        ({"windows": 0}, r"drift\.persistence\.windows: must be an integer from 1 to 1000"),
        ({"k": 2}, r"drift\.persistence\.k: unknown key"),
        ([4, 6], r"drift\.persistence: expected \{drifted: k, windows: m\}"),
        ({"drifted": True}, r"drift\.persistence\.drifted: must be an integer"),
    ],
)
def test_bad_persistence_names_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"drift": {"persistence": value}})
