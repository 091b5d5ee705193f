"""The packed float32 inference kernels (fastrnn._packed) against the reference.

Every SIMD variant this CPU supports (AVX-512, AVX2+FMA, baseline) is run, with
1 and 2 threads, on shapes that exercise both thread splits (hidden units at
small batch, batch rows at larger batch), partial unit blocks (hidden not a
multiple of the block), batch not divisible by the thread count, batch 1,
seq_len 1, hidden 1 and several projection chunks.
"""
import numpy as np
import pytest

from fastrnn import _packed, reference

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
]
RTOL, ATOL = 1e-4, 1e-5  # float32


@pytest.fixture(params=_packed.supported_isas())
def isa(request):
    previous = _packed.get_isa()
    _packed.set_isa(request.param)
    yield request.param
    _packed.set_isa(previous)


def _problem(cell, T, B, I, H, bias, seed=1):
    G = reference.gate_count(cell)
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weight_ih = rng.uniform(-bound, bound, (G * H, I)).astype(np.float32)
    weight_hh = rng.uniform(-bound, bound, (G * H, H)).astype(np.float32)
    bias_ih = rng.uniform(-bound, bound, G * H).astype(np.float32) if bias else None
    bias_hh = rng.uniform(-bound, bound, G * H).astype(np.float32) if bias else None
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32) if cell == reference.CELL_LSTM else None
    return x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0


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
    problem = _problem(cell, T, B, I, H, bias=True)
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
    problem = _problem(cell, 6, 3, 5, 40, bias=False)
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
    problem = _problem(cell, 20, 6, 12, 70, bias=True)
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
    problem = _problem(cell, 3, 2, 4, 5, bias=True)
    with pytest.raises(ValueError, match="inference"):
        x, wi, wh, bi, bh, h0, c0 = problem
        _packed.forward(cell, x, wi, wh, bi, bh, h0, c0, None, False, True,
                        np.empty((3, 2, 5), np.float32), 0, 1)
    with pytest.raises(TypeError, match="float32"):
        p64 = [None if a is None else a.astype(np.float64) for a in problem]
        _run(_packed, cell, p64, None, False, 1)
    other = _packed.pack_weights(cell, *_problem(cell, 3, 2, 4, 6, bias=True)[1:5])
    with pytest.raises(ValueError, match="packed weights"):
        _run(_packed, cell, problem, None, False, 1, packed=other)
    with pytest.raises(ValueError, match="isa"):
        _packed.set_isa("sse9")
