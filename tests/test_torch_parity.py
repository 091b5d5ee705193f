"""fastrnn layers against torch.nn.RNN / LSTM / GRU.

Weights are copied from a torch module with ``load_state_dict``; outputs, final
states and every gradient (x, initial states, all parameters) of a random
linear loss on ``out`` and ``h_n`` (and ``c_n``) must agree. Variable lengths
are compared with ``pack_padded_sequence(..., enforce_sorted=False)``.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn  # noqa: E402

# Small shapes: hidden != input, batch > 1, lengths include 1 and seq_len and
# are not sorted.
T, B, I, H = 5, 4, 3, 4
MIXED_LENGTHS = np.array([3, 5, 1, 4], dtype=np.int64)

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=1e-4, atol=1e-5)}


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread():
    """Light on the shared machine, and torch's own results deterministic."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cell_mode(cell):
    return {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell]


def make_pair(cell, num_layers, bidirectional, batch_first, bias, dtype, impl="cython",
              dropout=0.0, seed=0, input_size=I, hidden_size=H):
    """A torch module and a fastrnn layer with the torch module's weights."""
    torch.manual_seed(seed)
    mode = cell_mode(cell)
    kwargs = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
                  bidirectional=bidirectional, dropout=dropout)
    if mode == "RNN":
        kwargs["nonlinearity"] = cell.split("_")[1]
    tm = getattr(torch.nn, mode)(input_size, hidden_size, **kwargs)
    tm = tm.double() if dtype == "float64" else tm.float()
    fm = getattr(fastrnn, mode)(input_size, hidden_size, dtype=dtype, impl=impl, **kwargs)
    fm.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    return tm, fm


def make_data(cell, num_layers, bidirectional, batch_first, dtype, rng, batched=True,
              seq_len=T, batch=B, input_size=I, hidden_size=H):
    D = 2 if bidirectional else 1
    if batched:
        x_shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
        out_shape = x_shape[:2] + (D * hidden_size,)
        h_shape = (num_layers * D, batch, hidden_size)
    else:
        x_shape, out_shape = (seq_len, input_size), (seq_len, D * hidden_size)
        h_shape = (num_layers * D, hidden_size)
    d = {
        "x": rng.standard_normal(x_shape),
        "h0": 0.5 * rng.standard_normal(h_shape),
        "c0": 0.5 * rng.standard_normal(h_shape) if cell == "lstm" else None,
        # coefficients of the linear loss
        "g_out": rng.standard_normal(out_shape),
        "g_h": rng.standard_normal(h_shape),
        "g_c": rng.standard_normal(h_shape) if cell == "lstm" else None,
    }
    return {k: (None if v is None else v.astype(dtype)) for k, v in d.items()}


def run_torch(tm, d, lengths, given_states, batch_first):
    """Forward + backward of sum(out*g_out) + sum(h_n*g_h) (+ sum(c_n*g_c))."""
    is_lstm = isinstance(tm, torch.nn.LSTM)
    xt = torch.tensor(d["x"], requires_grad=True)
    h0 = d["h0"] if given_states else np.zeros_like(d["h0"])
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = None
    if is_lstm:
        c0 = d["c0"] if given_states else np.zeros_like(d["c0"])
        c0t = torch.tensor(c0, requires_grad=True)
    tm.zero_grad()
    inp = xt
    if lengths is not None:
        inp = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=batch_first,
                                   enforce_sorted=False)
    out, hn = tm(inp, (h0t, c0t) if is_lstm else h0t)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first,
                                     total_length=d["x"].shape[1 if batch_first else 0])
    h_n, c_n = hn if is_lstm else (hn, None)
    loss = (out * torch.tensor(d["g_out"])).sum() + (h_n * torch.tensor(d["g_h"])).sum()
    if is_lstm:
        loss = loss + (c_n * torch.tensor(d["g_c"])).sum()
    loss.backward()
    res = {"out": out, "h_n": h_n, "c_n": c_n, "dx": xt.grad, "dh0": h0t.grad,
           "dc0": None if c0t is None else c0t.grad}
    res = {k: (None if v is None else v.detach().numpy()) for k, v in res.items()}
    res["grads"] = {n: p.grad.detach().numpy() for n, p in tm.named_parameters()}
    return res


def run_fastrnn(fm, d, lengths, given_states):
    is_lstm = isinstance(fm, fastrnn.LSTM)
    hx = None
    if given_states:
        hx = (d["h0"], d["c0"]) if is_lstm else d["h0"]
    fm.zero_grad()
    out, hn = fm(d["x"], hx, lengths)
    h_n, c_n = hn if is_lstm else (hn, None)
    grad_hn = (d["g_h"], d["g_c"]) if is_lstm else d["g_h"]
    dx, dhx = fm.backward(d["g_out"], grad_hn)
    dh0, dc0 = dhx if is_lstm else (dhx, None)
    return {"out": out, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0,
            "grads": {n: g.copy() for n, g in fm.grads.items()}}


def assert_matches_torch(fr, tr, dtype, context):
    tol = TOL[dtype]
    for key in ("out", "h_n", "c_n", "dx", "dh0", "dc0"):
        if tr[key] is None:
            assert fr[key] is None, f"{key} should be None ({context})"
            continue
        assert fr[key].dtype == np.dtype(dtype), f"{key} dtype ({context})"
        assert fr[key].shape == tr[key].shape, f"{key} shape ({context})"
        np.testing.assert_allclose(fr[key], tr[key], **tol, err_msg=f"{key} ({context})")
    assert list(fr["grads"]) == list(tr["grads"]), f"parameter names ({context})"
    zero = [name for name, g in tr["grads"].items() if not np.any(g)]
    # A zero gradient would make the comparison vacuous; only a ReLU layer
    # can legitimately be dead for these random inputs.
    if "relu" in context:
        assert len(zero) < len(tr["grads"]) / 2, f"degenerate case, zero grads {zero}"
    else:
        assert not zero, f"degenerate case: torch grads of {zero} are zero ({context})"
    for name, g in tr["grads"].items():
        np.testing.assert_allclose(fr["grads"][name], g, **tol,
                                   err_msg=f"grad {name} ({context})")


# --------------------------------------------------------------------------
# The full grid: cell x num_layers x bidirectional x batch_first x bias x
# lengths x initial states x dtype (512 small cases, ~10 ms each).
# --------------------------------------------------------------------------

GRID = list(itertools.product(CELLS, [1, 2], [False, True], [False, True], [True, False],
                              [None, "mixed"], [False, True], ["float64", "float32"]))


def grid_id(c):
    cell, L, bidir, bf, bias, lengths, given, dtype = c
    return "-".join([cell, f"L{L}", "bi" if bidir else "uni", "bf" if bf else "tf",
                     "bias" if bias else "nobias", "len" if lengths else "full",
                     "hx" if given else "nohx", dtype])


@pytest.mark.parametrize("cell,num_layers,bidirectional,batch_first,bias,lengths,given,dtype",
                         GRID, ids=[grid_id(c) for c in GRID])
def test_matches_torch(cell, num_layers, bidirectional, batch_first, bias, lengths, given,
                       dtype):
    case = (cell, num_layers, bidirectional, batch_first, bias, lengths, given, dtype)
    seed = GRID.index(case)
    tm, fm = make_pair(cell, num_layers, bidirectional, batch_first, bias, dtype, seed=seed)
    d = make_data(cell, num_layers, bidirectional, batch_first, dtype,
                  np.random.default_rng(seed))
    lens = MIXED_LENGTHS if lengths == "mixed" else None
    fr = run_fastrnn(fm, d, lens, given)
    tr = run_torch(tm, d, lens, given, batch_first)
    assert_matches_torch(fr, tr, dtype, grid_id(case))
    if lens is not None:
        out_tf = fr["out"].transpose(1, 0, 2) if batch_first else fr["out"]
        for b, n in enumerate(lens):
            assert np.all(out_tf[n:, b] == 0), "output past a sequence's length must be 0"


# impl="reference": the same comparison on a deterministic subsample of the grid
# (every cell, both dtypes, and each other option both ways at least once).
REFERENCE_GRID = [c for i, c in enumerate(GRID) if i % 7 == 0]


@pytest.mark.parametrize("cell,num_layers,bidirectional,batch_first,bias,lengths,given,dtype",
                         REFERENCE_GRID, ids=[grid_id(c) for c in REFERENCE_GRID])
def test_reference_impl_matches_torch(cell, num_layers, bidirectional, batch_first, bias,
                                      lengths, given, dtype):
    tm, fm = make_pair(cell, num_layers, bidirectional, batch_first, bias, dtype,
                       impl="reference", seed=3)
    d = make_data(cell, num_layers, bidirectional, batch_first, dtype,
                  np.random.default_rng(99))
    lens = MIXED_LENGTHS if lengths == "mixed" else None
    fr = run_fastrnn(fm, d, lens, given)
    tr = run_torch(tm, d, lens, given, batch_first)
    assert_matches_torch(fr, tr, dtype, "reference " + grid_id(
        (cell, num_layers, bidirectional, batch_first, bias, lengths, given, dtype)))


def test_reference_grid_covers_every_option():
    for position, values in enumerate([CELLS, [1, 2], [False, True], [False, True],
                                       [True, False], [None, "mixed"], [False, True],
                                       ["float64", "float32"]]):
        assert {c[position] for c in REFERENCE_GRID} == set(values), position
    assert {(c[0], c[-1]) for c in REFERENCE_GRID} == set(itertools.product(
        CELLS, ["float64", "float32"]))


# --------------------------------------------------------------------------
# Other input forms.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["cython", "reference"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("given", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_matches_torch(cell, given, num_layers, bidirectional, dtype, impl):
    tm, fm = make_pair(cell, num_layers, bidirectional, False, True, dtype, impl=impl, seed=5)
    d = make_data(cell, num_layers, bidirectional, False, dtype, np.random.default_rng(5),
                  batched=False)
    fr = run_fastrnn(fm, d, None, given)
    tr = run_torch(tm, d, None, given, False)
    assert fr["out"].shape == (T, (2 if bidirectional else 1) * H)
    assert fr["h_n"].shape == (num_layers * (2 if bidirectional else 1), H)
    assert fr["dx"].shape == (T, I)
    assert_matches_torch(fr, tr, dtype, f"unbatched {cell}")


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_all_shorter_than_seq_len(cell, batch_first):
    """max(lengths) < seq_len: the padded tail is zero for every sequence."""
    lengths = np.array([2, 1, 3, 2])
    tm, fm = make_pair(cell, 2, True, batch_first, True, "float64", seed=11)
    d = make_data(cell, 2, True, batch_first, "float64", np.random.default_rng(11))
    fr = run_fastrnn(fm, d, lengths, True)
    tr = run_torch(tm, d, lengths, True, batch_first)
    assert_matches_torch(fr, tr, "float64", f"short lengths {cell}")
    out_tf = fr["out"].transpose(1, 0, 2) if batch_first else fr["out"]
    assert np.all(out_tf[3:] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_float64_input_to_float32_layer_matches_torch(cell):
    """Inputs of another float dtype are converted to the layer's dtype."""
    tm, fm = make_pair(cell, 1, True, False, True, "float32", seed=2)
    d = make_data(cell, 1, True, False, "float32", np.random.default_rng(2))
    d64 = {k: (None if v is None else v.astype(np.float64)) for k, v in d.items()}
    fr = run_fastrnn(fm, d64, MIXED_LENGTHS, True)
    tr = run_torch(tm, d, MIXED_LENGTHS, True, False)
    assert_matches_torch(fr, tr, "float32", f"float64 input {cell}")


# --------------------------------------------------------------------------
# Parameters: names, shapes, default initialisation, seeds, dropout in eval.
# --------------------------------------------------------------------------

STRUCTURES = list(itertools.product(CELLS, [1, 3], [False, True], [True, False]))


@pytest.mark.parametrize("cell,num_layers,bidirectional,bias", STRUCTURES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_parameters_match_torch_layout_and_bounds(cell, num_layers, bidirectional,
                                                          bias, dtype):
    mode = cell_mode(cell)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    if mode == "RNN":
        kwargs["nonlinearity"] = cell.split("_")[1]
    hidden = 7
    tm = getattr(torch.nn, mode)(5, hidden, **kwargs)
    fm = getattr(fastrnn, mode)(5, hidden, dtype=dtype, seed=0, **kwargs)
    tsd, fsd = tm.state_dict(), fm.state_dict()
    assert list(fsd) == list(tsd), "names and order of torch's state_dict"
    assert [n for n, _ in fm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    bound = 1.0 / np.sqrt(hidden)
    all_values = []
    for name, value in fsd.items():
        assert value.shape == tuple(tsd[name].shape), name
        assert value.dtype == np.dtype(dtype), name
        assert np.all(np.abs(value) <= bound), f"{name} outside +-1/sqrt(hidden)"
        assert fm.grads[name].shape == value.shape and not fm.grads[name].any()
        np.testing.assert_array_equal(getattr(fm, name), value)
        all_values.append(value.ravel())
    values = np.concatenate(all_values)
    # uniform over the whole interval, not e.g. all zeros or one sign
    assert values.min() < -0.8 * bound and values.max() > 0.8 * bound
    assert abs(values.mean()) < 4 * bound / np.sqrt(3 * values.size)  # 4 sigma
    assert len(np.unique(values)) > 0.99 * values.size


@pytest.mark.parametrize("cell", CELLS)
def test_same_seed_same_weights(cell):
    mode = cell_mode(cell)
    kwargs = {"nonlinearity": cell.split("_")[1]} if mode == "RNN" else {}
    make = lambda seed: getattr(fastrnn, mode)(3, 4, num_layers=2, bidirectional=True,  # noqa: E731
                                               seed=seed, **kwargs).state_dict()
    a, b, c = make(123), make(123), make(124)
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert any(not np.array_equal(a[n], c[n]) for n in a), "different seeds, same weights"
    # ... and the same seed gives the same outputs
    x = np.random.default_rng(0).standard_normal((T, B, 3)).astype(np.float32)
    la = getattr(fastrnn, mode)(3, 4, num_layers=2, bidirectional=True, seed=7, **kwargs)
    lb = getattr(fastrnn, mode)(3, 4, num_layers=2, bidirectional=True, seed=7, **kwargs)
    np.testing.assert_array_equal(la(x)[0], lb(x)[0])


@pytest.mark.parametrize("impl", ["cython", "reference"])
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_in_eval_mode_is_identity(cell, impl):
    """dropout > 0 only acts in training: in eval mode the output equals
    dropout=0's and torch's (eval) output."""
    tm, fm = make_pair(cell, 3, True, False, True, "float64", impl=impl, dropout=0.6, seed=4)
    _, fm0 = make_pair(cell, 3, True, False, True, "float64", impl=impl, dropout=0.0, seed=4)
    fm.eval()
    fm0.eval()
    tm.eval()
    d = make_data(cell, 3, True, False, "float64", np.random.default_rng(4))
    hx = (d["h0"], d["c0"]) if cell == "lstm" else d["h0"]
    out, hn = fm(d["x"], hx, MIXED_LENGTHS)
    out0, hn0 = fm0(d["x"], hx, MIXED_LENGTHS)
    np.testing.assert_array_equal(out, out0)
    for a, b in zip(hn if cell == "lstm" else [hn], hn0 if cell == "lstm" else [hn0]):
        np.testing.assert_array_equal(a, b)
    with torch.no_grad():
        packed = pack_padded_sequence(torch.tensor(d["x"]), torch.as_tensor(MIXED_LENGTHS),
                                      enforce_sorted=False)
        thx = (tuple(torch.tensor(s) for s in hx) if cell == "lstm" else torch.tensor(hx))
        tout, _ = tm(packed, thx)
        tout, _ = pad_packed_sequence(tout, total_length=T)
    np.testing.assert_allclose(out, tout.numpy(), **TOL["float64"])
    # In training mode the same layer does drop units (the flag is not ignored).
    fm.train()
    out_train, _ = fm(d["x"], hx, MIXED_LENGTHS)
    assert not np.allclose(out_train, out)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_larger_batch_threaded_matches_torch(cell, dtype):
    """Batch large enough for the kernels to split it across 2 threads and to
    split the big GEMMs by rows; lengths mixed, unsorted, with ties."""
    seq_len, batch, input_size, hidden = 9, 13, 6, 11
    rng = np.random.default_rng(21)
    lengths = rng.integers(1, seq_len + 1, batch)
    lengths[[0, 5]] = [1, seq_len]
    tm, fm = make_pair(cell, 2, True, True, True, dtype, seed=21, input_size=input_size,
                       hidden_size=hidden)
    fm.n_threads = 2
    d = make_data(cell, 2, True, True, dtype, rng, seq_len=seq_len, batch=batch,
                  input_size=input_size, hidden_size=hidden)
    fr = run_fastrnn(fm, d, lengths, True)
    tr = run_torch(tm, d, lengths, True, True)
    assert_matches_torch(fr, tr, dtype, f"large {cell}")


@pytest.mark.parametrize("cell", CELLS)
def test_padding_values_are_ignored_like_torch(cell):
    """Whatever is stored past a sequence's length (here huge finite values)
    changes nothing: pack_padded_sequence never reads it."""
    lengths = np.array([5, 2, 1, 3])
    tm, fm = make_pair(cell, 2, True, False, True, "float64", seed=31)
    d = make_data(cell, 2, True, False, "float64", np.random.default_rng(31))
    clean = run_fastrnn(fm, d, lengths, True)
    garbage = dict(d, x=d["x"].copy())
    for b, n in enumerate(lengths):
        garbage["x"][n:, b] = 1e6 * (1 + np.arange(T - n))[:, None]
    dirty = run_fastrnn(fm, garbage, lengths, True)
    tr = run_torch(tm, garbage, lengths, True, False)
    assert_matches_torch(dirty, tr, "float64", f"garbage padding {cell}")
    for key in ("out", "h_n", "c_n", "dx", "dh0", "dc0"):
        if clean[key] is not None:
            np.testing.assert_array_equal(dirty[key], clean[key], err_msg=key)
    for name in clean["grads"]:
        np.testing.assert_allclose(dirty["grads"][name], clean["grads"][name], rtol=1e-12,
                                   atol=1e-14, err_msg=name)
