"""A layer shared: inference calls from several threads at once (each gets its
own results, although a layer keeps buffers and prepared jobs between calls),
and copies and pickles of layers that have run (which hold packed weights and
jobs with raw pointers)."""
import copy
import pickle
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _packed, nn

CELLS = ["LSTM", "GRU", "RNN"]
THREADS = 4
CALLS = 40


def _run_together(work):
    """work(i) in THREADS threads started at once; re-raises the first error."""
    start = threading.Barrier(THREADS)
    errors = []

    def run(i):
        try:
            start.wait()
            work(i)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(THREADS)]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", CELLS)
def test_inference_calls_from_several_threads_get_their_own_results(mode, bidirectional,
                                                                     path, n_threads):
    # Each thread calls the same layer on its own input; every call must give
    # what the same call gives alone (bitwise: the same kernels). "general":
    # lengths as a list take the general path (its kept work buffers). On 2
    # threads each (batch 3: the hidden units split, a barrier per step), the
    # teams together outnumber the CPUs here, and their barriers must yield
    # soon (see _barrier.h): spinning 7 ms a barrier, one such test took 5.7 s
    # against 0.35 s.
    layer = getattr(fastrnn, mode)(16, 48, num_layers=2, bidirectional=bidirectional, seed=0,
                                   n_threads=n_threads).eval()
    xs = _inputs((30, 3, 16))
    lengths = [30, 17, 5] if path == "general" else None
    expected = [layer(x, lengths=lengths)[0] for x in xs]
    wrong = []

    def work(i):
        for _ in range(CALLS):
            if not np.array_equal(layer(xs[i], lengths=lengths)[0], expected[i]):
                wrong.append(i)
    _run_together(work)
    assert not wrong, f"{len(wrong)} of {THREADS * CALLS} concurrent calls gave other results"
    assert _packed._team_threads() == 0          # every region counted out again


@pytest.mark.parametrize("name", ["LayerNormLSTM", "ZoneoutLSTM"])
def test_layer_norm_and_zoneout_lstm_calls_from_several_threads(name):
    # Their forward records the masks it draws per call (none in inference);
    # once kept in one attribute for all threads, concurrent calls crashed.
    layer = getattr(fastrnn, name)(16, 32, num_layers=2, bidirectional=True, seed=0,
                                   n_threads=1).eval()
    xs = _inputs((20, 3, 16))
    expected = [layer(x)[0] for x in xs]
    wrong = []

    def work(i):
        for _ in range(CALLS):
            if not np.array_equal(layer(xs[i])[0], expected[i]):
                wrong.append(i)
    _run_together(work)
    assert not wrong
    assert layer._drawn_masks == {}


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("mode", CELLS)
def test_streaming_steps_from_several_threads_get_their_own_results(mode, n_threads):
    # Several streams served at once by one layer (step() keeps Steppers, which
    # one step at a time may use: the others take fresh ones).
    layer = getattr(fastrnn, mode)(8, 32, num_layers=2, seed=1, n_threads=n_threads).eval()
    streams = _inputs((25, 2, 8), seed=1)

    def run_stream(x):
        hx, outs = None, []
        for t in range(len(x)):
            out, hx = layer.step(x[t], hx)
            outs.append(out)
        return np.stack(outs)
    expected = [run_stream(x) for x in streams]
    wrong = []

    def work(i):
        for _ in range(4):
            if not np.array_equal(run_stream(streams[i]), expected[i]):
                wrong.append(i)
    _run_together(work)
    assert not wrong


@pytest.mark.parametrize("mode", CELLS)
def test_a_step_beside_another_on_the_kept_steppers_takes_fresh_ones(mode):
    # step() takes no lock: the kept Steppers refuse a second step while one
    # runs (_packed._step_through), and the layer then steps on fresh ones. Here
    # the kept Steppers are held as a step in another thread would hold them.
    layer = getattr(fastrnn, mode)(8, 32, num_layers=2, seed=1, n_threads=1).eval()
    twin = getattr(fastrnn, mode)(8, 32, num_layers=2, seed=1, n_threads=1).eval()
    x = _inputs((2, 3, 8), seed=2)[0]
    _, hx = layer.step(x[0])
    _, twin_hx = twin.step(x[0])
    expected, _ = twin.step(x[1], twin_hx)
    (kept,) = layer._steppers.values()
    assert _packed.step_cached(layer._steppers, x[1], hx, 1) is not None
    _packed._hold_steppers(kept, True)
    try:
        assert _packed.step_cached(layer._steppers, x[1], hx, 1) is None
        h, c = hx if mode == "LSTM" else (hx, None)
        assert _packed.step_layers(kept, x[1], h, c) is None
        out, _ = layer.step(x[1], hx)
    finally:
        _packed._hold_steppers(kept, False)
    np.testing.assert_array_equal(out, expected)
    assert list(layer._steppers.values()) == [kept]


def test_training_calls_wait_their_turn():
    # Training calls share the cache and the gradients: a second thread's
    # forward waits until the first thread's call has finished.
    layer = fastrnn.LSTM(4, 8, seed=0)
    x = np.zeros((3, 2, 4), np.float32)
    entered, release = threading.Event(), threading.Event()
    original = layer._run_forward

    def slow_run_forward(*args):
        entered.set()
        release.wait(10)
        return original(*args)
    layer._run_forward = slow_run_forward
    first = threading.Thread(target=layer, args=(x,))
    first.start()
    assert entered.wait(10)
    entered.clear()
    second = threading.Thread(target=layer, args=(x,))
    second.start()
    assert not entered.wait(0.2), "a second training call ran beside the first"
    release.set()
    first.join(10)
    second.join(10)
    assert entered.is_set()


@pytest.mark.parametrize("name", ["LSTM", "GRU", "LayerNormLSTM", "ZoneoutLSTM"])
def test_copy_between_a_training_forward_and_its_backward(name):
    # The training cache stays with the original (it holds the kernel module, which
    # cannot be copied): the copy needs a forward of its own before backward.
    layer = getattr(fastrnn, name)(4, 8, seed=0)
    x = np.random.default_rng(3).standard_normal((5, 2, 4)).astype(np.float32)
    out, _ = layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.training
        with pytest.raises(RuntimeError, match="needs a forward"):
            clone.backward(np.ones_like(out))
        clone(x)
        clone.backward(np.ones_like(out))
    grad_x, _ = layer.backward(np.ones_like(out))
    assert np.isfinite(grad_x).all()
    np.testing.assert_array_equal(clone.grads["weight_hh_l0"], layer.grads["weight_hh_l0"])


def _models():
    return {
        "LSTM": lambda: fastrnn.LSTM(4, 8, num_layers=2, bidirectional=True, seed=0),
        "GRU": lambda: fastrnn.GRU(4, 8, seed=0),
        "RNN": lambda: fastrnn.RNN(4, 8, nonlinearity="relu", seed=0),
        "LSTM float64": lambda: fastrnn.LSTM(4, 8, dtype="float64", seed=0),
        "LayerNormLSTM": lambda: fastrnn.LayerNormLSTM(4, 8, seed=0),
        "Sequential": lambda: nn.Sequential(fastrnn.GRU(4, 8, seed=0), nn.Linear(8, 3, seed=0)),
    }


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_a_layer_that_has_run(name, how):
    # After inference calls (packed weights, prepared jobs) and a training
    # step: the copy computes what the original does, and is independent of it.
    model = _models()[name]()
    x = np.random.default_rng(2).standard_normal((5, 2, 4)).astype(np.float32)
    model.train()
    model(x)
    model.eval()
    before = model(x)[0]
    if hasattr(model, "step") and not getattr(model, "bidirectional", False):
        model.step(x[0])
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert not clone.training
    np.testing.assert_array_equal(clone(x)[0], before)
    # Trainable: in-place updates of the copy's parameters change the copy only.
    clone.train()
    for p in clone.parameters():
        p += 0.5
    clone.eval()
    assert not np.array_equal(clone(x)[0], before)
    np.testing.assert_array_equal(model(x)[0], before)
