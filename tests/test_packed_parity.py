"""The packed float32 kernels (fastrnn._packed) against the reference: inference,
and the training forward with its backward.

Every SIMD variant this CPU supports (AVX-512, AVX2+FMA, baseline) is run, with
1 and 2 threads, on shapes that exercise both thread splits (hidden units at
small batch, batch rows at larger batch), partial unit blocks (hidden not a
multiple of the block), batch not divisible by the thread count, batch 1,
seq_len 1, hidden 1 and several projection chunks.
"""
import numpy as np
import pytest

from fastrnn import _packed, reference

from _kernel_problems import random_problem

CELLS = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
# (seq_len, batch, input_size, hidden_size)
SHAPES = [
    (5, 3, 4, 2),
    (1, 1, 3, 1),       # seq_len 1, batch 1, hidden 1
    (7, 9, 5, 6),       # batch split with an uneven share
    (30, 17, 8, 33),    # partial block, batch split
    (4, 2, 7, 100),     # hidden split over several blocks at batch 2
    (3, 1, 16, 130),    # batch 1, hidden split, partial last block
    (200, 5, 8, 20),    # several projection chunks
    (3, 10, 6, 300),    # 2 threads: LSTM/GRU W_hh over 1 MB, 5 rows a thread: units split
    (2, 20, 4, 730),    # 2 threads: LSTM W_hh over 8 MB: units split at 10 rows a thread
]
RTOL, ATOL = 1e-4, 1e-5  # float32


@pytest.fixture(params=_packed.supported_isas())
def isa(request):
    previous = _packed.get_isa()
    _packed.set_isa(request.param)
    yield request.param
    _packed.set_isa(previous)


def _run(module, cell, problem, lengths, reverse, n_threads, out_col=2, **kwargs):
    x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0 = problem
    T, B, _ = x.shape
    H = weight_hh.shape[1]
    out = np.full((T, B, H + out_col + 1), np.nan, np.float32)
    h_n, c_n, cache = module.forward(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0,
                                     lengths, reverse, False, out, out_col, n_threads, **kwargs)
    assert cache is None
    return out, h_n, c_n


def _assert_close(name, actual, expected):
    err = np.max(np.abs(actual - expected)) if actual.size else 0.0
    assert np.allclose(actual, expected, rtol=RTOL, atol=ATOL), f"{name}: max abs error {err:.3g}"


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell_name", CELLS)
def test_packed_matches_reference(isa, cell_name, shape, with_lengths, reverse, n_threads):
    cell = CELLS[cell_name]
    T, B, I, H = shape
    problem = random_problem(cell, T, B, I, H, bias=True)
    lengths = None
    if with_lengths:
        lengths = np.random.default_rng(T * B).integers(1, T + 1, B)
        lengths[0] = T
    got = _run(_packed, cell, problem, lengths, reverse, n_threads)
    want = _run(reference, cell, problem, lengths, reverse, 1)
    out, h_n, c_n = got
    H_cols = slice(2, 2 + H)
    # Only this direction's columns are written; the others keep their NaN.
    assert np.isnan(out[:, :, :2]).all() and np.isnan(out[:, :, 2 + H:]).all()
    _assert_close("out", out[:, :, H_cols], want[0][:, :, H_cols])
    _assert_close("h_n", h_n, want[1])
    if c_n is not None:
        _assert_close("c_n", c_n, want[2])
    if lengths is not None:
        inactive = np.arange(T)[:, None] >= lengths[None, :]
        assert (out[:, :, H_cols][inactive] == 0).all(), "outputs past a length must be zero"


@pytest.mark.parametrize("cell_name", CELLS)
def test_no_bias_and_reused_packed_weights(cell_name):
    cell = CELLS[cell_name]
    problem = random_problem(cell, 6, 3, 5, 40, bias=False)
    packed = _packed.pack_weights(cell, *problem[1:5])
    first = _run(_packed, cell, problem, None, False, 2, packed=packed)
    again = _run(_packed, cell, problem, None, False, 2, packed=packed)
    want = _run(reference, cell, problem, None, False, 1)
    for name, a, b, w in zip(("out", "h_n", "c_n"), first, again, want):
        if w is None:
            continue
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: packed weights reused")
        _assert_close(name, a[..., 2:-1] if name == "out" else a, w[..., 2:-1] if name == "out" else w)


@pytest.mark.parametrize("cell_name", CELLS)
def test_isas_agree(cell_name):
    """Each SIMD variant gives the same numbers within float32 rounding."""
    cell = CELLS[cell_name]
    problem = random_problem(cell, 20, 6, 12, 70, bias=True)
    previous = _packed.get_isa()
    results = {}
    try:
        for name in _packed.supported_isas():
            _packed.set_isa(name)
            results[name] = _run(_packed, cell, problem, None, True, 2)
    finally:
        _packed.set_isa(previous)
    base = results["generic"]
    for name, result in results.items():
        for label, a, b in zip(("out", "h_n", "c_n"), result, base):
            if a is not None:
                _assert_close(f"{name} vs generic {label}", a[..., 2:-1] if label == "out" else a,
                              b[..., 2:-1] if label == "out" else b)


def test_packed_rejects_bad_use():
    cell = CELLS["lstm"]
    problem = random_problem(cell, 3, 2, 4, 5, bias=True)
    with pytest.raises(TypeError, match="float32"):
        p64 = [None if a is None else a.astype(np.float64) for a in problem]
        _run(_packed, cell, p64, None, False, 1)
    other = _packed.pack_weights(cell, *random_problem(cell, 3, 2, 4, 6, bias=True)[1:5])
    with pytest.raises(ValueError, match="packed weights"):
        _run(_packed, cell, problem, None, False, 1, packed=other)
    with pytest.raises(ValueError, match="isa"):
        _packed.set_isa("sse9")
    # A training forward on packed weights without the backward's layout.
    x, wi, wh, bi, bh, h0, c0 = problem
    out = np.empty((3, 2, 5), np.float32)
    with pytest.raises(ValueError, match="for_backward"):
        _packed.forward(cell, x, wi, wh, bi, bh, h0, c0, None, False, True, out, 0, 1,
                        packed=_packed.pack_weights(cell, wi, wh, bi, bh))
    _packed.forward(cell, x, wi, wh, bi, bh, h0, c0, None, False, True, out, 0, 1,
                    packed=_packed.pack_weights(cell, wi, wh, bi, bh, for_backward=True))
    # Shapes that would make the packing read past the weights or biases.
    for args in ((wi[:-1], wh, bi, bh), (wi, wh[:-1], bi, bh), (wi, wh, bi[:-1], bh),
                 (wi, wh, bi, None), (wi[0], wh, bi, bh)):
        with pytest.raises(ValueError, match="weights must be"):
            _packed.pack_weights(cell, *args)


def _train(module, cell, problem, lengths, reverse, n_threads, seed=2):
    """Training forward + backward with random output and state gradients."""
    x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0 = problem
    T, B, I = x.shape
    H = weight_hh.shape[1]
    dtype = x.dtype
    out = np.full((T, B, H + 3), np.nan, dtype)
    h_n, c_n, cache = module.forward(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0,
                                     lengths, reverse, True, out, 2, n_threads)
    rng = np.random.default_rng(seed)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_h_n = rng.standard_normal((B, H)).astype(dtype)
    grad_c_n = rng.standard_normal((B, H)).astype(dtype) if c0 is not None else None
    grads = {"grad_x": np.zeros_like(x), "grad_weight_ih": np.zeros_like(weight_ih),
             "grad_weight_hh": np.zeros_like(weight_hh),
             "grad_bias_ih": None if bias_ih is None else np.zeros_like(bias_ih),
             "grad_bias_hh": None if bias_hh is None else np.zeros_like(bias_hh)}
    dh0, dc0 = module.backward(cell, cache, x, weight_ih, weight_hh, lengths, reverse, grad_out,
                               2, grad_h_n, grad_c_n, *grads.values(), n_threads)
    result = {"out": out[:, :, 2:2 + H], "h_n": h_n, "c_n": c_n, "grad_h0": dh0, "grad_c0": dc0}
    result.update(grads)
    return result


# (9, 3, 20, 150): hidden units split across 2 threads in the backward too (3
# groups of 64 units, the last partial); (7, 9, 5, 40): the batch split in 4 + 5
# rows on 2 threads, forward and backward; (3, 10, 6, 300): both split by units
# at 5 rows a thread (LSTM/GRU W_hh over 1 MB).
TRAIN_SHAPES = [(5, 3, 4, 2), (1, 1, 3, 1), (7, 9, 5, 6), (7, 9, 5, 40), (30, 17, 8, 16),
                (4, 2, 7, 100), (6, 5, 70, 33), (3, 1, 130, 65), (9, 3, 20, 150),
                (3, 10, 6, 300)]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell_name", CELLS)
def test_packed_training_matches_reference(isa, cell_name, shape, bias, with_lengths, reverse,
                                           n_threads):
    """Outputs and every gradient of the packed training path, against the
    reference run in float64 on the same (float32-rounded) inputs."""
    cell = CELLS[cell_name]
    T, B, I, H = shape
    problem = random_problem(cell, T, B, I, H, bias=bias)
    lengths = None
    if with_lengths:
        lengths = np.random.default_rng(T * B).integers(1, T + 1, B)
    got = _train(_packed, cell, problem, lengths, reverse, n_threads)
    _assert_training_close(got, _train_reference(cell, problem, lengths, reverse))


def _train_reference(cell, problem, lengths, reverse):
    problem64 = [None if a is None else a.astype(np.float64) for a in problem]
    return _train(reference, cell, problem64, lengths, reverse, 1)


def _assert_training_close(got, want):
    for name, expected in want.items():
        if expected is None:
            assert got[name] is None, name
            continue
        actual = got[name]
        assert actual.dtype == np.float32, name
        # float32 kernels against a float64 truth: a few float32 ulps of the
        # values, and of the largest value for sums over steps.
        err = np.max(np.abs(actual - expected)) if actual.size else 0.0
        assert np.allclose(actual, expected, rtol=1e-4, atol=1e-4), \
            f"{name}: max abs error {err:.3g}"


@pytest.fixture(params=["flags", "counter"])
def barrier(request):
    """The per-step barrier of _barrier.h in its two kinds: a flag per thread
    (teams of up to 8) or an arrival counter (larger teams), here on two."""
    previous = _packed._set_barrier_flag_threads(8 if request.param == "flags" else 0)
    yield request.param
    _packed._set_barrier_flag_threads(previous)


# Hidden units split in the forward and the backward (a barrier per step; B=1
# over 5 blocks of LSTM units), and the batch split (one barrier, at the end).
@pytest.mark.parametrize("shape", [(9, 3, 20, 150), (40, 1, 8, 70), (7, 9, 5, 40)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell_name", CELLS)
def test_barriers_on_two_threads(barrier, cell_name, shape):
    cell = CELLS[cell_name]
    problem = random_problem(cell, *shape, bias=True)
    got = _run(_packed, cell, problem, None, False, 2)
    want = _run(reference, cell, problem, None, False, 1)
    for name, actual, expected in zip(("out", "h_n", "c_n"), got, want):
        if expected is not None:
            _assert_close(name, actual[..., 2:-1] if name == "out" else actual,
                          expected[..., 2:-1] if name == "out" else expected)
    _assert_training_close(_train(_packed, cell, problem, None, False, 2),
                           _train_reference(cell, problem, None, False))


def test_packed_backward_consumes_its_cache():
    cell = CELLS["gru"]
    problem = random_problem(cell, 4, 3, 5, 6, bias=True)
    x, wi, wh, bi, bh, h0, c0 = problem
    out = np.empty((4, 3, 6), np.float32)
    _, _, cache = _packed.forward(cell, x, wi, wh, bi, bh, h0, c0, None, False, True, out, 0, 1)
    grads = [np.zeros_like(a) for a in (x, wi, wh, bi, bh)]
    _packed.backward(cell, cache, x, wi, wh, None, False, np.ones_like(out), 0, None, None,
                     *grads, 1)
    with pytest.raises(RuntimeError, match="once"):
        _packed.backward(cell, cache, x, wi, wh, None, False, np.ones_like(out), 0, None, None,
                         *grads, 1)


def test_flush_to_zero_is_local_to_the_kernels():
    """The kernels flush denormals on their own threads (a state decaying through
    denormals would otherwise be slow on some CPUs) and leave the caller's
    floating-point control word as it was."""
    previous = _packed.get_flush_denormals()
    _packed.set_flush_denormals(True)
    try:
        _check_flush_to_zero()
    finally:
        _packed.set_flush_denormals(previous)


def _check_flush_to_zero():
    before = _packed._fp_control_word()
    cell = CELLS["lstm"]
    x, wi, wh, bi, bh, h0, c0 = random_problem(cell, 50, 1, 4, 16, bias=True)
    wi[:] = 0
    wh[:] = 0
    bi[:] = 0
    bh[:] = 0
    bi[:16], bi[16:32], bi[48:] = -30, 4.6, 30   # input gate shut, forget ~0.99, output open
    c0[:] = 1e-36                                  # decays into the denormal range
    out = np.empty((50, 1, 16), np.float32)
    _, c_n, _ = _packed.forward(cell, x, wi, wh, bi, bh, h0, c0, None, False, False, out, 0, 2)
    assert _packed._fp_control_word() == before
    assert np.all((c_n == 0) | (np.abs(c_n) >= np.finfo(np.float32).tiny))
    # NumPy, on the caller's thread, still produces denormals.
    assert np.float32(1e-38) * np.float32(0.01) != 0
    want = _run(reference, cell, (x, wi, wh, bi, bh, h0, c0), None, False, 1, out_col=0)
    _assert_close("out", out, want[0][..., :16])


@pytest.mark.parametrize("name", ["grad_weight_hh", "grad_bias_ih", "grad_bias_hh"])
@pytest.mark.parametrize("flaw", ["read-only", "strided"])
def test_backward_rejects_gradients_it_cannot_write(name, flaw):
    cell = CELLS["lstm"]
    x, wi, wh, bi, bh, h0, c0 = random_problem(cell, 4, 3, 5, 6, bias=True)
    out = np.empty((4, 3, 6), np.float32)
    _, _, cache = _packed.forward(cell, x, wi, wh, bi, bh, h0, c0, None, False, True, out, 0, 1)
    grads = {"grad_x": np.zeros_like(x), "grad_weight_ih": np.zeros_like(wi),
             "grad_weight_hh": np.zeros_like(wh), "grad_bias_ih": np.zeros_like(bi),
             "grad_bias_hh": np.zeros_like(bh)}
    if flaw == "read-only":
        grads[name].flags.writeable = False
    else:
        # The right shape and dtype, every other float of a larger array.
        grads[name] = np.repeat(grads[name], 2, axis=-1)[..., ::2]
    with pytest.raises(ValueError, match=f"{name} must be a C-contiguous, writable array"):
        _packed.backward(cell, cache, x, wi, wh, None, False, np.ones_like(out), 0, None, None,
                         *grads.values(), 1)
