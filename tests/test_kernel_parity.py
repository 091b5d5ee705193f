"""Parity of the compiled kernels (fastrnn._recurrent) with the NumPy oracle
(fastrnn.reference).

Both modules implement the contract documented in ``fastrnn.reference``:

    forward(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
            reverse, training, out, out_col, n_threads) -> (h_n, c_n, cache)
    backward(cell, cache, x, weight_ih, weight_hh, lengths, reverse, grad_out,
             out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih, grad_weight_hh,
             grad_bias_ih, grad_bias_hh, n_threads) -> (grad_h0, grad_c0)

The kernel additionally consumes its cache in backward and validates its
arguments.  Every output and gradient of the kernel is compared with the
reference, over cells x dtypes x direction x bias x lengths x threads x shapes
chosen to hit the kernel's edge cases (batch / seq_len / hidden of 1, hidden !=
input, batches that do not divide evenly across threads, batches large enough
for the OpenMP batch split, GEMMs large enough for the row split, inference
chunking, long sequences).

Long or exhaustive cases are marked ``slow`` and only run when asked for
with -m (see pyproject.toml).
"""

import re
import zlib

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastrnn import _recurrent as K
from fastrnn import reference as R


CELLS = [R.CELL_RNN_TANH, R.CELL_RNN_RELU, R.CELL_LSTM, R.CELL_GRU]
CELL_NAMES = {R.CELL_RNN_TANH: "tanh", R.CELL_RNN_RELU: "relu",
              R.CELL_LSTM: "lstm", R.CELL_GRU: "gru"}
DTYPES = [np.float32, np.float64]
DTYPE_NAMES = {np.float32: "f32", np.float64: "f64"}

# out / grad_out are wider than H: the layer's columns are out_col:out_col+H,
# with other columns on both sides that must stay untouched / be ignored.
OUT_COL = 2
OUT_EXTRA_RIGHT = 3

# Tolerances kernel vs reference (both in the same dtype).  The two compute the
# same formulas with different summation orders (fused GEMMs over all steps vs
# per-step products) and their own implementations of the activations, so they
# differ by rounding only.  An element passes when
#     |kernel - reference| <= atol_eff + rtol * |reference|,
#     atol_eff = max(atol, atol_norm * eps * max|reference|)
# (max over the whole tensor).  atol_norm is a normwise term: the weight and
# bias gradients are sums over all T * B (step, row) pairs, and rounding in such
# a sum is proportional to the size of the sum (~ max|gradient|), not to the
# individual element, which can be ~0 after cancellation.
TOL = {np.float64: dict(rtol=1e-9, atol=1e-12),
       np.float32: dict(rtol=1e-4, atol=1e-5)}


def long_tol(dtype):
    """Kernel vs reference for long sequences / big batches (T * B in the
    thousands): the default rtol, plus a normwise atol of 64 eps * max|ref|.

    Measured on seq_len 500, batch 9 (4500 summed terms; weight gradients reach
    |g| ~ 1e2), all cells, both directions, with and without lengths, taking
    float64 runs of the reference as the truth, in units of eps * max|truth|:
    out, h_n, c_n, grad_x, grad_h0, grad_c0 err <= 2.2 (kernel) / 2.0
    (reference); grad_weight_* <= 3 / 9 (the kernel's one GEMM over all steps
    is the more accurate); grad_bias_* <= 17 / 5 (the kernel sums the 4500 rows
    sequentially, the reference pairwise per step).  The kernel-reference
    difference was <= 17 eps * max.  64 leaves a 3.8x margin; it is ~1e-3 absolute
    for float32 gradients of size 1e2, still 2-3 orders of magnitude below what
    a dropped step or row would change.  Without this term float32 fails
    (|err| up to 2.6e-4 on gradients of size 1e2), float64 passes by a margin of
    only 2-3x (|err| up to 4.3e-13).
    """
    return dict(TOL[dtype], atol_norm=64)


# The kernel's answers with n_threads=1 and n_threads=2 (and in inference vs
# training) may only differ by rounding: with the batch split across threads
# the recurrent GEMMs have fewer rows, and BLAS may then round differently
# (float32 outputs differ by 1-2 ulp on some shapes); that is carried through
# the recurrence and summed into the weight gradients.  Measured differences:
# <= 4.6 eps * max|tensor| (float32 and float64, all shapes here including
# seq_len 500).  The normwise term 16 eps * max covers that with a 3.5x margin;
# rtol is 1e-12 for float64 and 1e-5 (~80 ulp) for float32.
SAME_KERNEL_TOL = {np.float64: dict(rtol=1e-12, atol=1e-14, atol_norm=16),
                   np.float32: dict(rtol=1e-5, atol=1e-6, atol_norm=16)}

SHAPES = [  # (seq_len T, batch B, input I, hidden H)
    (1, 1, 3, 1),     # everything minimal: seq_len 1, batch 1, hidden 1
    (5, 1, 4, 3),     # batch 1 over several steps, hidden != input
    (1, 9, 5, 4),     # seq_len 1 with the batch split (9 = 4 + 5 rows)
    (6, 3, 2, 5),     # batch < 4 * threads: never split; hidden > input
    (3, 8, 2, 1),     # hidden 1 with the batch split (B = 8 = 4 * 2 threads)
    (7, 9, 5, 6),     # batch 9: uneven split across 2 threads
    (12, 17, 8, 16),  # batch 17: uneven split; projection GEMM rows 204 split
    (4, 8, 3, 33),    # G*H >= 33 >= 16 * 2: weight-grad GEMMs split by rows for all cells
]

LONG_SHAPE = (500, 9, 8, 16)   # seq_len 500, batch split 4 + 5


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    # The kernels run BLAS from inside their own OpenMP threads and expect the
    # caller to keep BLAS single-threaded (src/_recurrent.pyx docstring); the
    # layers do the same.  It also keeps these tests light on a shared machine.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------
# Problem construction
# ---------------------------------------------------------------------------

def _seed(*key):
    return zlib.crc32(repr(key).encode())


def make_lengths(rng, T, B):
    """Random lengths in 1..T with (when B >= 2) at least one T and one 1, at
    random positions so they land in different thread blocks across cases."""
    if B == 1:
        return np.array([(T + 1) // 2], dtype=np.int64)
    lengths = rng.integers(1, T + 1, B).astype(np.int64)
    i, j = rng.choice(B, size=2, replace=False)
    lengths[i] = T
    lengths[j] = 1
    return lengths


def make_problem(cell, dtype, shape, bias, use_lengths, seed):
    """PyTorch-like initialisation: weights and biases ~ U(-1/sqrt(H), 1/sqrt(H));
    inputs, initial states and upstream gradients ~ N(0, 1)."""
    T, B, I, H = shape
    G = R.gate_count(cell)
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    lstm = cell == R.CELL_LSTM
    p = {
        "x": rng.standard_normal((T, B, I)),
        "weight_ih": rng.uniform(-k, k, (G * H, I)),
        "weight_hh": rng.uniform(-k, k, (G * H, H)),
        "bias_ih": rng.uniform(-k, k, G * H) if bias else None,
        "bias_hh": rng.uniform(-k, k, G * H) if bias else None,
        "h0": rng.standard_normal((B, H)),
        "c0": rng.standard_normal((B, H)) if lstm else None,
        "grad_h_n": rng.standard_normal((B, H)),
        "grad_c_n": rng.standard_normal((B, H)) if lstm else None,
    }
    p = {n: None if a is None else np.ascontiguousarray(a, dtype=dtype) for n, a in p.items()}
    lengths = make_lengths(rng, T, B) if use_lengths else None
    mask = R.active_mask(lengths, T, B)
    D_out = OUT_COL + H + OUT_EXTRA_RIGHT
    cols = slice(OUT_COL, OUT_COL + H)
    # Upstream gradient of `out`: NaN wherever the contract says it is ignored
    # (other columns, inactive positions), so any use of it shows up.
    grad_out = np.full((T, B, D_out), np.nan, dtype=dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    grad_out[:, :, cols] = np.where(mask[:, :, None], g, np.nan)
    p["grad_out"] = grad_out
    p["lengths"] = lengths
    p["cell"] = cell
    p["shape"] = shape
    return p


def run(mod, p, reverse, n_threads, training=True, backward=True, grads=None,
        grad_out=None, grad_h_n="default", grad_c_n="default"):
    """forward (+ backward) of one module on problem p.

    Returns a dict with out, h_n, c_n and (if backward) grad_x, grad_weight_ih,
    grad_weight_hh, grad_bias_ih, grad_bias_hh, grad_h0, grad_c0.  `grads`
    gives initial gradient arrays (copied); default zeros.
    """
    cell = p["cell"]
    T, B, I, H = p["shape"]
    dtype = p["x"].dtype
    out = np.full((T, B, OUT_COL + H + OUT_EXTRA_RIGHT), np.nan, dtype=dtype)
    h_n, c_n, cache = mod.forward(cell, p["x"], p["weight_ih"], p["weight_hh"],
                                  p["bias_ih"], p["bias_hh"], p["h0"], p["c0"],
                                  p["lengths"], reverse, training, out, OUT_COL, n_threads)
    res = {"out": out, "h_n": h_n, "c_n": c_n, "cache": cache}
    if not backward:
        return res
    names = ("grad_x", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")
    sources = ("x", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
    if grads is None:
        g = {n: None if p[s] is None else np.zeros_like(p[s]) for n, s in zip(names, sources)}
    else:
        g = {n: None if grads[n] is None else grads[n].copy() for n in names}
    grad_h0, grad_c0 = mod.backward(
        cell, cache, p["x"], p["weight_ih"], p["weight_hh"], p["lengths"], reverse,
        p["grad_out"] if grad_out is None else grad_out, OUT_COL,
        p["grad_h_n"] if isinstance(grad_h_n, str) else grad_h_n,
        p["grad_c_n"] if isinstance(grad_c_n, str) else grad_c_n,
        g["grad_x"], g["grad_weight_ih"], g["grad_weight_hh"], g["grad_bias_ih"],
        g["grad_bias_hh"], n_threads)
    res.update(g)
    res["grad_h0"] = grad_h0
    res["grad_c0"] = grad_c0
    return res


FORWARD_OUTPUTS = ("out", "h_n", "c_n")
GRADIENTS = ("grad_x", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh",
             "grad_h0", "grad_c0")


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

def assert_close(name, actual, expected, rtol, atol, atol_norm=0, what="kernel",
                 against="reference"):
    """|actual - expected| <= max(atol, atol_norm * eps * max|expected|) +
    rtol * |expected| elementwise, NaN where (and only where) expected is NaN.
    The message names the tensor and gives its max absolute and relative
    errors and the worst element."""
    if expected is None or actual is None:
        assert actual is None and expected is None, (
            f"{name}: {what} gave {type(actual).__name__}, {against} gave "
            f"{type(expected).__name__}")
        return
    assert actual.shape == expected.shape, (
        f"{name}: shape {actual.shape} from {what}, {expected.shape} from {against}")
    assert actual.dtype == expected.dtype, (
        f"{name}: dtype {actual.dtype} from {what}, {expected.dtype} from {against}")
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        bad = np.argwhere(nan_a != nan_e)
        raise AssertionError(
            f"{name}: NaN pattern differs at {len(bad)} element(s), first at "
            f"{tuple(bad[0])}: {what}={a[tuple(bad[0])]!r}, {against}={e[tuple(bad[0])]!r}")
    err = np.where(nan_e, 0.0, np.abs(a - e))
    if err.size == 0:
        return
    abs_e = np.abs(np.where(nan_e, 0.0, e))
    atol = max(atol, atol_norm * np.finfo(expected.dtype).eps * abs_e.max())
    bound = atol + rtol * abs_e
    ok = err <= bound  # False for inf / NaN errors too
    if not ok.all():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ok, 0.0, np.where(np.isnan(err), np.inf, err / bound))
        idx = np.unravel_index(np.argmax(ratio), ratio.shape)
        # Relative error only where it means something (|expected| > atol).
        big = abs_e > atol
        rel = "%.3e" % (err[big] / abs_e[big]).max() if big.any() else "n/a"
        raise AssertionError(
            f"{name}: {what} vs {against}: max abs err {err.max():.3e}, max rel err "
            f"{rel} (rtol={rtol:g}, atol={atol:g}); "
            f"worst element {tuple(int(i) for i in idx)}: {what}={a[idx]!r}, "
            f"{against}={e[idx]!r}, err/tol={ratio[idx]:.3g}, "
            f"{int((~ok).sum())} of {ok.size} elements out of tolerance")


def assert_all_close(names, got, want, tol, **kw):
    errors = []
    for n in names:
        try:
            assert_close(n, got[n], want[n], **tol, **kw)
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


def check_out_columns(out, p):
    """The kernel writes exactly columns out_col:out_col+H: finite there,
    exactly 0 at inactive positions, NaN (the prefill) everywhere else."""
    T, B, I, H = p["shape"]
    cols = slice(OUT_COL, OUT_COL + H)
    mine = out[:, :, cols]
    assert np.isnan(out[:, :, :OUT_COL]).all(), "out: columns left of out_col were written"
    assert np.isnan(out[:, :, OUT_COL + H:]).all(), "out: columns right of out_col+H were written"
    assert np.isfinite(mine).all(), "out: some of columns out_col:out_col+H not written (NaN left)"
    inactive = ~R.active_mask(p["lengths"], T, B)
    assert (mine[inactive] == 0).all(), "out: nonzero output at an inactive position"


def check_inputs_unchanged(p, before):
    for n, a in before.items():
        assert np.array_equal(p[n], a, equal_nan=True), f"kernel modified its input {n}"


def snapshot_inputs(p):
    return {n: p[n].copy() for n in ("x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0",
                                     "c0", "grad_h_n", "grad_c_n", "grad_out", "lengths")
            if p[n] is not None}


def case_id(shape):
    return "T%dB%dI%dH%d" % shape


def check_parity(cell, dtype, shape, reverse, bias, use_lengths, n_threads, tol=None):
    p = make_problem(cell, dtype, shape, bias, use_lengths,
                     _seed(cell, DTYPE_NAMES[dtype], shape, reverse, bias, use_lengths))
    before = snapshot_inputs(p)
    got = run(K, p, reverse, n_threads)
    check_inputs_unchanged(p, before)
    want = run(R, p, reverse, 1)
    check_out_columns(got["out"], p)
    assert_all_close(FORWARD_OUTPUTS + GRADIENTS, got, want, tol or TOL[dtype])


# ---------------------------------------------------------------------------
# Kernel vs reference: every output and every gradient
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=case_id)
@pytest.mark.parametrize("n_threads", [1, 2], ids=["nt1", "nt2"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_parity(cell, dtype, reverse, bias, use_lengths, n_threads, shape):
    check_parity(cell, dtype, shape, reverse, bias, use_lengths, n_threads)


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", [R.CELL_LSTM, R.CELL_GRU], ids=CELL_NAMES.get)
def test_parity_long_sequence(cell, dtype, reverse, use_lengths):
    check_parity(cell, dtype, LONG_SHAPE, reverse, True, use_lengths, 2, long_tol(dtype))


@pytest.mark.slow
@pytest.mark.parametrize("n_threads", [1, 2], ids=["nt1", "nt2"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_parity_long_sequence_exhaustive(cell, dtype, reverse, bias, use_lengths, n_threads):
    check_parity(cell, dtype, LONG_SHAPE, reverse, bias, use_lengths, n_threads,
                 long_tol(dtype))


SLOW_SHAPES = [
    (50, 33, 20, 40),    # odd batch, hidden > input
    (20, 64, 32, 128),   # larger GEMMs
    (30, 2, 7, 3),       # tiny batch, several steps
    (9, 130, 3, 5),      # batch > PROJECTION_ROWS (inference chunk of 1 step)
]


@pytest.mark.slow
@pytest.mark.parametrize("shape", SLOW_SHAPES, ids=case_id)
@pytest.mark.parametrize("n_threads", [1, 2, 3], ids=["nt1", "nt2", "nt3"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_parity_exhaustive(cell, dtype, reverse, bias, use_lengths, n_threads, shape):
    check_parity(cell, dtype, shape, reverse, bias, use_lengths, n_threads, long_tol(dtype))


# ---------------------------------------------------------------------------
# Contract details
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_backward_accumulates(cell, dtype, reverse, use_lengths):
    """Gradient arrays that start non-zero are accumulated into (+=)."""
    shape = (7, 9, 5, 6)
    p = make_problem(cell, dtype, shape, True, use_lengths, _seed("acc", cell, dtype, reverse))
    rng = np.random.default_rng(1)
    init = {n: rng.standard_normal(a.shape).astype(dtype) for n, a in
            (("grad_x", p["x"]), ("grad_weight_ih", p["weight_ih"]),
             ("grad_weight_hh", p["weight_hh"]), ("grad_bias_ih", p["bias_ih"]),
             ("grad_bias_hh", p["bias_hh"]))}
    fresh = run(K, p, reverse, 2)
    acc = run(K, p, reverse, 2, grads=init)
    # One extra rounding of (init + fresh) per element.
    eps = np.finfo(dtype).eps
    for n in init:
        expected = init[n] + fresh[n]
        assert_close(n, acc[n], expected, rtol=8 * eps, atol=8 * eps * np.abs(init[n]).max(),
                     what="kernel(grads=init)", against="init + kernel(grads=0)")
    # ... and the returned state gradients do not depend on the initial values.
    for n in ("grad_h0", "grad_c0"):
        assert_close(n, acc[n], fresh[n], rtol=0, atol=0, what="kernel(grads=init)",
                     against="kernel(grads=0)")
    # The reference accumulates the same way.
    want = run(R, p, reverse, 1, grads=init)
    assert_all_close(GRADIENTS, acc, want, TOL[dtype])


@pytest.mark.parametrize("junk", [np.nan, np.inf, 1e30], ids=["nan", "inf", "huge"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_grad_out_junk_ignored(cell, dtype, reverse, junk):
    """grad_out values in other columns and at inactive positions are ignored:
    the result is bit-identical to having zeros there."""
    shape = (7, 9, 5, 6)
    T, B, I, H = shape
    p = make_problem(cell, dtype, shape, True, True, _seed("junk", cell, dtype, reverse))
    cols = slice(OUT_COL, OUT_COL + H)
    clean = np.zeros_like(p["grad_out"])
    active = R.active_mask(p["lengths"], T, B)
    clean[:, :, cols] = np.where(active[:, :, None], p["grad_out"][:, :, cols], 0)
    junky = np.full_like(p["grad_out"], junk)
    junky[:, :, cols] = np.where(active[:, :, None], clean[:, :, cols], -junk)
    a = run(K, p, reverse, 2, grad_out=clean)
    b = run(K, p, reverse, 2, grad_out=junky)
    for n in GRADIENTS:
        assert_close(n, b[n], a[n], rtol=0, atol=0, what="kernel(junk grad_out)",
                     against="kernel(clean grad_out)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_grad_h_n_none_means_zeros(cell, dtype):
    shape = (6, 9, 4, 5)
    p = make_problem(cell, dtype, shape, True, True, _seed("none", cell, dtype))
    zeros = np.zeros_like(p["h0"])
    a = run(K, p, False, 2, grad_h_n=None, grad_c_n=None)
    b = run(K, p, False, 2, grad_h_n=zeros,
            grad_c_n=zeros if cell == R.CELL_LSTM else None)
    for n in GRADIENTS:
        assert_close(n, a[n], b[n], rtol=0, atol=0, what="kernel(grad_h_n=None)",
                     against="kernel(grad_h_n=0)")
    want = run(R, p, False, 1, grad_h_n=None, grad_c_n=None)
    assert_all_close(GRADIENTS, a, want, TOL[dtype])


INFERENCE_SHAPES = [
    (1, 1, 3, 1),
    (40, 9, 5, 6),      # inference projects 128 // 9 = 14 steps per chunk: 3 chunks
    (300, 1, 2, 3),     # batch 1: chunks of 128 steps, last one partial
    (5, 130, 3, 4),     # batch > 128: one step per chunk, batch split
]


@pytest.mark.parametrize("shape", INFERENCE_SHAPES, ids=case_id)
@pytest.mark.parametrize("n_threads", [1, 2], ids=["nt1", "nt2"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_inference_matches_training(cell, dtype, reverse, use_lengths, n_threads, shape):
    """training=False gives the same out / h_n / c_n as training=True (within
    rounding: the input projection is done in chunks of steps instead of one
    GEMM, which may change BLAS's summation order) and returns no cache."""
    p = make_problem(cell, dtype, shape, True, use_lengths,
                     _seed("inf", cell, dtype, shape, reverse, use_lengths))
    before = snapshot_inputs(p)
    inf = run(K, p, reverse, n_threads, training=False, backward=False)
    check_inputs_unchanged(p, before)
    assert inf["cache"] is None, "kernel returned a cache with training=False"
    check_out_columns(inf["out"], p)
    train = run(K, p, reverse, n_threads, training=True, backward=False)
    assert_all_close(FORWARD_OUTPUTS, inf, train, SAME_KERNEL_TOL[dtype],
                     what="kernel(training=False)", against="kernel(training=True)")


def test_inference_long_sequence_matches_reference():
    """One long inference run against the reference directly."""
    for cell in (R.CELL_LSTM, R.CELL_GRU):
        p = make_problem(cell, np.float64, LONG_SHAPE, True, True, _seed("inflong", cell))
        got = run(K, p, True, 2, training=False, backward=False)
        want = run(R, p, True, 1, training=False, backward=False)
        assert_all_close(FORWARD_OUTPUTS, got, want, TOL[np.float64])


THREAD_SHAPES = [
    (7, 9, 5, 6),
    (12, 17, 8, 16),
    (4, 8, 3, 33),
    (40, 9, 5, 6),
]


@pytest.mark.parametrize("shape", THREAD_SHAPES, ids=case_id)
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_thread_count_agreement(cell, dtype, reverse, use_lengths, shape):
    """n_threads=1 and n_threads=2 agree to within rounding, in training
    (outputs and all gradients) and in inference."""
    p = make_problem(cell, dtype, shape, True, use_lengths,
                     _seed("nt", cell, dtype, shape, reverse, use_lengths))
    one = run(K, p, reverse, 1)
    two = run(K, p, reverse, 2)
    assert_all_close(FORWARD_OUTPUTS + GRADIENTS, two, one, SAME_KERNEL_TOL[dtype],
                     what="kernel(n_threads=2)", against="kernel(n_threads=1)")
    one = run(K, p, reverse, 1, training=False, backward=False)
    two = run(K, p, reverse, 2, training=False, backward=False)
    assert_all_close(FORWARD_OUTPUTS, two, one, SAME_KERNEL_TOL[dtype],
                     what="kernel(n_threads=2, inference)",
                     against="kernel(n_threads=1, inference)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("cell", [R.CELL_LSTM, R.CELL_GRU], ids=CELL_NAMES.get)
def test_thread_count_agreement_long_sequence(cell, dtype):
    p = make_problem(cell, dtype, LONG_SHAPE, True, True, _seed("ntlong", cell, dtype))
    one = run(K, p, False, 1)
    two = run(K, p, False, 2)
    assert_all_close(FORWARD_OUTPUTS + GRADIENTS, two, one, SAME_KERNEL_TOL[dtype],
                     what="kernel(n_threads=2)", against="kernel(n_threads=1)")


# ---------------------------------------------------------------------------
# Cache consumption and argument validation (kernel only)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_second_backward_raises(cell):
    p = make_problem(cell, np.float64, (4, 3, 2, 3), True, True, _seed("twice", cell))
    res = run(K, p, False, 1)
    grads = {n: np.zeros_like(res[n]) for n in
             ("grad_x", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")}
    with pytest.raises(RuntimeError):
        K.backward(cell, res["cache"], p["x"], p["weight_ih"], p["weight_hh"], p["lengths"],
                   False, p["grad_out"], OUT_COL, p["grad_h_n"], p["grad_c_n"],
                   grads["grad_x"], grads["grad_weight_ih"], grads["grad_weight_hh"],
                   grads["grad_bias_ih"], grads["grad_bias_hh"], 1)
    for n, a in grads.items():
        assert not a.any(), f"{n} was modified by the rejected second backward"


@pytest.mark.parametrize("cell", CELLS, ids=CELL_NAMES.get)
def test_backward_without_training_cache_raises(cell):
    p = make_problem(cell, np.float64, (4, 3, 2, 3), True, False, _seed("nocache", cell))
    res = run(K, p, False, 1, training=False, backward=False)
    with pytest.raises(RuntimeError):
        run(K, p, False, 1, training=False)  # backward(cache=None)
    assert res["cache"] is None


# Validation cases: a valid LSTM float64 problem with one argument replaced.
VT, VB, VI, VH = 4, 3, 2, 3
VG = 4


def _valid_forward_args(dtype=np.float64):
    p = make_problem(R.CELL_LSTM, dtype, (VT, VB, VI, VH), True, True, _seed("valid"))
    out = np.zeros((VT, VB, OUT_COL + VH + OUT_EXTRA_RIGHT), dtype)
    return dict(cell=R.CELL_LSTM, x=p["x"], weight_ih=p["weight_ih"],
                weight_hh=p["weight_hh"], bias_ih=p["bias_ih"], bias_hh=p["bias_hh"],
                h0=p["h0"], c0=p["c0"], lengths=p["lengths"], reverse=False, training=True,
                out=out, out_col=OUT_COL, n_threads=1), p


FORWARD_ARGS = ("cell", "x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0",
                "lengths", "reverse", "training", "out", "out_col", "n_threads")
BACKWARD_ARGS = ("cell", "cache", "x", "weight_ih", "weight_hh", "lengths", "reverse",
                 "grad_out", "out_col", "grad_h_n", "grad_c_n", "grad_x", "grad_weight_ih",
                 "grad_weight_hh", "grad_bias_ih", "grad_bias_hh", "n_threads")

f64, f32 = np.float64, np.float32

# (id, argument name expected in the message, exception, replacements)
FORWARD_BAD = [
    ("x_int", "x", TypeError, dict(x=np.zeros((VT, VB, VI), np.int64))),
    ("x_2d", "x", ValueError, dict(x=np.zeros((VT, VB), f64))),
    ("weight_ih_shape", "weight_ih", ValueError, dict(weight_ih=np.zeros((VG * VH, VI + 1), f64))),
    ("weight_ih_rows", "weight_ih", ValueError, dict(weight_ih=np.zeros((VG * VH - 1, VI), f64))),
    ("weight_hh_shape", "weight_hh", ValueError, dict(weight_hh=np.zeros((VG * VH + 1, VH), f64))),
    ("weight_ih_dtype", "weight_ih", TypeError, dict(weight_ih=np.zeros((VG * VH, VI), f32))),
    ("weight_hh_dtype", "weight_hh", TypeError, dict(weight_hh=np.zeros((VG * VH, VH), f32))),
    ("bias_ih_shape", "bias_ih", ValueError, dict(bias_ih=np.zeros(VG * VH + 1, f64))),
    ("bias_hh_dtype", "bias_hh", TypeError, dict(bias_hh=np.zeros(VG * VH, f32))),
    ("h0_shape", "h0", ValueError, dict(h0=np.zeros((VB + 1, VH), f64))),
    ("h0_dtype", "h0", TypeError, dict(h0=np.zeros((VB, VH), f32))),
    ("c0_shape", "c0", ValueError, dict(c0=np.zeros((VB, VH + 1), f64))),
    ("c0_dtype", "c0", TypeError, dict(c0=np.zeros((VB, VH), f32))),
    ("lengths_zero", "lengths", ValueError, dict(lengths=np.array([VT, 0, 2], np.int64))),
    ("lengths_negative", "lengths", ValueError, dict(lengths=np.array([VT, -1, 2], np.int64))),
    ("lengths_gt_T", "lengths", ValueError, dict(lengths=np.array([VT, VT + 1, 2], np.int64))),
    ("lengths_short", "lengths", ValueError, dict(lengths=np.array([VT, 1], np.int64))),
    ("lengths_long", "lengths", ValueError, dict(lengths=np.array([VT, 1, 2, 3], np.int64))),
    ("n_threads_0", "n_threads", ValueError, dict(n_threads=0)),
    ("n_threads_negative", "n_threads", ValueError, dict(n_threads=-2)),
    ("out_too_narrow", "out", ValueError,
     dict(out=np.zeros((VT, VB, OUT_COL + VH - 1), f64))),
    ("out_col_past_end", "out", ValueError, dict(out_col=OUT_COL + OUT_EXTRA_RIGHT + 1)),
    ("out_col_negative", "out", ValueError, dict(out_col=-1)),
    ("out_wrong_T", "out", ValueError, dict(out=np.zeros((VT + 1, VB, 10), f64))),
    ("out_wrong_B", "out", ValueError, dict(out=np.zeros((VT, VB - 1, 10), f64))),
    ("out_dtype", "out", TypeError, dict(out=np.zeros((VT, VB, 10), f32))),
    # Beyond shape / dtype: the reference rejects these with ValueError.
    ("bias_hh_missing", ("bias_ih", "bias_hh"), ValueError, dict(bias_hh=None)),
    ("bias_ih_missing", ("bias_ih", "bias_hh"), ValueError, dict(bias_ih=None)),
    ("c0_missing_for_lstm", "c0", ValueError, dict(c0=None)),
    # The contract asks for C-contiguous arrays.
    ("x_not_contiguous", "x", ValueError,
     dict(x=np.asfortranarray(np.zeros((VT, VB, VI), f64)))),
]


def _assert_raises_naming(exc_type, names, fn):
    """fn() raises exc_type, and its message names (one of) the argument(s)."""
    names = (names,) if isinstance(names, str) else names
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert any(re.search(r"(?<![A-Za-z0-9_])%s(?![A-Za-z0-9_])" % re.escape(n), msg)
               for n in names), (
        f"{exc_type.__name__} message does not name the argument {' or '.join(names)}: {msg!r}")


@pytest.mark.parametrize("name,exc,repl", [c[1:] for c in FORWARD_BAD],
                         ids=[c[0] for c in FORWARD_BAD])
def test_forward_rejects_bad_input(name, exc, repl):
    """Bad arguments raise TypeError (dtype) / ValueError (anything else) with
    the argument's name in the message."""
    args, _ = _valid_forward_args()
    K.forward(*[args[a] for a in FORWARD_ARGS])   # the unmodified call is fine
    args.update(repl)
    _assert_raises_naming(exc, name, lambda: K.forward(*[args[a] for a in FORWARD_ARGS]))


def _valid_backward_args():
    fargs, p = _valid_forward_args()
    _, _, cache = K.forward(*[fargs[a] for a in FORWARD_ARGS])
    return dict(cell=R.CELL_LSTM, cache=cache, x=p["x"], weight_ih=p["weight_ih"],
                weight_hh=p["weight_hh"], lengths=p["lengths"], reverse=False,
                grad_out=np.nan_to_num(p["grad_out"]), out_col=OUT_COL,
                grad_h_n=p["grad_h_n"], grad_c_n=p["grad_c_n"],
                grad_x=np.zeros_like(p["x"]), grad_weight_ih=np.zeros_like(p["weight_ih"]),
                grad_weight_hh=np.zeros_like(p["weight_hh"]),
                grad_bias_ih=np.zeros_like(p["bias_ih"]),
                grad_bias_hh=np.zeros_like(p["bias_hh"]), n_threads=1)


BACKWARD_BAD = [
    ("x_dtype", "x", TypeError, dict(x=np.zeros((VT, VB, VI), f32))),
    ("weight_ih_shape", "weight_ih", ValueError, dict(weight_ih=np.zeros((VG * VH, VI + 1), f64))),
    ("weight_hh_dtype", "weight_hh", TypeError, dict(weight_hh=np.zeros((VG * VH, VH), f32))),
    ("grad_out_too_narrow", "grad_out", ValueError,
     dict(grad_out=np.zeros((VT, VB, OUT_COL + VH - 1), f64))),
    ("grad_out_col_past_end", "grad_out", ValueError, dict(out_col=OUT_COL + OUT_EXTRA_RIGHT + 1)),
    ("grad_out_dtype", "grad_out", TypeError, dict(grad_out=np.zeros((VT, VB, 10), f32))),
    ("grad_h_n_shape", "grad_h_n", ValueError, dict(grad_h_n=np.zeros((VB, VH + 1), f64))),
    ("grad_c_n_shape", "grad_c_n", ValueError, dict(grad_c_n=np.zeros((VB + 1, VH), f64))),
    ("grad_x_shape", "grad_x", ValueError, dict(grad_x=np.zeros((VT, VB, VI + 1), f64))),
    ("grad_x_dtype", "grad_x", TypeError, dict(grad_x=np.zeros((VT, VB, VI), f32))),
    ("grad_weight_ih_shape", "grad_weight_ih", ValueError,
     dict(grad_weight_ih=np.zeros((VG * VH + 1, VI), f64))),
    ("grad_weight_hh_dtype", "grad_weight_hh", TypeError,
     dict(grad_weight_hh=np.zeros((VG * VH, VH), f32))),
    ("grad_bias_ih_shape", "grad_bias_ih", ValueError,
     dict(grad_bias_ih=np.zeros(VG * VH - 1, f64))),
    ("grad_bias_hh_dtype", "grad_bias_hh", TypeError, dict(grad_bias_hh=np.zeros(VG * VH, f32))),
    ("lengths_zero", "lengths", ValueError, dict(lengths=np.array([VT, 0, 2], np.int64))),
    ("lengths_gt_T", "lengths", ValueError, dict(lengths=np.array([VT, VT + 1, 2], np.int64))),
    ("lengths_wrong_size", "lengths", ValueError, dict(lengths=np.array([VT, 1], np.int64))),
    ("n_threads_0", "n_threads", ValueError, dict(n_threads=0)),
]


@pytest.mark.parametrize("name,exc,repl", [c[1:] for c in BACKWARD_BAD],
                         ids=[c[0] for c in BACKWARD_BAD])
def test_backward_rejects_bad_input(name, exc, repl):
    args = _valid_backward_args()
    args.update(repl)
    _assert_raises_naming(exc, name, lambda: K.backward(*[args[a] for a in BACKWARD_ARGS]))
