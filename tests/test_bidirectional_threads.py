"""Bidirectional float32 layers on several threads: the packed kernels run the
two directions at the same time (_packed.forward_bidirectional, and the BPTTs
in backward_bidirectional), or in turn when a direction's W_hh fills a core's
cache at small batch. Either way the
results are those of one thread and of the NumPy reference, in inference and
in training (with lengths and recurrent dropout), whatever team OpenMP gives."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _packed

from _subprocess_util import assert_prints_ok

CELLS = ["LSTM", "GRU", "RNN"]
# (seq_len, batch, input_size, hidden_size, n_threads): together on 2 threads at
# batch 1 and 4 (a team of one each), batch 9 on 3 threads (the reverse
# direction's team of 2 splits the batch), batch 2 on 3 threads (a team of 2
# splits the hidden units), in turn (LSTM W_hh of 1 MB, batch 1), and in turn
# at batch 4 (LSTM W_hh over 8 MB; each direction splits its units). Each is
# enough work for two threads (MIN_PARALLEL_WORK) in every cell.
SHAPES = [(8, 1, 3, 70, 2), (8, 4, 6, 40, 2), (3, 9, 5, 40, 3), (4, 2, 7, 130, 3),
          (3, 1, 8, 256, 2), (2, 4, 3, 730, 2)]
RTOL, ATOL = 1e-4, 1e-5   # float32 against the float64-accurate reference


def _layers(mode, I, H, n_threads, **kwargs):
    cls = getattr(fastrnn, mode)
    fast = cls(I, H, num_layers=2, bidirectional=True, seed=3, n_threads=n_threads, **kwargs)
    one = cls(I, H, num_layers=2, bidirectional=True, seed=3, n_threads=1, **kwargs)
    ref = cls(I, H, num_layers=2, bidirectional=True, seed=3, impl="reference", **kwargs)
    return fast, one, ref


def _states(out):
    _, state = out
    return list(state) if isinstance(state, tuple) else [state]


def _assert_close(actual, expected, rtol, atol, name):
    assert np.allclose(actual, expected, rtol=rtol, atol=atol), \
        f"{name}: max abs error {np.abs(actual - expected).max():.3g}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", CELLS)
def test_inference_matches_one_thread_and_reference(mode, shape):
    T, B, I, H, n_threads = shape
    fast, one, ref = _layers(mode, I, H, n_threads)
    for layer in (fast, one, ref):
        layer.eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    # Initial states and lengths (the reverse direction starts at each length).
    h0 = rng.standard_normal((4, B, H)).astype(np.float32)
    hx = (h0, rng.standard_normal((4, B, H)).astype(np.float32)) if mode == "LSTM" else h0
    lengths = rng.integers(1, T + 1, size=B)
    results = [layer(x, hx, lengths=lengths) for layer in (fast, one, ref)]
    _assert_close(results[0][0], results[1][0], 1e-6, 1e-7, "out vs 1 thread")
    _assert_close(results[0][0], results[2][0], RTOL, ATOL, "out vs reference")
    for got, single, want in zip(*(_states(r) for r in results)):
        _assert_close(got, single, 1e-6, 1e-7, "state vs 1 thread")
        _assert_close(got, want, RTOL, ATOL, "state vs reference")


@pytest.mark.parametrize("shape", SHAPES[:4] + SHAPES[5:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", CELLS)
def test_training_with_lengths_and_recurrent_dropout_matches_one_thread(mode, shape):
    # The same seed draws the same dropout masks, in the same order, whether the
    # directions run together or not.
    T, B, I, H, n_threads = shape
    fast, one, ref = _layers(mode, I, H, n_threads, recurrent_dropout=0.3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B)
    grad_out = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    grads = []
    for layer in (fast, one):
        layer.train()
        layer.zero_grad()
        out, _ = layer(x, lengths=lengths)
        dx, _ = layer.backward(grad_out)
        grads.append((out, dx, {k: g.copy() for k, g in layer.grads.items()}))
    (out, dx, g), (out1, dx1, g1) = grads
    _assert_close(out, out1, 1e-6, 1e-7, "out")
    _assert_close(dx, dx1, 1e-5, 1e-6, "dx")
    for name in g:
        _assert_close(g[name], g1[name], 1e-5, 1e-6, name)


@pytest.mark.parametrize("mode", CELLS)
def test_training_matches_reference(mode):
    T, B, I, H, n_threads = 4, 3, 5, 24, 2
    fast, _, ref = _layers(mode, I, H, n_threads)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    grad_out = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    results = []
    for layer in (fast, ref):
        layer.train()
        layer.zero_grad()
        out, _ = layer(x)
        dx, _ = layer.backward(grad_out)
        results.append((out, dx, layer.grads))
    (out, dx, g), (out_ref, dx_ref, g_ref) = results
    _assert_close(out, out_ref, RTOL, ATOL, "out")
    _assert_close(dx, dx_ref, RTOL, ATOL, "dx")
    for name in g:
        _assert_close(g[name], g_ref[name], RTOL, ATOL, name)


def _direction_args(layer, direction, B):
    names = layer._names(0, direction)
    weight_ih, weight_hh, bias_ih, bias_hh = (layer._params[n] for n in names)
    h0 = np.zeros((B, layer.hidden_size), np.float32)
    return dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh,
                h0=h0, c0=h0.copy(), out_col=direction * layer.hidden_size)


def test_forward_bidirectional_rejects_shared_buffers():
    layer = fastrnn.LSTM(3, 8, bidirectional=True, seed=0)
    x = np.zeros((2, 1, 3), np.float32)
    out = np.zeros((2, 1, 16), np.float32)
    first, second = _direction_args(layer, 0, 1), _direction_args(layer, 1, 1)
    second["out_col"] = 4
    with pytest.raises(ValueError, match="separate columns of out"):
        _packed.forward_bidirectional(layer._cell, x, [first, second], None, False, out, 2)
    second["out_col"] = 8
    shared = {}
    first["workspace"] = second["workspace"] = shared
    with pytest.raises(ValueError, match="separate workspaces"):
        _packed.forward_bidirectional(layer._cell, x, [first, second], None, False, out, 2)
    with pytest.raises(ValueError, match="forward and the reverse direction"):
        _packed.forward_bidirectional(layer._cell, x, [first], None, False, out, 2)


def test_a_smaller_openmp_team_still_computes_both_directions(tmp_path):
    # With OMP_THREAD_LIMIT=1 the region gets one thread, which runs both
    # directions (_run_pair_thread); the result is that of n_threads=1.
    code = (
        "import numpy as np, fastrnn\n"
        "x = np.random.default_rng(0).standard_normal((6, 4, 5)).astype(np.float32)\n"
        "a = fastrnn.GRU(5, 40, bidirectional=True, seed=1, n_threads=2).eval()\n"
        "b = fastrnn.GRU(5, 40, bidirectional=True, seed=1, n_threads=1).eval()\n"
        "assert np.allclose(a(x)[0], b(x)[0], rtol=1e-6, atol=1e-7)\n"
        "assert np.abs(a(x)[0][:, :, 40:]).max() > 0\n"
        "print('ok')\n")
    assert_prints_ok(code, tmp_path, OMP_THREAD_LIMIT="1")
