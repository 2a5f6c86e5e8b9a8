"""in_projected_space with GaLore, DCT and FFT projections, against the rules written here
with numpy/scipy."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

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


def test_adapter_matches_functional_and_resumes_mid_interval():
    torch.manual_seed(0)
    init = {"w": torch.randn(8, 6, dtype=torch.float64) * 0.3, "v": torch.randn(6, dtype=torch.float64)}
    make = lambda: gx.chain(gx.in_projected_space(gx.scale_by_adam(), gx.galore_projection(rank=2, update_every=4)),  # noqa: E731
                            gx.scale_by_lr(0.05))
    tx = make()
    params, state = dict(init), tx.init(init)
    for step in range(9):
        grads = torch.func.grad(_problem_loss)(params, step)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)

    leaves = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = gx.Optimizer(list(leaves.values()), make())
    for step in range(9):
        if step == 6:  # mid refresh interval: the basis and the projected moments travel
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            buffer.seek(0)
            opt = gx.Optimizer(list(leaves.values()), make())
            opt.load_state_dict(torch.load(buffer, weights_only=True))
        opt.zero_grad()
        _problem_loss(leaves, step).backward()
        opt.step()
    for k in init:
        torch.testing.assert_close(leaves[k].detach(), params[k], rtol=1e-12, atol=1e-14)


def test_refusals_name_the_argument():
    with pytest.raises(ValueError, match="rank"):
        gx.galore_projection(rank=0)
    with pytest.raises(ValueError, match="update_every"):
        gx.galore_projection(rank=2, update_every=0)
    with pytest.raises(ValueError, match="projection must be a gx.Projection"):
        gx.in_projected_space(gx.scale_by_adam(), "galore")
