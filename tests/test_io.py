"""fastrnn.io: one-file model save/load (architecture, weights, optimiser and
scheduler state, vocabulary), clear errors on bad files, atomic writes."""
import json
import os

import numpy as np
import pytest

from fastrnn import io, losses, nn, optim
from fastrnn.data import CharVocab, StreamBatcher
from fastrnn.io import ModelFileError
from fastrnn.trainer import Trainer

TEXT = "the quick brown fox jumps over the lazy dog\n" * 20


def trained_lm(steps_epochs=1, seed=0):
    vocab = CharVocab.from_text(TEXT)
    model = nn.LanguageModel.build(len(vocab), 12, embedding_dim=6, seed=seed, n_threads=1)
    opt = optim.Adam(model, lr=0.01)
    scheduler = optim.StepLR(opt, step_size=1, gamma=0.5)
    trainer = Trainer(model, losses.CrossEntropyLoss(), opt, scheduler=scheduler,
                      clip_grad_norm=1.0, progress=False, vocab=vocab)
    batches = StreamBatcher(vocab.encode(TEXT), 4, 10)
    trainer.fit(batches, epochs=steps_epochs)
    return model, opt, scheduler, vocab, batches


def test_round_trip_outputs_optimizer_and_continued_training(tmp_path):
    model, opt, scheduler, vocab, batches = trained_lm()
    path = tmp_path / "lm.npz"
    assert io.save(path, model, opt, scheduler=scheduler, vocab=vocab,
                   extra={"note": "hi", "pair": (1, 2)}) == str(path)
    ckpt = io.load(path)
    assert isinstance(ckpt.model, nn.LanguageModel) and ckpt.vocab == vocab
    assert ckpt.extra == {"note": "hi", "pair": (1, 2)}
    assert ckpt.metadata["format"] == io.FORMAT and ckpt.metadata["version"] == io.VERSION
    assert ckpt.scheduler_state["last_epoch"] == scheduler.last_epoch
    # identical weights and outputs
    for (name, a), (name_b, b) in zip(model.named_parameters(), ckpt.model.named_parameters()):
        assert name == name_b and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=name)
    x = vocab.encode(TEXT[:30])[:, None]
    model.eval()
    ckpt.model.eval()
    np.testing.assert_array_equal(model(x), ckpt.model(x))
    model.train()
    # identical optimiser state (hyperparameters incl. the scheduled lr, moments, steps)
    assert isinstance(ckpt.optimizer, optim.Adam)
    saved, loaded = opt.state_dict(), ckpt.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["param_groups"][0]["lr"] == 0.005
    assert saved["state"].keys() == loaded["state"].keys()
    for name in saved["state"]:
        for key, value in saved["state"][name].items():
            np.testing.assert_array_equal(value, loaded["state"][name][key])
    # continuing from the file gives bit-identical losses to continuing in memory
    ckpt_scheduler = optim.StepLR(ckpt.optimizer, step_size=1, gamma=0.5)
    ckpt_scheduler.load_state_dict(ckpt.scheduler_state)
    runs = []
    for m, o, s in ((model, opt, scheduler), (ckpt.model, ckpt.optimizer, ckpt_scheduler)):
        t = Trainer(m, losses.CrossEntropyLoss(), o, scheduler=s, clip_grad_norm=1.0,
                    progress=False)
        t.fit(batches, epochs=2)
        runs.append(t.step_losses)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("build", [
    lambda: nn.SequenceClassifier.build(3, 5, cell="gru", input_size=2, num_layers=2,
                                        bidirectional=True, pool="mean", dropout=0.2,
                                        dtype="float64"),
    lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(),
                          nn.make_recurrent("rnn_relu", 4, 3, batch_first=True),
                          nn.LastStep(batch_first=True), nn.Dropout(0.1), nn.Linear(3, 2)),
])
def test_other_architectures_round_trip(tmp_path, build):
    model = build()
    path = tmp_path / "m.model"                        # any extension: written as given
    io.save(path, model)
    loaded = io.load_model(path)
    assert repr(loaded) == repr(model)
    x = np.random.default_rng(0).standard_normal((3, 4, 2))
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(model(x), loaded(x))
    assert io.load(path).optimizer is None and io.load(path).vocab is None


def test_unknown_class_needs_registration(tmp_path):
    class Scale(nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def get_config(self):
            return {"factor": self.factor}

        def forward(self, x):
            return x * self.factor

        def backward(self, grad):
            return grad * self.factor
    path = tmp_path / "s.npz"
    io.save(path, nn.Sequential(nn.Linear(2, 2), Scale(3.0)))
    with pytest.raises(ModelFileError, match="register_module_class"):
        io.load(path)
    nn.register_module_class(Scale)
    assert io.load_model(path)[1].factor == 3.0


def _saved(tmp_path):
    model, opt, _, vocab, _ = trained_lm()
    path = tmp_path / "lm.npz"
    io.save(path, model, opt, vocab=vocab)
    return path


def test_truncated_and_corrupt_files_raise_model_file_error(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt") as info:
        io.load(truncated)
    assert str(truncated) in str(info.value) and isinstance(info.value, ValueError)
    # flip bytes inside the first weight array: the zip CRC check catches it
    corrupt = tmp_path / "corrupt.npz"
    blob = bytearray(data)
    start = data.index(b"param/embed.weight.npy") + 200
    blob[start:start + 16] = bytes(16)
    corrupt.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="corrupt") as info:
        io.load(corrupt)
    assert str(corrupt) in str(info.value)
    for name, content, problem in (("empty.npz", b"", "the file is empty"),
                                   ("text.npz", b"not a model at all\n", "not a .npz")):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ModelFileError, match=problem) as info:
            io.load(bad)
        assert info.value.path == str(bad)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ModelFileError, match="single .npy array"):
        io.load(npy)
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.npz")


def test_damaged_zip_headers_and_random_damage_raise_model_file_error(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    # Central directory fields zipfile refuses with other exceptions than
    # BadZipFile: an unknown compression method (NotImplementedError), the
    # "encrypted" flag (RuntimeError).
    entry = data.index(b"PK\x01\x02")
    for offset, value, problem in ((10, 99, "compression method"), (8, 1, "encrypted")):
        blob = bytearray(data)
        blob[entry + offset:entry + offset + 2] = value.to_bytes(2, "little")
        bad = tmp_path / f"header{offset}.npz"
        bad.write_bytes(bytes(blob))
        with pytest.raises(ModelFileError, match=problem):
            io.load(bad)
    # Random damage: truncation, flipped bytes, a cut-out piece. Each file
    # either loads into a model that runs or raises ModelFileError.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (3, 2))
    for trial in range(150):
        blob = bytearray(data)
        kind = trial % 3
        if kind == 0:
            blob = blob[:rng.integers(len(blob))]
        elif kind == 1:
            for i in rng.integers(len(blob), size=rng.integers(1, 20)):
                blob[i] = rng.integers(256)
        else:
            i = rng.integers(len(blob))
            del blob[i:i + rng.integers(1, 200)]
        bad = tmp_path / "damaged.npz"
        bad.write_bytes(bytes(blob))
        try:
            model = io.load(bad)
        except ModelFileError:
            continue
        model.eval()
        model(x)


def _rewrite(path, out, edit_meta=None, drop=()):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k not in drop}
    if edit_meta is not None:
        meta = json.loads(arrays[io.META_KEY].tobytes())
        edit_meta(meta)
        arrays[io.META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


def test_wrong_format_version_and_missing_arrays(tmp_path):
    path = _saved(tmp_path)
    newer = _rewrite(path, tmp_path / "v2.npz", lambda m: m.update(version=2))
    with pytest.raises(ModelFileError, match="version 2 is newer"):
        io.load(newer)
    other = _rewrite(path, tmp_path / "other.npz", lambda m: m.update(format="something"))
    with pytest.raises(ModelFileError, match="format 'something'"):
        io.load(other)
    no_meta = _rewrite(path, tmp_path / "nometa.npz", drop=[io.META_KEY])
    with pytest.raises(ModelFileError, match="not a fastrnn model file"):
        io.load(no_meta)
    missing = _rewrite(path, tmp_path / "missing.npz", drop=["param/rnn.weight_hh_l0"])
    with pytest.raises(ModelFileError, match="missing array 'param/rnn.weight_hh_l0'"):
        io.load(missing)
    missing_opt = _rewrite(path, tmp_path / "missing_opt.npz", drop=["optimizer/0/exp_avg"])
    with pytest.raises(ModelFileError, match="missing array 'optimizer/0/exp_avg'"):
        io.load(missing_opt)

    def shrink(meta):
        meta["model"]["config"]["head"]["config"]["in_features"] = 3
    wrong_shape = _rewrite(path, tmp_path / "shape.npz", shrink)
    with pytest.raises(ModelFileError, match="shape"):
        io.load(wrong_shape)
    assert io.read_metadata(path)["vocab"]["type"] == "char"


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()
    other = nn.LanguageModel.build(5, 3)

    def failing_write(fileobj, arrays):
        fileobj.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")
    monkeypatch.setattr(io, "_write_archive", failing_write)
    with pytest.raises(OSError, match="disk full"):
        io.save(path, other)
    assert path.read_bytes() == before                    # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["lm.npz"]    # no temporary file left
    assert io.load(path).model.head.out_features == len(CharVocab.from_text(TEXT))
    monkeypatch.undo()
    io.save(path, other)                                  # a successful save replaces it
    assert io.load_model(path).head.out_features == 5
    assert sorted(os.listdir(tmp_path)) == ["lm.npz"]


def test_unsavable_metadata_is_refused_before_writing(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match="extra"):
        io.save(path, nn.Linear(2, 2), extra={"f": object()})
    assert not path.exists()
