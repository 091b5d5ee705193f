"""Data utilities for training: batching NumPy arrays, padding, a character
vocabulary, and contiguous-stream batches for language models.

- ``Batch(inputs, targets=None, lengths=None, mask=None, carry=False)``: what a
  loader yields and what ``fastrnn.Trainer`` consumes. ``carry=True`` says the
  batch continues the previous batch's sequences (its recurrent state should
  be carried over, as in language-model streams).
- ``pad_sequences(sequences, ...)``: a list of variable-length sequences ->
  ``(padded, lengths)``.
- ``ArrayLoader(x, y=None, lengths=None, batch_size=32, shuffle=False, seed=None,
  ...)``: mini-batches over samples along axis 0 (arrays, or lists of
  variable-length sequences, padded per batch), in the recurrent layers'
  time-major layout by default. Shuffling is reproducible: the order of epoch
  ``e`` depends only on ``(seed, e)``.
- ``CharVocab``: a character vocabulary (``encode`` text -> int array,
  ``decode`` ids -> text), with ``to_config()`` / ``from_config()`` for saving.
- ``batchify(tokens, batch_size)`` and ``StreamBatcher(tokens, batch_size, bptt)``:
  PyTorch word_language_model's scheme: cut one long token stream into
  ``batch_size`` contiguous streams (columns) and iterate over chunks of
  ``bptt`` steps, targets shifted by one; every chunk after the first has
  ``carry=True`` so a trainer carries (detached) state across chunks
  (truncated BPTT).
- ``train_val_split(tokens, val_fraction)``: contiguous split of a stream.
"""
import math
from collections import namedtuple

import numpy as np

__all__ = ["Batch", "pad_sequences", "ArrayLoader", "CharVocab", "batchify", "StreamBatcher",
           "train_val_split", "IGNORE_INDEX"]

#: Padding value of integer per-step targets (``CrossEntropyLoss``'s default ignore_index).
IGNORE_INDEX = -100


class Batch(namedtuple("Batch", ["inputs", "targets", "lengths", "mask", "carry"])):
    """One mini-batch. ``inputs`` / ``targets`` are in the model's layout
    (time-major ``(seq_len, batch, ...)`` unless the model is batch_first);
    ``lengths`` (one int per sequence) or None; ``mask`` (boolean, broadcastable
    to the targets, True = counts in the loss) or None; ``carry``: this batch
    continues the previous one's sequences (carry the recurrent state)."""

    __slots__ = ()

    def __new__(cls, inputs, targets=None, lengths=None, mask=None, carry=False):
        return super().__new__(cls, inputs, targets, lengths, mask, bool(carry))


def _is_sequence_list(value):
    """A list/tuple of arrays (variable-length sequences), not an ndarray."""
    return isinstance(value, (list, tuple)) and not isinstance(value, np.ndarray)


def pad_sequences(sequences, pad_value=0, dtype=None, time_major=False, max_len=None):
    """Pad variable-length sequences to one array.

    ``sequences``: a list of arrays ``(T_i,)`` or ``(T_i, F...)`` (same trailing
    shape). Returns ``(padded, lengths)``: ``padded`` is ``(N, T_max, ...)``
    (``(T_max, N, ...)`` with ``time_major``), filled with ``pad_value`` past
    each sequence's end; ``lengths`` is an int64 array ``(N,)``. ``max_len``
    truncates longer sequences (and fixes the padded length). Empty sequences
    are rejected (the recurrent layers need lengths >= 1).
    """
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError("pad_sequences needs at least one sequence")
    trailing = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim < 1:
            raise ValueError(f"sequence {i} is a scalar; sequences must have a time axis")
        if a.shape[1:] != trailing:
            raise ValueError(f"sequence {i} has trailing shape {a.shape[1:]}, sequence 0 "
                             f"{trailing}: all must match")
        if a.shape[0] == 0:
            raise ValueError(f"sequence {i} is empty (lengths must be >= 1)")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    if max_len is not None:
        lengths = np.minimum(lengths, int(max_len))
    T = int(lengths.max()) if max_len is None else int(max_len)
    if dtype is None:
        dtype = np.result_type(*[a.dtype for a in arrays])
    padded = np.full((len(arrays), T) + trailing, pad_value, dtype=dtype)
    for i, (a, n) in enumerate(zip(arrays, lengths)):
        padded[i, :n] = a[:n]
    if time_major:
        padded = np.ascontiguousarray(np.swapaxes(padded, 0, 1))
    return padded, lengths


def _default_target_pad(sequences):
    kind = np.asarray(sequences[0]).dtype.kind
    return IGNORE_INDEX if kind in "iu" else 0


class ArrayLoader:
    """Mini-batches over samples along axis 0.

    ``ArrayLoader(x, y=None, lengths=None, *, batch_size=32, shuffle=False,
    seed=None, drop_last=False, time_major=True, step_targets=None, pad_value=0,
    target_pad_value=None)``

    - ``x``: an array ``(N, T, ...)`` of padded sequences, or a list of N
      variable-length sequences (padded per batch to the batch's longest, and
      ``lengths`` computed).
    - ``y``: targets: an array ``(N, ...)``, or a list of variable-length per-step
      target sequences (padded with ``target_pad_value``: -100, the
      cross-entropy ignore index, for integer targets, 0 otherwise), or None.
    - ``lengths``: for padded arrays, each sample's valid length (batches are then
      trimmed to their longest sequence).
    - ``step_targets``: whether ``y`` has one target per step (transposed with
      the inputs) or one per sequence. None: per-step if ``y`` is a list of
      sequences, or an array whose axis 1 has the length of ``x``'s time axis.
    - ``time_major``: batches as ``(T, B, ...)`` (the recurrent layers'
      default); False gives ``(B, T, ...)`` for batch_first models.

    Iterating yields ``Batch`` tuples. With ``shuffle`` the order of epoch ``e``
    (the loader counts its iterations; ``set_epoch(e)`` sets the count) is a
    permutation drawn from ``(seed, e)``, so runs are reproducible.
    """

    def __init__(self, x, y=None, lengths=None, *, batch_size=32, shuffle=False, seed=None,
                 drop_last=False, time_major=True, step_targets=None, pad_value=0,
                 target_pad_value=None):
        self.ragged = _is_sequence_list(x)
        self.x = list(x) if self.ragged else np.asarray(x)
        n = len(self.x)
        if n == 0:
            raise ValueError("x holds no samples")
        if not self.ragged and self.x.ndim < 2:
            raise ValueError(f"x must be (N, seq_len, ...) sequences or a list of sequences, "
                             f"got shape {self.x.shape}")
        self.ragged_y = y is not None and _is_sequence_list(y)
        self.y = None if y is None else (list(y) if self.ragged_y else np.asarray(y))
        if self.y is not None and len(self.y) != n:
            raise ValueError(f"x has {n} samples but y has {len(self.y)}")
        if lengths is not None:
            if self.ragged:
                raise ValueError("lengths are computed for a list of sequences; give lengths "
                                 "only with a padded array")
            lengths = np.asarray(lengths)
            if lengths.dtype.kind not in "iu" or lengths.shape != (n,):
                raise ValueError(f"lengths must be {n} integers, got {lengths.dtype} "
                                 f"{lengths.shape}")
            if lengths.min() < 1 or lengths.max() > self.x.shape[1]:
                raise ValueError(f"lengths must be in 1..{self.x.shape[1]}")
            lengths = lengths.astype(np.int64)
        self.lengths = lengths
        if step_targets is None:
            if self.y is None:
                step_targets = False
            elif self.ragged_y:
                step_targets = True
            elif self.ragged:
                step_targets = False
            else:
                step_targets = self.y.ndim >= 2 and self.y.shape[1] == self.x.shape[1]
        self.step_targets = bool(step_targets)
        if self.ragged_y and not self.step_targets:
            raise ValueError("a list of target sequences means per-step targets "
                             "(step_targets=False contradicts it)")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = (int(np.random.SeedSequence().entropy % (2**63)) if seed is None
                     else int(seed))
        self.drop_last = bool(drop_last)
        self.time_major = bool(time_major)
        self.pad_value = pad_value
        self.target_pad_value = target_pad_value
        self.epoch = 0

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self):
        return len(self.x)

    def set_epoch(self, epoch):
        """Make the next iteration use epoch ``epoch``'s order."""
        self.epoch = int(epoch)

    def order(self, epoch):
        """The sample order of epoch ``epoch``."""
        n = len(self.x)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def __iter__(self):
        index = self.order(self.epoch)
        self.epoch += 1
        stop = len(self) * self.batch_size
        for start in range(0, stop, self.batch_size):
            yield self.make_batch(index[start:start + self.batch_size])

    def _layout(self, array):
        return np.ascontiguousarray(np.swapaxes(array, 0, 1)) if self.time_major else array

    def make_batch(self, index):
        """The Batch of the samples ``index`` (in that order)."""
        if self.ragged:
            inputs, lengths = pad_sequences([self.x[i] for i in index], self.pad_value)
        else:
            inputs = self.x[index]
            lengths = None if self.lengths is None else self.lengths[index]
            if lengths is not None:
                inputs = inputs[:, :int(lengths.max())]
        T = inputs.shape[1]
        targets = None
        if self.y is not None:
            if self.ragged_y:
                seqs = [self.y[i] for i in index]
                pad = (self.target_pad_value if self.target_pad_value is not None
                       else _default_target_pad(seqs))
                targets, target_lengths = pad_sequences(seqs, pad, max_len=T)
                if lengths is not None and np.any(target_lengths < np.minimum(lengths, T)):
                    raise ValueError("a target sequence is shorter than its input sequence")
            else:
                targets = self.y[index]
                if self.step_targets:
                    targets = targets[:, :T]
            if self.step_targets:
                targets = self._layout(targets)
        return Batch(self._layout(inputs), targets, lengths)


class CharVocab:
    """Character vocabulary: ``CharVocab(chars, unk=None)``.

    ``CharVocab.from_text(text)`` takes the sorted distinct characters of a text.
    ``encode(text)`` -> int64 ids (unknown characters raise KeyError, or map to
    ``unk`` if it is one of the characters); ``decode(ids)`` -> str.
    ``to_config()`` / ``from_config()`` give a JSON-able dict (what
    ``fastrnn.io.save`` stores).
    """

    def __init__(self, chars, unk=None):
        chars = list(chars)
        if not chars:
            raise ValueError("a vocabulary needs at least one character")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"vocabulary entries must be single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be distinct")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        if unk is not None and unk not in self.index:
            raise ValueError(f"unk {unk!r} is not in the vocabulary")
        self.unk = unk

    @classmethod
    def from_text(cls, text, unk=None):
        chars = sorted(set(text))
        if unk is not None and unk not in chars:
            chars.append(unk)
        return cls(chars, unk=unk)

    def __len__(self):
        return len(self.chars)

    def __contains__(self, char):
        return char in self.index

    def __eq__(self, other):
        return isinstance(other, CharVocab) and (self.chars, self.unk) == (other.chars, other.unk)

    def __repr__(self):
        return f"CharVocab({len(self)} characters)"

    def encode(self, text):
        """Text -> int64 array of ids."""
        if self.unk is None:
            missing = sorted(set(text) - self.index.keys())
            if missing:
                raise KeyError(f"characters not in the vocabulary: {missing[:10]!r}")
            return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))
        u = self.index[self.unk]
        return np.fromiter((self.index.get(c, u) for c in text), dtype=np.int64,
                           count=len(text))

    def decode(self, ids):
        """Ids (any integer array or iterable) -> text."""
        chars = self.chars
        return "".join(chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_config(self):
        return {"type": "char", "chars": "".join(self.chars), "unk": self.unk}

    @classmethod
    def from_config(cls, config):
        if config.get("type") != "char":
            raise ValueError(f"not a character vocabulary config: type {config.get('type')!r}")
        return cls(list(config["chars"]), unk=config.get("unk"))


def train_val_split(tokens, val_fraction=0.1):
    """Contiguous split of a token stream: the first ``1 - val_fraction`` for
    training, the rest for validation."""
    tokens = np.asarray(tokens)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    cut = len(tokens) - int(round(len(tokens) * float(val_fraction)))
    return tokens[:cut], tokens[cut:]


def batchify(tokens, batch_size):
    """Cut a 1-D token stream into ``batch_size`` contiguous streams:
    ``(n_steps, batch_size)`` with column ``b`` holding tokens
    ``[b * n_steps, (b + 1) * n_steps)``; the remainder is dropped (PyTorch
    word_language_model's ``batchify``)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D stream, got shape {tokens.shape}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_steps = len(tokens) // batch_size
    if n_steps < 2:
        raise ValueError(f"a stream of {len(tokens)} tokens is too short for {batch_size} "
                         f"streams (each needs at least 2 tokens)")
    return np.ascontiguousarray(tokens[:n_steps * batch_size].reshape(batch_size, n_steps).T)


class StreamBatcher:
    """Language-model batches over one token stream with truncated BPTT.

    ``StreamBatcher(tokens, batch_size, bptt, time_major=True)``: ``batchify``
    the stream into ``batch_size`` columns, then yield ``Batch(x, y, carry=...)``
    for chunks ``x = data[i:i+L]``, ``y = data[i+1:i+1+L]`` with ``L = bptt``
    (shorter at the end), ``i = 0, bptt, 2 bptt, ...``. Every chunk but the
    first has ``carry=True``: column ``b`` of chunk ``k+1`` continues column
    ``b`` of chunk ``k``, so the trainer carries the recurrent state (values
    only; the gradient stops at the chunk boundary). ``len()`` is the number of
    chunks; ``num_tokens`` the number of predicted tokens per pass.
    """

    def __init__(self, tokens, batch_size, bptt, time_major=True):
        self.data = batchify(tokens, batch_size)
        self.bptt = int(bptt)
        if self.bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt!r}")
        self.batch_size = int(batch_size)
        self.time_major = bool(time_major)

    def __len__(self):
        return math.ceil((self.data.shape[0] - 1) / self.bptt)

    @property
    def num_tokens(self):
        return (self.data.shape[0] - 1) * self.batch_size

    def __iter__(self):
        n = self.data.shape[0]
        for k, i in enumerate(range(0, n - 1, self.bptt)):
            L = min(self.bptt, n - 1 - i)
            x, y = self.data[i:i + L], self.data[i + 1:i + 1 + L]
            if not self.time_major:
                x, y = np.ascontiguousarray(x.T), np.ascontiguousarray(y.T)
            yield Batch(x, y, carry=k > 0)
