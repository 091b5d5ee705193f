"""The ``fastrnn demo`` main job (tiny settings), its packaged text, and
``generate`` (stepping a language model one character at a time)."""
import os

import numpy as np

from fastrnn import demo, io, nn
from fastrnn.__main__ import main as cli_main
from fastrnn.data import CharVocab

from _subprocess_util import run_python

TINY = ["--epochs", "1", "--hidden-size", "16", "--embedding-dim", "8", "--max-chars", "6000",
        "--batch-size", "8", "--bptt", "16", "--length", "60", "--no-progress"]


def test_packaged_text_is_small_public_domain_shakespeare():
    path = demo.default_text_path()
    size = os.path.getsize(path)
    assert 150_000 < size < 1_000_000
    text = demo.load_text()
    assert len(text) == size and text.startswith("First Citizen:\nBefore we proceed")
    readme = os.path.join(os.path.dirname(path), "README.txt")
    with open(readme, encoding="utf-8") as f:
        assert "public domain" in f.read().lower()


def test_python_m_fastrnn_demo_runs_and_prints_generated_text(tmp_path):
    saved = tmp_path / "demo.npz"
    # cwd: `python -m` puts the working directory first on sys.path, where a
    # checkout's uncompiled fastrnn/ would shadow the package under test.
    proc = run_python(["-m", "fastrnn", "demo", *TINY, "--save", str(saved)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "epoch 0/1  (untrained)" in out and "epoch 1/1" in out and "val_ppl" in out
    assert "validation perplexity" in out
    sample = out.split("--- sample")[1].split("--- end of sample ---")[0]
    generated = sample.split("\n", 1)[1]
    assert generated.startswith("First Citizen:\n") and len(generated) > 60
    ckpt = io.load(saved)
    assert isinstance(ckpt.model, nn.LanguageModel) and isinstance(ckpt.vocab, CharVocab)
    assert ckpt.extra["trainer"]["epoch"] == 1


def test_demo_on_own_text_with_gru(tmp_path, capsys):
    text_file = tmp_path / "mine.txt"
    text_file.write_text("abcabcabd " * 300, encoding="utf-8")
    args = TINY[:-1] + ["--text", str(text_file), "--cell", "gru", "--prime", "ab",
                        "--temperature", "0", "--epochs", "2"]
    assert cli_main(["demo", *args]) == 0
    out = capsys.readouterr().out
    assert "GRU" in out and str(text_file) in out and "epoch 2/2" in out


def test_generate_is_reproducible_and_keeps_the_mode():
    vocab = CharVocab.from_text("hello world")
    model = nn.LanguageModel.build(len(vocab), 8, seed=0)
    a = demo.generate(model, vocab, prime="he", length=30, temperature=1.0, seed=3)
    b = demo.generate(model, vocab, prime="he", length=30, temperature=1.0, seed=3)
    assert a == b and len(a) == 30 and set(a) <= set("hello world")
    assert model.training                                   # mode restored
    greedy = demo.generate(model, vocab, prime="h", length=10, temperature=0)
    # greedy decoding by hand: feed the argmax back with the carried state
    model.eval()
    logits = model(vocab.encode("h")[:, None])
    state, chars = model.final_state, []
    for _ in range(10):
        token = int(np.argmax(logits[-1, 0]))
        chars.append(token)
        logits = model(np.array([[token]]), hx=state)
        state = model.final_state
    assert greedy == vocab.decode(chars)
