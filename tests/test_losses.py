"""fastrnn.losses: values and gradients against torch (with ignore_index, weights,
reductions) and central finite differences; masks, stability, errors."""
import numpy as np
import pytest

from fastrnn import nn
from fastrnn.losses import (CrossEntropyLoss, MSELoss, cross_entropy, log_softmax, mse_loss,
                            softmax)

from _gradcheck_util import assert_close_grad


def _torch():
    return pytest.importorskip("torch")


def torch_ce(logits, targets, ignore_index=-100, reduction="mean", weight=None, grad=None):
    torch = _torch()
    C = logits.shape[-1]
    t_logits = torch.tensor(logits.reshape(-1, C), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(
        t_logits, torch.from_numpy(targets.reshape(-1).astype(np.int64)),
        weight=None if weight is None else torch.from_numpy(weight),
        ignore_index=ignore_index, reduction=reduction)
    if reduction == "none":
        loss.backward(torch.from_numpy(grad.reshape(-1)))
        value = loss.detach().numpy().reshape(targets.shape)
    else:
        loss.backward()
        value = loss.item()
    return value, t_logits.grad.numpy().reshape(logits.shape)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cross_entropy_matches_torch(reduction, weighted, dtype):
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((4, 5, 6))).astype(dtype)
    targets = rng.integers(0, 6, (4, 5))
    targets[0, :2] = -100
    targets[3, 4] = -100
    weight = rng.uniform(0.5, 2, 6) if weighted else None
    upstream = rng.standard_normal((4, 5)) if reduction == "none" else None
    ce = CrossEntropyLoss(reduction=reduction, weight=weight)
    loss = ce(logits, targets)
    grad = ce.backward(upstream if reduction == "none" else 1.0)
    t_loss, t_grad = torch_ce(logits.astype(np.float64), targets, reduction=reduction,
                              weight=weight, grad=upstream)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss, t_loss, **tol)
    np.testing.assert_allclose(grad, t_grad, **tol)
    assert grad.dtype == np.dtype(dtype) and grad.shape == logits.shape
    assert np.all(grad[0, :2] == 0) and np.all(grad[3, 4] == 0)


def test_cross_entropy_custom_ignore_index_and_mask_equivalence():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 3, 4))
    targets = rng.integers(0, 4, (6, 3))
    lengths = np.array([6, 2, 4])
    mask = nn.sequence_mask(lengths, 6)
    padded = np.where(mask, targets, 7)
    loss_ignore, grad_ignore = cross_entropy(logits, padded, ignore_index=7)
    t_loss, t_grad = torch_ce(logits, padded, ignore_index=7)
    np.testing.assert_allclose(loss_ignore, t_loss, rtol=1e-13)
    np.testing.assert_allclose(grad_ignore, t_grad, rtol=1e-12, atol=1e-15)
    loss_mask, grad_mask = cross_entropy(logits, targets, mask=mask)
    assert abs(loss_mask - loss_ignore) < 1e-14
    np.testing.assert_allclose(grad_mask, grad_ignore, rtol=1e-14)
    # a broadcastable mask (per time step) works as well
    step_mask = np.array([1, 1, 0, 1, 0, 1], dtype=bool)[:, None]
    loss_b, _ = cross_entropy(logits, targets, mask=step_mask)
    loss_full, _ = cross_entropy(logits, targets, mask=np.broadcast_to(step_mask, (6, 3)))
    assert loss_b == loss_full


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_finite_differences(reduction):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, (3, 4))
    targets[1, 1] = -100
    weight = rng.uniform(0.5, 2, 5)
    mask = rng.random((3, 4)) < 0.8
    ce = CrossEntropyLoss(reduction=reduction, weight=weight)
    ce(logits, targets, mask)
    grad = ce.backward()
    assert_close_grad("logits", lambda: ce(logits, targets, mask), logits, grad, rng, 60)


def test_cross_entropy_is_stable_for_huge_logits_and_ignores_nan_padding():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1e4, 0.0], [np.nan, np.inf, 0.0]])
    targets = np.array([0, 2, -100])
    loss, grad = cross_entropy(logits, targets, reduction="sum")
    assert np.isfinite(loss) and abs(loss - 1e4) < 1e-9
    assert np.all(np.isfinite(grad)) and np.all(grad[2] == 0)
    np.testing.assert_allclose(grad[0], [0, 0, 0], atol=1e-300)
    np.testing.assert_allclose(grad[1], [0, 1, -1])
    t_loss, _ = torch_ce(np.array([[1000.0, 0.0, -1000.0], [0.0, 1e4, 0.0]]),
                         np.array([0, 2]), reduction="sum")
    assert abs(loss - t_loss) < 1e-9


def test_cross_entropy_all_ignored_mean_is_nan_like_torch():
    torch = _torch()
    logits = np.zeros((2, 3))
    targets = np.array([-100, -100])
    loss, grad = cross_entropy(logits, targets)
    t = torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.tensor([-100, -100]))
    assert np.isnan(loss) and np.isnan(t.item())
    assert np.all(grad == 0)
    loss_sum, _ = cross_entropy(logits, targets, reduction="sum")
    assert loss_sum == 0.0


def test_cross_entropy_errors():
    ce = CrossEntropyLoss()
    with pytest.raises(IndexError):
        ce(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError):
        ce(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        ce(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(TypeError):
        ce(np.zeros((2, 3), dtype=int), np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(RuntimeError):
        CrossEntropyLoss().backward()
    ce(np.zeros((2, 3)), np.array([0, -100]))      # ignored out-of-range is fine


def test_log_softmax_softmax():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4, 7)) * 50
    np.testing.assert_allclose(softmax(z).sum(-1), 1, rtol=1e-14)
    torch = _torch()
    np.testing.assert_allclose(log_softmax(z), torch.log_softmax(torch.from_numpy(z), -1),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch(reduction):
    torch = _torch()
    rng = np.random.default_rng(4)
    pred = rng.standard_normal((3, 4, 2))
    target = rng.standard_normal((3, 4, 2))
    upstream = rng.standard_normal(pred.shape) if reduction == "none" else 1.0
    mse = MSELoss(reduction)
    loss = mse(pred, target)
    grad = mse.backward(upstream)
    tp = torch.tensor(pred, requires_grad=True)
    t_loss = torch.nn.functional.mse_loss(tp, torch.from_numpy(target), reduction=reduction)
    if reduction == "none":
        t_loss.backward(torch.from_numpy(upstream))
        np.testing.assert_allclose(loss, t_loss.detach().numpy(), rtol=1e-14)
    else:
        t_loss.backward()
        assert abs(loss - t_loss.item()) < 1e-13 * max(1, abs(loss))
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_mse_mask_and_finite_differences():
    rng = np.random.default_rng(5)
    pred = rng.standard_normal((5, 3, 2))
    target = rng.standard_normal((5, 3, 2))
    mask = nn.sequence_mask(np.array([5, 2, 3]), 5)[:, :, None]
    loss, grad = mse_loss(pred, target, mask=mask)
    full = np.broadcast_to(mask, pred.shape)
    expected = np.mean((pred[full] - target[full]) ** 2)
    assert abs(loss - expected) < 1e-14
    assert np.all(grad[~full] == 0)
    mse = MSELoss()
    mse(pred, target, mask)
    assert_close_grad("pred", lambda: mse(pred, target, mask), pred, mse.backward(), rng, 30)
    with pytest.raises(ValueError, match="same shape"):
        mse(pred, target[:, :, :1])
    p32 = pred.astype(np.float32)
    _, g32 = mse_loss(p32, target.astype(np.float32))
    assert g32.dtype == np.float32
