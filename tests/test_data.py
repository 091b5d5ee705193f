"""fastrnn.data: padding, array batching (reproducible shuffling), the character
vocabulary and language-model stream batching."""
import numpy as np
import pytest

from fastrnn.data import (IGNORE_INDEX, ArrayLoader, Batch, CharVocab, StreamBatcher, batchify,
                          pad_sequences, train_val_split)


def test_pad_sequences_layouts_and_lengths():
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    padded, lengths = pad_sequences(seqs, pad_value=-1)
    assert padded.tolist() == [[1, 2, 3], [4, -1, -1], [5, 6, -1]]
    assert lengths.tolist() == [3, 1, 2] and lengths.dtype == np.int64
    tm, _ = pad_sequences(seqs, time_major=True)
    assert tm.shape == (3, 3) and tm[:, 0].tolist() == [1, 2, 3]
    feats = [np.ones((2, 4), np.float32), np.ones((5, 4), np.float32)]
    padded, lengths = pad_sequences(feats, max_len=3)
    assert padded.shape == (2, 3, 4) and padded.dtype == np.float32
    assert lengths.tolist() == [2, 3] and padded[0, 2].sum() == 0
    with pytest.raises(ValueError, match="empty"):
        pad_sequences([np.array([1]), np.array([], int)])
    with pytest.raises(ValueError, match="trailing shape"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 4))])


def test_array_loader_shuffle_is_reproducible_and_complete():
    x = np.arange(10 * 4).reshape(10, 4)          # 10 sequences of 4 tokens
    y = np.arange(10)
    loader = ArrayLoader(x, y, batch_size=3, shuffle=True, seed=7)
    assert len(loader) == 4
    epoch0 = [b.targets.tolist() for b in loader]
    epoch1 = [b.targets.tolist() for b in loader]
    assert sorted(sum(epoch0, [])) == list(range(10))       # every sample once
    assert epoch0 != epoch1                                  # a new order per epoch
    again = ArrayLoader(x, y, batch_size=3, shuffle=True, seed=7)
    assert [b.targets.tolist() for b in again] == epoch0     # same seed, same order
    again.set_epoch(1)
    assert [b.targets.tolist() for b in again] == epoch1
    first = next(iter(ArrayLoader(x, y, batch_size=3)))
    assert first.inputs.shape == (4, 3)                      # time-major (T, B)
    assert first.inputs[:, 1].tolist() == x[1].tolist()
    assert len(ArrayLoader(x, y, batch_size=3, drop_last=True)) == 3
    bf = next(iter(ArrayLoader(x, y, batch_size=3, time_major=False)))
    assert bf.inputs.shape == (3, 4)


def test_array_loader_ragged_sequences_and_step_targets():
    x = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    y = [np.array([2, 3, 0]), np.array([0]), np.array([6, 0])]
    batch = next(iter(ArrayLoader(x, y, batch_size=3)))
    assert isinstance(batch, Batch) and batch.lengths.tolist() == [3, 1, 2]
    assert batch.inputs.shape == (3, 3) and batch.targets.shape == (3, 3)
    assert batch.targets[:, 1].tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]
    # padded arrays with lengths: trimmed to the batch's longest sequence
    xp, lengths = pad_sequences(x)
    batch = next(iter(ArrayLoader(xp[1:], np.array([0, 1]), lengths[1:], batch_size=2)))
    assert batch.inputs.shape == (2, 2) and batch.targets.tolist() == [0, 1]
    with pytest.raises(ValueError, match="samples"):
        ArrayLoader(np.zeros((3, 2)), np.zeros(4))


def test_char_vocab_round_trip_and_config():
    vocab = CharVocab.from_text("hello, world\n")
    assert len(vocab) == len(set("hello, world\n")) and vocab.chars == sorted(vocab.chars)
    ids = vocab.encode("low\n")
    assert ids.dtype == np.int64 and vocab.decode(ids) == "low\n"
    with pytest.raises(KeyError, match="not in the vocabulary"):
        vocab.encode("xyz")
    assert CharVocab.from_config(vocab.to_config()) == vocab
    unk = CharVocab.from_text("abc", unk="?")
    assert unk.decode(unk.encode("abz")) == "ab?"


def test_batchify_and_stream_batcher_like_word_language_model():
    tokens = np.arange(26)
    data = batchify(tokens, 4)                    # 6 steps x 4 streams, 2 tokens dropped
    assert data.shape == (6, 4) and data[:, 1].tolist() == list(range(6, 12))
    batches = list(StreamBatcher(tokens, 4, bptt=2))
    assert len(batches) == len(StreamBatcher(tokens, 4, bptt=2)) == 3
    assert [b.carry for b in batches] == [False, True, True]
    assert [b.inputs.shape[0] for b in batches] == [2, 2, 1]
    for b in batches:                             # targets = inputs shifted by one
        assert np.array_equal(b.targets, b.inputs + 1)
    joined = np.concatenate([b.inputs for b in batches])
    assert np.array_equal(joined, data[:-1])
    assert StreamBatcher(tokens, 4, 2).num_tokens == 5 * 4
    bf = next(iter(StreamBatcher(tokens, 4, bptt=2, time_major=False)))
    assert bf.inputs.shape == (4, 2)
    with pytest.raises(ValueError, match="too short"):
        batchify(np.arange(5), 4)


def test_train_val_split_is_contiguous():
    train, val = train_val_split(np.arange(100), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
