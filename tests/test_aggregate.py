"""core.aggregate: the arithmetic of parameter servers and federated averaging, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from distdqn.core import aggregate


def upd(a, b):
    return {"w": np.array(a, dtype=np.float32), "b": np.array(b, dtype=np.float32)}


def test_mean_of_is_the_plain_mean_and_keeps_the_dtype():
    out = aggregate.mean_of([upd([1.0, 2.0], [0.0]), upd([3.0, 6.0], [1.0])])
    np.testing.assert_array_equal(out["w"], [2.0, 4.0])
    np.testing.assert_array_equal(out["b"], [0.5])
    assert out["w"].dtype == np.float32


def test_weighted_mean_is_fedavg():
    # n_k = 1 and 3: theta = (1 * 0 + 3 * 4) / 4 = 3
    out = aggregate.mean_of([upd([0.0], [0.0]), upd([4.0], [8.0])], weights=[1, 3])
    np.testing.assert_array_equal(out["w"], [3.0])
    np.testing.assert_array_equal(out["b"], [6.0])


def test_mean_of_one_update_is_exact_copy():
    u = upd([0.1, 1e-7], [3.3])
    out = aggregate.mean_of([u])
    np.testing.assert_array_equal(out["w"], u["w"])
    assert out["w"] is not u["w"]


def test_mean_of_rejects_bad_input():
    with pytest.raises(ValueError, match="nothing to aggregate"):
        aggregate.mean_of([])
    with pytest.raises(ValueError, match="different parameters"):
        aggregate.mean_of([upd([1.0], [1.0]), {"w": np.zeros(1)}])
    with pytest.raises(ValueError, match="weights"):
        aggregate.mean_of([upd([1.0], [1.0])], weights=[0.0])


def test_median_ignores_a_minority_of_nan_and_huge_values():
    updates = [upd([1.0, 2.0], [0.0]), upd([3.0, 4.0], [1.0]), upd([np.nan, 1e30], [2.0])]
    out = aggregate.median_of(updates)
    np.testing.assert_array_equal(out["w"], [3.0, 4.0])   # NaN counts as +inf: median of (1, 3, inf)
    np.testing.assert_array_equal(out["b"], [1.0])


def test_trimmed_mean_drops_extremes_on_each_side():
    updates = [upd([v], [v]) for v in (-100.0, 1.0, 2.0, 3.0, 1e9)]
    out = aggregate.trimmed_mean_of(updates, trim=1)
    np.testing.assert_allclose(out["w"], [2.0])
    with pytest.raises(ValueError, match="cannot trim"):
        aggregate.trimmed_mean_of(updates[:2], trim=1)


def test_difference_add_scaled_and_norm_clipping():
    a, b = upd([3.0, 4.0], [0.0]), upd([0.0, 0.0], [0.0])
    d = aggregate.difference(a, b)
    assert aggregate.global_norm(d) == pytest.approx(5.0)
    clipped, norm = aggregate.clip_by_norm(d, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
    same, _ = aggregate.clip_by_norm(d, 10.0)
    np.testing.assert_array_equal(same["w"], d["w"])
    np.testing.assert_allclose(aggregate.add_scaled(b, d, 0.5)["w"], [1.5, 2.0])


def test_is_finite():
    assert aggregate.is_finite(upd([1.0], [2.0]))
    assert not aggregate.is_finite(upd([np.nan], [2.0]))
    assert not aggregate.is_finite(upd([1.0], [np.inf]))


# ---- the server's step by name, DP on one update, FedProx ----

def test_aggregate_dispatches_by_name_and_clamps_the_trim():
    ups = [upd([0.0], [1.0]), upd([1.0], [2.0]), upd([10.0], [3.0])]
    np.testing.assert_array_equal(aggregate.aggregate("fedavg", ups, [1, 1, 2])["w"], [5.25])   # (0+1+20)/4
    np.testing.assert_allclose(aggregate.aggregate("fedavg", ups, [0, 0, 0])["w"], [11 / 3], rtol=1e-6)  # plain mean
    np.testing.assert_array_equal(aggregate.aggregate("median", ups)["w"], [1.0])
    # trim 5 of 3 updates would leave none: clamped to 1 from each side (the median's value here)
    np.testing.assert_array_equal(aggregate.aggregate("trimmed_mean", ups, trim=5)["w"], [1.0])
    with pytest.raises(ValueError, match="unknown aggregator"):
        aggregate.aggregate("mode", ups)


def test_privatize_clips_to_the_bound_and_adds_noise_of_the_stated_scale():
    rng = np.random.default_rng(0)
    big = {"w": np.full(10_000, 3.0, np.float32)}             # norm 300
    clipped, norm = aggregate.privatize(big, clip=1.0, noise_multiplier=0.0, rng=rng)
    assert norm == pytest.approx(300.0)
    assert aggregate.global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    noised, _ = aggregate.privatize(big, clip=1.0, noise_multiplier=0.5, rng=rng)
    noise = noised["w"] - clipped["w"]
    assert noised["w"].dtype == np.float32
    assert np.std(noise) == pytest.approx(0.5, rel=0.03) and abs(np.mean(noise)) < 0.02


def test_proximal_gradient_adds_mu_times_the_distance_to_the_anchor():
    grads, params, anchor = (np.array(v, dtype=np.float32) for v in ([1.0, -1.0, 0.5], [2.0, 2.0, 0.0], [1.0, 4.0, 1.0]))
    out = aggregate.proximal_gradient(grads, params, anchor, mu=0.1)
    np.testing.assert_allclose(out, [1.0 + 0.1 * 1.0, -1.0 + 0.1 * -2.0, 0.5 - 0.1], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(aggregate.proximal_gradient(grads, params, anchor, mu=0.0), grads)


def test_mean_pairwise_cosine_measures_how_alike_updates_point():
    same, opposite, orthogonal = upd([1.0, 0.0], [0.0]), upd([-2.0, 0.0], [0.0]), upd([0.0, 3.0], [0.0])
    assert aggregate.mean_pairwise_cosine([same, same]) == pytest.approx(1.0)
    assert aggregate.mean_pairwise_cosine([same, opposite]) == pytest.approx(-1.0)
    # pairs: (same, opposite) -1, (same, orthogonal) 0, (opposite, orthogonal) 0
    assert aggregate.mean_pairwise_cosine([same, opposite, orthogonal]) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError):
        aggregate.mean_pairwise_cosine([same])


def test_staleness_weight_is_fedasyncs_polynomial_discount():
    from distdqn.core.staleness import staleness_weight
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)      # 1 / sqrt(4)
    assert staleness_weight(1, 1.0) == pytest.approx(0.5)
    assert staleness_weight(5, 0.0) == 1.0
