"""A training batch split into parts (one a thread, each laid out on its own in
the cache, see _packed._run_part): the layout is chosen by the forward, and a
backward (or a forward) on fewer threads than parts still computes every part."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _packed
from fastrnn._kernel_args import CELL_GRU, CELL_LSTM, CELL_RNN_TANH

from _kernel_problems import random_problem
from _subprocess_util import assert_prints_ok

CELLS = {"lstm": CELL_LSTM, "gru": CELL_GRU, "rnn": CELL_RNN_TANH}


def _train(cell, problem, forward_threads, backward_threads):
    x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0 = problem
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    out = np.zeros((T, B, H), np.float32)
    h_n, c_n, cache = _packed.forward(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0,
                                      None, False, True, out, 0, forward_threads)
    parts = cache["parts"]
    grad_out = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    grads = [np.zeros_like(a) for a in (x, weight_ih, weight_hh, bias_ih, bias_hh)]
    dh0, dc0 = _packed.backward(cell, cache, x, weight_ih, weight_hh, None, False, grad_out, 0,
                                None, None, *grads, backward_threads)
    results = [out, h_n, dh0, *grads] + ([c_n, dc0] if c_n is not None else [])
    return parts, results


# Parts of 4 and 5 rows (their rows of x gathered before the transpose), and of
# 8 rows (transposed a step at a time).
@pytest.mark.parametrize("shape", [(20, 9, 6, 24), (3, 16, 40, 50)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell_name", CELLS)
def test_parts_match_one_thread_whatever_the_backward_threads(cell_name, shape):
    cell = CELLS[cell_name]
    problem = random_problem(cell, *shape)
    parts_one, want = _train(cell, problem, 1, 1)
    assert parts_one == 1
    for backward_threads in (1, 2, 3):
        parts, got = _train(cell, problem, 2, backward_threads)
        assert parts == 2
        for actual, expected in zip(got, want):
            # Only the order of the sums over the batch differs: float32 roundings
            # of the largest terms of a sum.
            np.testing.assert_allclose(actual, expected, rtol=1e-5,
                                       atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_backward_rejects_a_cache_with_parts_out_of_range():
    cell = CELL_GRU
    x, wi, wh, bi, bh, h0, c0 = random_problem(cell, 4, 8, 5, 6)
    out = np.zeros((4, 8, 6), np.float32)
    _, _, cache = _packed.forward(cell, x, wi, wh, bi, bh, h0, c0, None, False, True, out, 0, 2)
    cache["parts"] = 9
    grads = [np.zeros_like(a) for a in (x, wi, wh, bi, bh)]
    with pytest.raises(ValueError, match="another shape"):
        _packed.backward(cell, cache, x, wi, wh, None, False, np.ones_like(out), 0, None, None,
                         *grads, 2)


def test_a_smaller_openmp_team_still_trains_every_part(tmp_path):
    # With OMP_THREAD_LIMIT=1 the parallel regions get one thread, which runs
    # both parts of the forward, the BPTT and the products in turn.
    code = (
        "import numpy as np, fastrnn\n"
        "x = np.random.default_rng(0).standard_normal((12, 9, 5)).astype(np.float32)\n"
        "g = np.random.default_rng(1).standard_normal((12, 9, 24)).astype(np.float32)\n"
        "for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN):\n"
        "    a = cls(5, 24, seed=1, n_threads=2)\n"
        "    b = cls(5, 24, seed=1, n_threads=1)\n"
        "    out_a, out_b = a(x)[0], b(x)[0]\n"
        "    assert a._cache['layers'][0]['caches'][0]['parts'] == 2\n"
        "    dx_a, dx_b = a.backward(g)[0], b.backward(g)[0]\n"
        "    close = lambda u, v: np.allclose(u, v, rtol=1e-5, atol=1e-5 * max(1, abs(v).max()))\n"
        "    assert close(out_a, out_b) and close(dx_a, dx_b)\n"
        "    for name in a.grads:\n"
        "        assert close(a.grads[name], b.grads[name]), name\n"
        "print('ok')\n")
    assert_prints_ok(code, tmp_path, OMP_THREAD_LIMIT="1")


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN])
def test_bidirectional_directions_in_parts_beside_each_other(cls):
    # Four threads: the two directions of a layer run at the same time, each on
    # two threads, which split its batch into parts.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 16, 10)).astype(np.float32)
    grad = rng.standard_normal((12, 16, 48)).astype(np.float32)
    kwargs = dict(num_layers=2, bidirectional=True, seed=3)
    parted, single = cls(10, 24, n_threads=4, **kwargs), cls(10, 24, n_threads=1, **kwargs)
    out, want = parted(x)[0], single(x)[0]
    assert [c["parts"] for layer in parted._cache["layers"] for c in layer["caches"]] == [2] * 4
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    dx, dx_want = parted.backward(grad)[0], single.backward(grad)[0]
    np.testing.assert_allclose(dx, dx_want, rtol=1e-5, atol=1e-5)
    for name, expected in single.grads.items():
        np.testing.assert_allclose(parted.grads[name], expected, rtol=1e-5,
                                   atol=1e-5 * max(1.0, np.abs(expected).max()))
