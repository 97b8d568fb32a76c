"""core.privacy: DP-FedAvg's noised mean by hand, and the accountant's epsilon against
dp-accounting called directly on the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from distdqn.core import privacy


def direct_epsilon(event, count, delta, orders=None):
    accountant = rdp.RdpAccountant(orders)
    accountant.compose(event, count)
    return accountant.get_epsilon(delta)


def test_central_epsilon_is_the_librarys_poisson_subsampled_gaussian():
    # q = 0.5 (2 of 4 clients a round on average), z = 1.1, 50 rounds, delta 1e-5
    acc = privacy.PrivacyAccountant("central", 1.1, 0.5, 1e-5, num_clients=4)
    for _ in range(50):
        acc.record_round([0, 1])
    event = dp_event.PoissonSampledDpEvent(0.5, dp_event.GaussianDpEvent(1.1))
    assert acc.epsilon() == direct_epsilon(event, 50, 1e-5, list(privacy.RDP_ORDERS))
    # the library's default orders (fractional ones too) give nearly the same figure
    assert acc.epsilon() == pytest.approx(direct_epsilon(event, 50, 1e-5), rel=0.01)
    assert acc.epsilon() == pytest.approx(24.06, abs=0.01)   # the figure itself, for these parameters


def test_central_epsilon_grows_with_rounds_and_shrinks_with_noise():
    def eps(z, rounds):
        acc = privacy.PrivacyAccountant("central", z, 0.25, 1e-5, num_clients=8)
        for _ in range(rounds):
            acc.record_round([])
        return acc.epsilon()
    assert eps(1.0, 10) < eps(1.0, 100)
    assert eps(3.0, 100) < eps(1.0, 100)
    assert eps(1.0, 0) == 0.0
    assert eps(0.0, 1) == float("inf")


def test_local_epsilon_counts_the_busiest_clients_rounds_at_half_the_noise_multiplier():
    acc = privacy.PrivacyAccountant("local", 4.0, 1.0, 1e-5, num_clients=3)
    for clients in ([0, 1], [0], [0, 2]):
        acc.record_round(clients)
    assert acc.participations == [3, 1, 1] and acc.count == 3
    # sensitivity 2S for noise z S: a Gaussian of multiplier z / 2, composed 3 times, no sampling
    assert acc.epsilon() == direct_epsilon(dp_event.GaussianDpEvent(2.0), 3, 1e-5, list(privacy.RDP_ORDERS))


def test_a_resumed_accountant_goes_on_from_its_counts():
    a = privacy.PrivacyAccountant("central", 1.0, 0.5, 1e-5, num_clients=4)
    for _ in range(7):
        a.record_round([1])
    b = privacy.PrivacyAccountant("central", 1.0, 0.5, 1e-5, 4, a.rounds, a.participations)
    a.record_round([2])
    b.record_round([2])
    assert a.epsilon() == b.epsilon()


def test_noised_mean_clips_each_update_sums_and_divides_by_the_expected_count():
    updates = [{"w": np.array([3.0, 4.0], np.float32)},      # norm 5: clipped to norm 1 -> [0.6, 0.8]
               {"w": np.array([0.3, 0.0], np.float32)}]      # norm 0.3: kept
    out, norms = privacy.noised_mean(updates, clip=1.0, noise_multiplier=0.0, expected_clients=4.0,
                                     rng=np.random.default_rng(0))
    np.testing.assert_allclose(out["w"], [(0.6 + 0.3) / 4, 0.8 / 4], rtol=1e-6)
    assert norms == pytest.approx([5.0, 0.3])
    assert out["w"].dtype == np.float32


def test_noised_mean_adds_noise_of_std_z_times_clip_over_the_expected_count():
    zeros = [{"w": np.zeros(200_000, np.float32)}]
    out, _ = privacy.noised_mean(zeros, clip=0.5, noise_multiplier=2.0, expected_clients=4.0,
                                 rng=np.random.default_rng(1))
    assert np.std(out["w"]) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.01)
    assert abs(np.mean(out["w"])) < 0.002
