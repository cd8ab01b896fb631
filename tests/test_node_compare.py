"""Per-node comparisons of q with the reference: each latent site's own columns, saved and read back."""

from __future__ import annotations

import numpy as np

from pyro_vae.diagnostics.compare import compare
from pyro_vae.diagnostics.results import Comparison


def _draws(rng, mean, sd, k=4000):
    return mean + sd * rng.standard_normal((k,) + mean.shape)


def test_each_node_is_compared_on_its_own_columns():
    rng = np.random.default_rng(0)
    points, a, b = 3, 2, 3
    ref_mean = rng.standard_normal((points, a + b))
    ref_sd = np.full((points, a + b), 0.5)
    ref_cov = np.stack([np.diag(s ** 2) for s in ref_sd])
    ref = _draws(rng, ref_mean, ref_sd)
    # q is right about z1 (the first a columns) and off by one reference sd, twice as wide, on z2
    q_mean, q_sd = ref_mean.copy(), ref_sd.copy()
    q_mean[:, a:] += 0.5
    q_sd[:, a:] *= 2
    q = _draws(rng, q_mean, q_sd)
    c = compare(q, ref_mean, ref_cov, ref, sites=[("z1", a), ("z2", b)])
    z1, z2 = c.nodes
    assert (z1.name, z1.dims, z2.name, z2.dims) == ("z1", a, "z2", b)
    se = 3 / np.sqrt(4000)  # a standardized mean error from 4000 draws: about 1/sqrt(4000) per dim
    assert np.all(z1.std_mean_error < se) and np.all(np.abs(z2.std_mean_error - 1.0) < 2 * se)
    assert np.all(np.abs(z1.sd_ratio - 1) < 0.05) and np.all(np.abs(z2.sd_ratio - 2) < 0.1)
    # KL(N(m + s, 4 s^2) || N(m, s^2)) per dim = (4 + 1 - 1 - log 4) / 2; the z2 node has b dims
    kl = b * (4 + 1 - 1 - np.log(4)) / 2
    np.testing.assert_allclose(z2.kl_gauss, kl, rtol=0.05)
    assert np.all(z1.kl_gauss < 0.01)
    # the whole comparison averages over all columns: it is not either node's
    assert np.all(c.std_mean_error > z1.std_mean_error) and np.all(c.std_mean_error < z2.std_mean_error)
    back = Comparison.from_json(c.to_json())
    assert [n.name for n in back.nodes] == ["z1", "z2"]
    np.testing.assert_allclose(back.nodes[1].kl_gauss, z2.kl_gauss)


def test_one_site_has_no_node_table():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((2, 3))
    cov = np.stack([np.eye(3)] * 2)
    c = compare(_draws(rng, m, np.ones((2, 3))), m, cov, _draws(rng, m, np.ones((2, 3))), sites=[("z", 3)])
    assert c.nodes == []
