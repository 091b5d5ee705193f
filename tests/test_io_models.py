"""fastrnn.io save/load of the models outside fastrnn.nn: TimeDelay (alone and
stacked in a Sequential), NARX (open-loop outputs and closed-loop forecasts)
and Seq2Seq (teacher-forced logits and greedy decoding) come back with the same
architecture, weights and outputs."""
import numpy as np
import pytest

from fastrnn import io, nn, optim
from fastrnn.narx import NARX
from fastrnn.seq2seq import Seq2Seq
from fastrnn.timedelay import TimeDelay


def _perturb(model, seed):
    """Move every weight away from its initialisation, so a reload that kept a
    fresh initialisation (same seed or not) could not pass by accident."""
    rng = np.random.default_rng(seed)
    state = {name: value + rng.normal(0, 0.1, value.shape).astype(value.dtype)
             for name, value in model.state_dict().items()}
    model.load_state_dict(state)
    return model


def _round_trip(tmp_path, model, **save_kwargs):
    path = tmp_path / "model.npz"
    io.save(path, model, **save_kwargs)
    ckpt = io.load(path)
    loaded = ckpt.model
    assert type(loaded) is type(model)
    assert nn.module_config(loaded) == nn.module_config(model)
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(saved_state) == list(loaded_state)
    for name, value in saved_state.items():
        assert loaded_state[name].dtype == value.dtype, name
        np.testing.assert_array_equal(loaded_state[name], value, err_msg=name)
    return loaded, ckpt


# -- TimeDelay -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(delays=3),
    dict(delays=2, dilation=2, activation="relu", bias=False, dtype="float64"),
    dict(delays=1, activation=None, batch_first=True, impl="reference"),
])
def test_timedelay_round_trip(tmp_path, kwargs):
    model = _perturb(TimeDelay(3, 5, seed=0, n_threads=1, **kwargs), 1)
    loaded, ckpt = _round_trip(tmp_path, model)
    assert ckpt.metadata["model"]["class"] == "fastrnn.timedelay.TimeDelay"
    for attr in ("delays", "dilation", "activation", "has_bias", "batch_first", "dtype", "impl"):
        assert getattr(loaded, attr) == getattr(model, attr), attr
    x = np.random.default_rng(2).normal(size=(7, 4, 3))
    if model.batch_first:
        x = x.transpose(1, 0, 2)
    lengths = np.array([7, 3, 5, 1])
    for m in (model, loaded):
        m.eval()
    np.testing.assert_array_equal(loaded(x), model(x))
    np.testing.assert_array_equal(loaded(x, lengths), model(x, lengths))


def test_sequential_of_timedelay_layers_round_trip_with_optimizer(tmp_path):
    model = nn.Sequential(TimeDelay(2, 8, delays=2, seed=0, n_threads=1),
                          TimeDelay(8, 8, delays=2, dilation=2, activation="relu", seed=1,
                                    n_threads=1),
                          TimeDelay(8, 3, delays=1, activation="identity", seed=2,
                                    n_threads=1),
                          nn.MeanPool(),
                          nn.Linear(3, 2, seed=3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5, 2)).astype(np.float32)
    lengths = np.array([9, 4, 6, 2, 9])
    opt = optim.Adam(model, lr=0.01)
    for _ in range(3):                       # some training: weights and Adam moments
        opt.zero_grad()
        out = model(x, lengths)
        model.backward(out - 1.0)
        opt.step()
    loaded, ckpt = _round_trip(tmp_path, model, optimizer=opt)
    assert [type(m) for m in loaded] == [type(m) for m in model]
    assert [m.dilation for m in list(loaded)[:3]] == [1, 2, 1]
    classes = [spec["class"] for _, spec in ckpt.metadata["model"]["config"]["modules"]]
    assert classes[:3] == ["fastrnn.timedelay.TimeDelay"] * 3
    # the optimiser comes back too, and one more step is identical
    assert isinstance(ckpt.optimizer, optim.Adam)
    for m in (model, loaded):
        m.train()
    outs = []
    for m, o in ((model, opt), (loaded, ckpt.optimizer)):
        o.zero_grad()
        out = m(x, lengths)
        m.backward(out - 1.0)
        o.step()
        m.eval()
        outs.append(m(x, lengths))
    np.testing.assert_array_equal(outs[1], outs[0])


# -- NARX -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(input_size=2, output_size=1, input_delays=2, output_delays=3, hidden_size=6),
    dict(input_size=1, output_size=2, input_delays=0, output_delays=2, hidden_size=(5, 4),
         activation="relu", dtype="float64", batch_first=True),
    dict(input_size=0, output_size=1, output_delays=4, hidden_size=7),     # NAR
])
def test_narx_round_trip_forward_and_forecast(tmp_path, kwargs):
    model = _perturb(NARX(seed=0, **kwargs), 1)
    loaded, ckpt = _round_trip(tmp_path, model)
    assert ckpt.metadata["model"]["class"] == "fastrnn.narx.NARX"
    assert loaded.hidden_sizes == model.hidden_sizes
    assert loaded.num_features == model.num_features
    rng = np.random.default_rng(3)
    T, B, T_h, horizon = 12, 3, 8, 6
    I, O = model.input_size, model.output_size

    def layout(a):
        return a.transpose(1, 0, 2) if model.batch_first else a

    y = layout(rng.normal(size=(T, B, O)))
    x = layout(rng.normal(size=(T, B, I))) if I else None
    for m in (model, loaded):
        m.eval()
    np.testing.assert_array_equal(loaded(x, y), model(x, y))
    y_hist = y[:, :T_h] if model.batch_first else y[:T_h]
    if I:
        x_all = layout(rng.normal(size=(T_h + horizon, B, I)))
        a = model.forecast(y_hist, x=x_all)
        b = loaded.forecast(y_hist, x=x_all)
    else:
        a = model.forecast(y_hist, horizon=horizon)
        b = loaded.forecast(y_hist, horizon=horizon)
    assert a.shape == b.shape and np.all(np.isfinite(a))
    np.testing.assert_array_equal(b, a)


# -- Seq2Seq ----------------------------------------------------------------------------

@pytest.mark.parametrize("cell,kwargs", [
    ("gru", dict(eos_idx=2, pad_idx=0)),
    ("lstm", dict(eos_idx=2, num_layers=2, embedding_dim=5)),
    ("rnn_relu", dict(batch_first=True, pad_idx=0)),
])
def test_seq2seq_round_trip_logits_and_greedy_decode(tmp_path, cell, kwargs):
    model = _perturb(Seq2Seq.build(9, 7, 8, bos_idx=1, cell=cell, seed=0, n_threads=1,
                                   **kwargs), 1)
    loaded, ckpt = _round_trip(tmp_path, model)
    assert ckpt.metadata["model"]["class"] == "fastrnn.seq2seq.Seq2Seq"
    assert (loaded.bos_idx, loaded.eos_idx, loaded.pad_idx) == \
        (model.bos_idx, model.eos_idx, model.pad_idx)
    assert type(loaded.encoder) is type(model.encoder)
    assert loaded.encoder.num_layers == model.encoder.num_layers
    assert loaded.decoder_embed.padding_idx == model.decoder_embed.padding_idx
    rng = np.random.default_rng(4)
    src = rng.integers(3, 9, size=(6, 4))
    tgt = rng.integers(3, 7, size=(5, 4))
    src_lengths = np.array([6, 2, 4, 5])
    if model.batch_first:
        src, tgt = src.T.copy(), tgt.T.copy()
    for m in (model, loaded):
        m.eval()
    np.testing.assert_array_equal(loaded(src, tgt, src_lengths=src_lengths),
                                  model(src, tgt, src_lengths=src_lengths))
    np.testing.assert_array_equal(loaded.greedy_decode(src, src_lengths, max_len=8),
                                  model.greedy_decode(src, src_lengths, max_len=8))


def test_models_without_config_still_raise(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x

        def backward(self, g):
            return g

    with pytest.raises(NotImplementedError, match="get_config"):
        io.save(tmp_path / "x.npz", nn.Sequential(TimeDelay(2, 2, 1), Custom()))
    assert not (tmp_path / "x.npz").exists()
