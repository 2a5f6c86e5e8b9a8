"""in_projected_space with GaLore, DCT and FFT projections, against the rules written here
with numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy

import gradtx as gx

scipy_fft = pytest.importorskip("scipy.fft")


def _adam_rule(g, m, v, t, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), m, v


def _galore_adam_reference(grads, rank, update_every, scale):
    """GaLore-Adam on one matrix, per the paper's algorithm, in numpy."""
    out, m, v, basis = [], None, None, None
    for t, g in enumerate(grads):
        wide = g.shape[0] <= g.shape[1]
        if t % update_every == 0:
            u, _, vh = np.linalg.svd(g, full_matrices=False)
            basis = u[:, :rank] if wide else vh[:rank].T
            largest = basis[np.abs(basis).argmax(axis=0), np.arange(rank)]
            basis = basis * np.where(largest < 0, -1.0, 1.0)  # the sign gx fixes: largest entry positive
        r = basis.T @ g if wide else g @ basis
        if m is None:
            m, v = np.zeros_like(r), np.zeros_like(r)
        n, m, v = _adam_rule(r, m, v, t + 1)
        out.append(scale * (basis @ n if wide else n @ basis.T))
    return out


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)], ids=["wide", "tall"])
def test_galore_adam_matches_the_papers_rule(shape):
    gen = np.random.default_rng(0)
    grads = [gen.standard_normal(shape) for _ in range(7)]
    expected = _galore_adam_reference(grads, rank=2, update_every=3, scale=0.25)
    tx = gx.in_projected_space(gx.scale_by_adam(), gx.galore_projection(rank=2, update_every=3))
    params = {"w": torch.zeros(shape, dtype=torch.float64)}
    state = tx.init(params)
    assert state.inner.mu["w"].shape == ((2, shape[1]) if shape[0] <= shape[1] else (shape[0], 2))
    for g, want in zip(grads, expected):
        u, state = tx.update({"w": torch.from_numpy(g)}, state, params)
        np.testing.assert_allclose(u["w"].numpy(), want, rtol=1e-10, atol=1e-12)


def test_galore_passes_vectors_and_small_matrices_through_unscaled():
    params = {"b": torch.zeros(5, dtype=torch.float64), "small": torch.zeros(2, 7, dtype=torch.float64)}
    grads = {"b": torch.linspace(-1, 1, 5, dtype=torch.float64), "small": torch.ones(2, 7, dtype=torch.float64)}
    tx = gx.in_projected_space(gx.scale_by_adam(), gx.galore_projection(rank=2))
    plain = gx.scale_by_adam()
    ours, _ = tx.update(grads, tx.init(params), params)
    theirs, _ = plain.update(grads, plain.init(params), params)
    for k in params:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 6, 13])
def test_dct_projection_is_scipys_orthonormal_dct(n):
    x = torch.randn(n, 1, dtype=torch.float64)
    projection = gx.dct_projection()
    y = projection.project(x, projection.init(x))
    np.testing.assert_allclose(y.numpy(), scipy_fft.dct(x.numpy().ravel(), norm="ortho"), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(projection.unproject(y, projection.init(x), x), x, rtol=1e-12, atol=1e-14)


def test_fft_projection_is_numpys_real_fft():
    x = torch.randn(3, 5, dtype=torch.float64)
    projection = gx.fft_projection()
    y = projection.project(x, projection.init(x))
    expected = np.fft.rfft(x.numpy().ravel(), norm="ortho")
    np.testing.assert_allclose(y[:, 0].numpy() + 1j * y[:, 1].numpy(), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(projection.unproject(y, projection.init(x), x), x, rtol=1e-12, atol=1e-14)


def test_rms_in_dct_space_scales_each_frequency():
    """The inner rule acts on frequencies: RMSprop's first step in DCT space is the inverse DCT
    of ``c / (sqrt((1 - b) c^2) + eps)`` with ``c`` the gradient's DCT."""
    g = torch.randn(9, dtype=torch.float64)
    tx = gx.in_projected_space(gx.scale_by_rms(decay=0.9, eps=0.0), gx.dct_projection())
    params = {"x": torch.zeros(9, dtype=torch.float64)}
    u, _ = tx.update({"x": g}, tx.init(params), params)
    c = scipy_fft.dct(g.numpy(), norm="ortho")
    expected = scipy_fft.idct(c / np.sqrt(0.1 * c * c), norm="ortho")
    np.testing.assert_allclose(u["x"].numpy(), expected, rtol=1e-10, atol=1e-12)


def _problem_loss(params, step):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    return ((torch.tanh(x @ params["w"]) @ params["v"] - 1.0) ** 2).mean()


def _assert_adapter_resumes(make, steps, split):
    """gx.Optimizer over ``make()`` ends where the functional run does (1e-12) and resumes from a
    checkpoint at ``split`` bit-identically."""
    torch.manual_seed(0)
    init = {"w": torch.randn(8, 6, dtype=torch.float64) * 0.3, "v": torch.randn(6, dtype=torch.float64)}
    tx = make()
    params, state = dict(init), tx.init(init)
    for step in range(steps):
        updates, state = tx.update(torch.func.grad(_problem_loss)(params, step), state, params)
        params = gx.apply_updates(params, updates)
    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), make()), leaf_copy(init),
                                  _problem_loss, steps, split)
    for k in init:
        torch.testing.assert_close(got[-1][k], params[k], rtol=1e-12, atol=1e-14)


def test_adapter_matches_functional_and_resumes_mid_interval():
    make = lambda: gx.chain(gx.in_projected_space(gx.scale_by_adam(), gx.galore_projection(rank=2, update_every=4)),  # noqa: E731
                            gx.scale_by_lr(0.05))
    _assert_adapter_resumes(make, 9, 6)  # mid refresh interval: the basis and the projected moments travel


def test_refusals_name_the_argument():
    with pytest.raises(ValueError, match="rank"):
        gx.galore_projection(rank=0)
    with pytest.raises(ValueError, match="update_every"):
        gx.galore_projection(rank=2, update_every=0)
    with pytest.raises(ValueError, match="projection must be a gx.Projection"):
        gx.in_projected_space(gx.scale_by_adam(), "galore")


# --- block partition and the flat vector ------------------------------------------------------

_TREE_SHAPES = {"w": (4, 7), "b": (5,), "s": (), "c": (2, 3, 2)}


def _tree(seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in _TREE_SHAPES.items()}


def _run(tx, steps=4, with_params=True):
    params = _tree(100)
    state = tx.init(params)
    outs = []
    for t in range(steps):
        u, state = tx.update(_tree(t), state, params if with_params else None)
        outs.append(u)
    return outs


@pytest.mark.parametrize("batched", [False, True])
def test_elementwise_chain_under_blocks_is_the_chain(batched):
    inner = lambda: gx.chain(gx.scale_by_adam(b1=0.8), gx.add_decayed_weights(0.1))  # noqa: E731
    got = _run(gx.in_projected_space(inner(), gx.block_projection(3, batched=batched)))
    want = _run(inner())
    for a, b in zip(got, want):
        for k in _TREE_SHAPES:
            torch.testing.assert_close(a[k], b[k], rtol=1e-14, atol=1e-15)


def test_trust_ratio_per_block_is_lamb_per_block():
    """The per-tensor trust ratio ||p|| / ||u|| taken per block of 3 (row-major, last block
    shorter), written out with numpy."""
    tx = gx.in_projected_space(gx.scale_by_trust_ratio(), gx.block_projection(3))
    params, g = _tree(100), _tree(0)
    u, _ = tx.update(g, tx.init(params), params)
    for k in _TREE_SHAPES:
        p_flat, g_flat = params[k].numpy().ravel(), g[k].numpy().ravel()
        want = np.empty_like(g_flat)
        for start in range(0, g_flat.size, 3):
            pb, gb = p_flat[start:start + 3], g_flat[start:start + 3]
            want[start:start + 3] = gb * np.linalg.norm(pb) / np.linalg.norm(gb)
        np.testing.assert_allclose(u[k].numpy().ravel(), want, rtol=1e-12, atol=1e-14)


def test_batched_blocks_are_rows_of_a_zero_padded_matrix():
    seen = []

    def row_sums(updates, params):
        seen.append({k: tuple(v.shape) for k, v in updates.items()})
        return {k: v.sum(dim=1, keepdim=True).expand_as(v) for k, v in updates.items()}

    tx = gx.in_projected_space(gx.stateless(row_sums), gx.block_projection(4, batched=True))
    g = _tree(0)
    u, _ = tx.update(g, tx.init(g))
    assert seen[0] == {"w": (7, 4), "b": (2, 4), "s": (1, 4), "c": (3, 4)}
    for k in _TREE_SHAPES:
        flat = g[k].numpy().ravel()
        padded = np.concatenate([flat, np.zeros(-flat.size % 4)]).reshape(-1, 4)
        want = np.repeat(padded.sum(axis=1), 4)[:flat.size]
        np.testing.assert_allclose(u[k].numpy().ravel(), want, rtol=1e-14, atol=1e-15)


def test_flat_projection_makes_per_tensor_rules_global():
    """Under the flat projection a per-tensor rule sees one tensor: the trust ratio becomes
    ||p||_global / ||u||_global over all leaves; a global-norm chain keeps its numbers."""
    params, g = _tree(100), _tree(0)
    tx = gx.in_projected_space(gx.scale_by_trust_ratio(), gx.flat_projection())
    u, _ = tx.update(g, tx.init(params), params)
    p_norm = np.sqrt(sum((v.numpy() ** 2).sum() for v in params.values()))
    g_norm = np.sqrt(sum((v.numpy() ** 2).sum() for v in g.values()))
    for k in _TREE_SHAPES:
        np.testing.assert_allclose(u[k].numpy(), g[k].numpy() * p_norm / g_norm, rtol=1e-12, atol=1e-14)
    inner = lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_adam())  # noqa: E731
    for a, b in zip(_run(gx.in_projected_space(inner(), gx.flat_projection())), _run(inner())):
        for k in _TREE_SHAPES:
            torch.testing.assert_close(a[k], b[k], rtol=1e-13, atol=1e-15)


def test_flat_projection_is_gx_flatten():
    inner = lambda: gx.chain(gx.scale_by_adam(), gx.scale_by_trust_ratio())  # noqa: E731
    for a, b in zip(_run(gx.in_projected_space(inner(), gx.flat_projection())), _run(gx.flatten(inner()))):
        for k in _TREE_SHAPES:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_flat_projection_is_not_leafwise_and_blocks_are():
    inner = gx.scale_by_adam()
    assert gx.is_leafwise(gx.in_projected_space(inner, gx.block_projection(8)))
    assert not gx.is_leafwise(gx.in_projected_space(inner, gx.flat_projection()))


@pytest.mark.parametrize("projection", [gx.block_projection(4), gx.block_projection(4, batched=True),
                                        gx.flat_projection()], ids=["blocks", "batched", "flat"])
def test_blocks_and_flat_under_the_adapter_resume(projection):
    make = lambda: gx.chain(gx.in_projected_space(  # noqa: E731
        gx.chain(gx.scale_by_adam(), gx.scale_by_trust_ratio()), projection), gx.scale_by_lr(0.05))
    _assert_adapter_resumes(make, 6, 3)


def test_block_refusals():
    with pytest.raises(ValueError, match="block_size"):
        gx.block_projection(0)
    with pytest.raises(ValueError, match="batched"):
        gx.block_projection(4, batched="yes")
