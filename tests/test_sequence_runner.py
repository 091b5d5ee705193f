"""The inference fast path of float32 layers (_packed.SequenceRunner,
_packed.forward_cached), in both layouts and with lengths: the same results as
the general path, which every other case and every error still takes; runners follow the weights
(load_state_dict, train()) and the thread count."""
import tracemalloc

import numpy as np
import pytest

import fastrnn
from fastrnn import _packed

CELLS = ["LSTM", "GRU", "RNN"]
# (seq_len, batch, input_size, hidden_size, num_layers, n_threads): seq_len 1 and
# batch 1, hidden not a multiple of the unit block, several projection chunks
# (300 steps at batch 1: chunks of 128), a batch split (9 rows on 2 threads), a
# hidden-unit split (batch 2 on 2 threads), stacked layers.
SHAPES = [(1, 1, 3, 5, 1, 1), (7, 3, 4, 70, 2, 1), (300, 1, 6, 20, 1, 1),
          (6, 9, 5, 40, 3, 2), (5, 2, 8, 130, 2, 2), (4, 4, 16, 16, 1, 2)]


def _general_only(monkeypatch):
    """Make forward take the general path (the fast path declines)."""
    monkeypatch.setattr(_packed, "forward_cached", lambda *args: None)


def _states(result):
    _, state = result
    return list(state) if isinstance(state, tuple) else [state]


def _hx(mode, layers, B, H, rng):
    h = rng.standard_normal((layers, B, H)).astype(np.float32)
    return (h, rng.standard_normal((layers, B, H)).astype(np.float32)) if mode == "LSTM" else h


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "hx"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS)
def test_fast_path_equals_general_path(monkeypatch, mode, bidirectional, batch_first,
                                       with_lengths, with_state, shape):
    T, B, I, H, layers, n_threads = shape
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(0)
    layer = getattr(fastrnn, mode)(I, H, num_layers=layers, bidirectional=bidirectional,
                                   batch_first=batch_first, seed=2,
                                   n_threads=n_threads).eval()
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    hx = _hx(mode, layers * D, B, H, rng) if with_state else None
    # Lengths from 1 to seq_len (with 1 and seq_len present from batch 2 on).
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[:2] = [1, T][:B]
    out_shape = (B, T, D * H) if batch_first else (T, B, D * H)
    calls = []
    real_run = _packed.forward_cached

    def counted(*args):
        calls.append(1)
        return real_run(*args)
    monkeypatch.setattr(_packed, "forward_cached", counted)
    fast = layer(x, hx, lengths)
    assert calls and layer._runners, "the fast path was not taken"
    assert layer._cache is None
    assert fast[0].shape == out_shape and fast[0].dtype == np.float32
    _general_only(monkeypatch)
    general = layer(x, hx, lengths)
    np.testing.assert_array_equal(fast[0], general[0])
    for got, want in zip(_states(fast), _states(general)):
        assert got.shape == (layers * D, B, H)
        np.testing.assert_array_equal(got, want)
    ref = getattr(fastrnn, mode)(I, H, num_layers=layers, bidirectional=bidirectional, seed=2,
                                 batch_first=batch_first, impl="reference").eval()
    expected = ref(x, hx, lengths)
    np.testing.assert_allclose(fast[0], expected[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(_states(fast), _states(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS)
def test_unbatched_input_on_the_fast_path(monkeypatch, mode, bidirectional, batch_first,
                                          with_state):
    # (seq_len, input_size) in either layout, states (layers, hidden): a batch
    # of one without its axis.
    T, I, H, layers = 7, 5, 20, 2
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(7)
    layer = getattr(fastrnn, mode)(I, H, num_layers=layers, bidirectional=bidirectional,
                                   batch_first=batch_first, seed=3, n_threads=2).eval()
    x = rng.standard_normal((T, I)).astype(np.float32)
    hx = None
    if with_state:
        h = rng.standard_normal((layers * D, H)).astype(np.float32)
        hx = (h, rng.standard_normal((layers * D, H)).astype(np.float32)) if mode == "LSTM" else h
    fast = layer(x, hx)
    assert (1, 2) in layer._runners and layer._cache is None, "the fast path was not taken"
    assert fast[0].shape == (T, D * H)
    with pytest.raises(ValueError, match="lengths needs a batched input"):
        layer(x, lengths=np.array([T]))
    _general_only(monkeypatch)
    general = layer(x, hx)
    np.testing.assert_array_equal(fast[0], general[0])
    for got, want in zip(_states(fast), _states(general)):
        assert got.shape == (layers * D, H)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_inference_memory_is_the_output_and_the_state(batch_first):
    # No copy of the input (a batch-first one is read where it is) and no
    # sequence-sized buffer besides the output: the workspace is per batch size
    # and made by the first call.
    T, B, I, H = 400, 4, 64, 32
    layer = fastrnn.LSTM(I, H, batch_first=batch_first, n_threads=1).eval()
    shape = (B, T, I) if batch_first else (T, B, I)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    layer(x)
    tracemalloc.start()
    try:
        out, (h_n, c_n) = layer(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == ((B, T, H) if batch_first else (T, B, H))
    assert peak < out.nbytes + h_n.nbytes + c_n.nbytes + 4096, (peak, out.nbytes, x.nbytes)


def test_runners_follow_the_weights_and_the_thread_count():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    lstm = fastrnn.LSTM(4, 6, num_layers=2, seed=0, n_threads=1).eval()
    other = fastrnn.LSTM(4, 6, num_layers=2, seed=1, impl="reference").eval()
    lstm(x)
    lstm.load_state_dict(other.state_dict())            # new weights: runners dropped
    np.testing.assert_allclose(lstm(x)[0], other(x)[0], rtol=1e-4, atol=1e-5)
    lstm.train()
    lstm.weight_hh_l1[0, 0] += 1.0                      # writable in training
    lstm.eval()
    other.weight_hh_l1[0, 0] += 1.0
    np.testing.assert_allclose(lstm(x)[0], other(x)[0], rtol=1e-4, atol=1e-5)
    lstm.n_threads = 2
    np.testing.assert_allclose(lstm(x)[0], other(x)[0], rtol=1e-4, atol=1e-5)
    assert {key[1] for key in lstm._runners} == {1, 2}


def test_only_a_few_batch_sizes_keep_runners():
    gru = fastrnn.GRU(3, 8, seed=0, n_threads=1).eval()
    ref = fastrnn.GRU(3, 8, seed=0, impl="reference").eval()
    rng = np.random.default_rng(2)
    for B in (1, 2, 3, 4, 5, 6, 2):
        x = rng.standard_normal((4, B, 3)).astype(np.float32)
        np.testing.assert_allclose(gru(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)
        assert len(gru._runners) <= fastrnn.GRU._RUNNER_BATCH_SIZES
    assert (2, 1) in gru._runners                        # the latest are kept


@pytest.mark.parametrize("mode", CELLS)
def test_other_inputs_and_errors_take_the_general_path(mode):
    layer = getattr(fastrnn, mode)(4, 6, num_layers=2, seed=0).eval()
    ref = getattr(fastrnn, mode)(4, 6, num_layers=2, seed=0, impl="reference").eval()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 4))
    # float64 input, a non-contiguous view, float64 states: converted, same results.
    hx = _hx(mode, 2, 3, 6, rng)
    hx64 = tuple(h.astype(np.float64) for h in hx) if mode == "LSTM" else hx.astype(np.float64)
    for args in ((x,), (x.astype(np.float32)[:, ::-1],), (x.astype(np.float32), hx64)):
        np.testing.assert_allclose(layer(*args)[0], ref(*args)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="input_size=4"):
        layer(np.zeros((5, 3, 7), np.float32))
    with pytest.raises(ValueError, match="seq_len >= 1"):
        layer(np.zeros((0, 3, 4), np.float32))
    bad_h = np.zeros((1, 3, 6), np.float32)
    with pytest.raises((ValueError, TypeError), match="shape"):
        layer(x.astype(np.float32), (bad_h, bad_h) if mode == "LSTM" else bad_h)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_other_lengths_and_their_errors_take_the_general_path(batch_first):
    layer = fastrnn.GRU(4, 6, seed=0, batch_first=batch_first).eval()
    ref = fastrnn.GRU(4, 6, seed=0, batch_first=batch_first, impl="reference").eval()
    x = np.random.default_rng(4).standard_normal((3, 5, 4)).astype(np.float32)
    batch, seq_len = (3, 5) if batch_first else (5, 3)
    lengths = np.arange(batch) % seq_len + 1
    # Other integer types, a list, a strided view: converted, same results.
    twice = np.repeat(lengths, 2)[::2]
    for given in (lengths.astype(np.int32), lengths.tolist(), twice):
        np.testing.assert_allclose(layer(x, lengths=given)[0], ref(x, lengths=lengths)[0],
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=f"lengths must be in 1..{seq_len}"):
        layer(x, lengths=np.full(batch, seq_len + 1))
    with pytest.raises(ValueError, match=f"lengths must be in 1..{seq_len}"):
        layer(x, lengths=np.zeros(batch, np.int64))
    with pytest.raises(ValueError, match=rf"lengths must have shape \({batch},\)"):
        layer(x, lengths=np.ones(batch + 1, np.int64))
    with pytest.raises(TypeError, match="lengths must be integers"):
        layer(x, lengths=np.ones(batch))


def test_backward_after_an_inference_forward_raises():
    # As on the general path, an inference forward drops the last training
    # forward's cache (here without eval(), which drops it too).
    lstm = fastrnn.LSTM(4, 6, seed=0)
    x = np.zeros((3, 2, 4), np.float32)
    lstm(x)                                              # training forward: a cache
    lstm.training = False
    lstm(x)                                              # fast path
    assert lstm._runners
    lstm.training = True
    with pytest.raises(RuntimeError, match="training mode"):
        lstm.backward(np.zeros((3, 2, 6), np.float32))


def test_sequence_runner_rejects_bad_sizes():
    packed = _packed.pack_weights(2, np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32),
                                  None, None)
    with pytest.raises(ValueError, match="batch and n_threads"):
        _packed.SequenceRunner(packed, 0, 1)
    with pytest.raises(ValueError, match="batch and n_threads"):
        _packed.SequenceRunner(packed, 1, 0)


@pytest.mark.parametrize("mode", CELLS)
def test_non_native_byte_order_is_converted_not_misread(mode):
    # float32 and int64 in the other byte order have the same type number as
    # native ones: the fast paths must not read their bytes as native.
    layer = getattr(fastrnn, mode)(4, 6, seed=0).eval()
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    hx = _hx(mode, 1, 3, 6, rng)
    lengths = np.array([5, 2, 1])

    def swapped(a):
        return a.astype(a.dtype.newbyteorder())
    hx_swapped = tuple(map(swapped, hx)) if mode == "LSTM" else swapped(hx)
    want = layer(x, hx, lengths)
    for args in ((swapped(x), hx, lengths), (x, hx_swapped, lengths),
                 (x, hx, swapped(lengths))):
        got = layer(*args)
        np.testing.assert_array_equal(got[0], want[0])
        for g, w in zip(_states(got), _states(want)):
            np.testing.assert_array_equal(g, w)
    want_step = layer.step(x[0], hx)
    for args in ((swapped(x[0]), hx), (x[0], hx_swapped)):
        np.testing.assert_array_equal(layer.step(*args)[0], want_step[0])
