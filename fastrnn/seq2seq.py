"""Encoder-decoder (seq2seq) model over token sequences.

``encoder_embed -> encoder`` reads the source; the encoder's final state is the
decoder's initial state; ``decoder_embed -> decoder -> head`` predicts the
target one token at a time.

- Training uses teacher forcing: the decoder input is ``<bos> + target[:-1]``,
  run as ONE full-sequence call of the decoder; the backward goes through the
  decoder into its initial state (the recurrent layers' ``backward(grad_out,
  grad_hn)`` returns dL/dhx) and from there into the encoder as its
  ``grad_hn``.
- Inference is greedy decoding: the decoder is stepped one token at a time
  (eval-mode calls with seq_len 1, the state carried in ``hx``), each step
  feeding back the arg-max token, until every sequence has produced
  ``<eos>`` or ``max_len`` tokens.
"""
import numpy as np

from .layers import LSTM
from .nn import (Embedding, Linear, Module, _child_seeds, _is_module, _no_cache_error,
                 _returns_state, make_recurrent, module_config, module_from_config)

__all__ = ["Seq2Seq"]


def _token_id(name, value, vocab, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 0 <= value < vocab:
        raise ValueError(f"{name} must be a token id in 0..{vocab - 1}, got {value!r}")
    return int(value)


class Seq2Seq(Module):
    """Encoder-decoder model (see the module docstring).

    ``Seq2Seq(encoder_embed, encoder, decoder_embed, decoder, head, bos_idx,
    eos_idx=None, pad_idx=None)`` composes given modules: two ``Embedding``s,
    two recurrent layers (RNN / LSTM / GRU, unidirectional, the same
    ``hidden_size``, ``num_layers`` and ``batch_first``, and both LSTM or both
    not: the encoder's final state must fit the decoder's initial state) and a
    ``head`` on the decoder outputs (usually ``Linear(hidden, tgt_vocab)``).
    ``Seq2Seq.build(src_vocab, tgt_vocab, hidden_size, ...)`` creates the
    standard parts. Parameter names: ``encoder_embed.weight``,
    ``encoder.weight_ih_l0``, ..., ``decoder_embed.weight``, ``decoder.*``,
    ``head.weight``, ``head.bias``.

    Token arrays are ``(seq_len, batch)`` integers (``(batch, seq_len)`` with
    ``batch_first``; unbatched ``(seq_len,)``).

    - ``forward(src, tgt, src_lengths=None) -> logits`` of shape
      ``tgt.shape + (tgt_vocab,)``: position t predicts ``tgt[t]`` from the
      source and ``tgt[:t]`` (teacher forcing). Targets may be padded after
      their end (with ``pad_idx``, say): the decoder is causal, so padding
      changes no earlier logit; mask it in the loss
      (``CrossEntropyLoss(ignore_index=pad_idx)``). ``src_lengths`` (one per
      sequence) makes the encoder stop at each source's end.
    - ``backward(grad_logits)`` backpropagates through head, decoder, the
      state hand-over and the encoder; returns None (token inputs). The
      gradient w.r.t. the encoder's initial state is left in ``grad_hx``.
    - ``greedy_decode(src, src_lengths=None, max_len=50)`` -> predicted token
      ids ``(steps, batch)`` (layout as the inputs), steps <= max_len; after a
      sequence's ``<eos>`` the rest is ``pad_idx`` (``eos_idx`` if there is no
      pad). Runs in eval mode and restores the previous mode (so, like
      ``eval()``, it drops a pending training-mode forward: call ``backward``
      first).
    """

    def __init__(self, encoder_embed, encoder, decoder_embed, decoder, head, bos_idx,
                 eos_idx=None, pad_idx=None):
        super().__init__()
        for name, module in (("encoder_embed", encoder_embed), ("decoder_embed", decoder_embed),
                             ("head", head)):
            if not _is_module(module):
                raise TypeError(f"{name} must be a module, got {type(module).__name__}")
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            if not _returns_state(module):
                raise TypeError(f"{name} must be a recurrent layer (RNN, LSTM, GRU), got "
                                f"{type(module).__name__}")
            if getattr(module, "bidirectional", False):
                raise ValueError(f"{name} must be unidirectional (the encoder's final state "
                                 f"starts the decoder)")
        if (encoder.hidden_size, encoder.num_layers) != (decoder.hidden_size,
                                                         decoder.num_layers):
            raise ValueError(f"encoder and decoder must have the same hidden_size and "
                             f"num_layers, got ({encoder.hidden_size}, {encoder.num_layers}) and "
                             f"({decoder.hidden_size}, {decoder.num_layers})")
        if isinstance(encoder, LSTM) != isinstance(decoder, LSTM):
            raise ValueError("encoder and decoder must both be LSTMs or both not (their states "
                             "must have the same structure)")
        if bool(encoder.batch_first) != bool(decoder.batch_first):
            raise ValueError("encoder and decoder must have the same batch_first")
        self.encoder_embed = encoder_embed
        self.encoder = encoder
        self.decoder_embed = decoder_embed
        self.decoder = decoder
        self.head = head
        vocab = getattr(decoder_embed, "num_embeddings", None)
        vocab = vocab if vocab is not None else np.iinfo(np.int64).max
        self.bos_idx = _token_id("bos_idx", bos_idx, vocab)
        self.eos_idx = _token_id("eos_idx", eos_idx, vocab, allow_none=True)
        self.pad_idx = _token_id("pad_idx", pad_idx, vocab, allow_none=True)
        self.final_state = None
        self.grad_hx = None

    @classmethod
    def build(cls, src_vocab, tgt_vocab, hidden_size, *, bos_idx, eos_idx=None, pad_idx=None,
              embedding_dim=None, cell="gru", num_layers=1, batch_first=False,
              dtype="float32", seed=None, impl="cython", n_threads=None):
        """Standard model: Embedding(src_vocab, embedding_dim) -> encoder;
        Embedding(tgt_vocab, embedding_dim) -> decoder -> Linear(hidden, tgt_vocab).
        ``cell`` "rnn", "rnn_relu", "lstm" or "gru" for both; ``embedding_dim``
        defaults to hidden_size; ``pad_idx`` (if given) is the embeddings'
        padding_idx. ``seed`` seeds every part."""
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        seeds = _child_seeds(seed, 5)
        rnn_args = dict(num_layers=num_layers, batch_first=batch_first, dtype=dtype, impl=impl,
                        n_threads=n_threads)
        src_pad = pad_idx if pad_idx is not None and pad_idx < src_vocab else None
        tgt_pad = pad_idx if pad_idx is not None and pad_idx < tgt_vocab else None
        return cls(Embedding(src_vocab, embedding_dim, padding_idx=src_pad, dtype=dtype,
                             seed=seeds[0]),
                   make_recurrent(cell, embedding_dim, hidden_size, seed=seeds[1], **rnn_args),
                   Embedding(tgt_vocab, embedding_dim, padding_idx=tgt_pad, dtype=dtype,
                             seed=seeds[2]),
                   make_recurrent(cell, embedding_dim, hidden_size, seed=seeds[3], **rnn_args),
                   Linear(hidden_size, tgt_vocab, dtype=dtype, seed=seeds[4]),
                   bos_idx=bos_idx, eos_idx=eos_idx, pad_idx=pad_idx)

    @property
    def batch_first(self):
        return bool(self.decoder.batch_first)

    # -- helpers --

    @staticmethod
    def _tokens(name, tokens):
        array = np.asarray(tokens)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integer token ids, got dtype {array.dtype}")
        if array.ndim not in (1, 2):
            raise ValueError(f"{name} must be (seq_len, batch) token ids ((batch, seq_len) "
                             f"with batch_first, or (seq_len,)), got shape {array.shape}")
        return array

    def _time_axis(self, tokens):
        return 1 if tokens.ndim == 2 and self.batch_first else 0

    def decoder_inputs(self, tgt):
        """Teacher forcing: ``<bos>`` followed by ``tgt`` without its last token."""
        tgt = self._tokens("tgt", tgt)
        axis = self._time_axis(tgt)
        bos_shape = list(tgt.shape)
        bos_shape[axis] = 1
        bos = np.full(bos_shape, self.bos_idx, dtype=tgt.dtype)
        body = np.take(tgt, np.arange(tgt.shape[axis] - 1), axis=axis)
        return np.concatenate([bos, body], axis=axis)

    def _check_batch(self, src, tgt):
        if (src.ndim == 1) != (tgt.ndim == 1):
            raise ValueError(f"src and tgt must both be batched or both unbatched, got shapes "
                             f"{src.shape} and {tgt.shape}")
        if src.ndim == 2:
            batch_axis = 0 if self.batch_first else 1
            if src.shape[batch_axis] != tgt.shape[batch_axis]:
                raise ValueError(f"src and tgt must have the same batch size, got shapes "
                                 f"{src.shape} and {tgt.shape}")

    def encode(self, src, src_lengths=None, hx=None):
        """Run the encoder; returns its final state (LSTM: ``(h_n, c_n)``)."""
        src = self._tokens("src", src)
        _, state = self.encoder(self.encoder_embed(src), hx, src_lengths)
        return state

    # -- training --

    def forward(self, src, tgt, src_lengths=None, hx=None):
        """Teacher-forced logits ``tgt.shape + (tgt_vocab,)``; see the class docstring.
        ``hx``: the encoder's initial state (zeros if None)."""
        src = self._tokens("src", src)
        tgt = self._tokens("tgt", tgt)
        self._check_batch(src, tgt)
        if tgt.shape[self._time_axis(tgt)] < 1:
            raise ValueError("tgt must have at least one step")
        enc_out, state = self.encoder(self.encoder_embed(src), hx, src_lengths)
        self.final_state = state
        dec_out, _ = self.decoder(self.decoder_embed(self.decoder_inputs(tgt)), state)
        logits = self.head(dec_out)
        self._cache = {"enc_shape": enc_out.shape, "dtype": enc_out.dtype} \
            if self.training else None
        return logits

    def backward(self, grad_logits):
        """dL/dlogits -> None (token inputs); parameter gradients added to ``grads``."""
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        self._cache = None
        grad_dec_out = self.head.backward(grad_logits)
        grad_dec_in, grad_state = self.decoder.backward(grad_dec_out, None)
        self.decoder_embed.backward(grad_dec_in)
        # No attention: the encoder's outputs are unused, only its final state.
        grad_src, self.grad_hx = self.encoder.backward(
            np.zeros(cache["enc_shape"], cache["dtype"]), grad_state)
        self.encoder_embed.backward(grad_src)
        return None

    # -- inference --

    def greedy_decode(self, src, src_lengths=None, max_len=50, hx=None):
        """Greedy decoding; see the class docstring. Returns int64 token ids."""
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) \
                or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        src = self._tokens("src", src)
        unbatched = src.ndim == 1
        was_training = self.training
        self.eval()
        try:
            state = self.encode(src, src_lengths, hx)
            if unbatched:   # carry a batch of one through the steps
                state = (tuple(s[:, None] for s in state) if isinstance(state, tuple)
                         else state[:, None])
            batch = 1 if unbatched else src.shape[0 if self.batch_first else 1]
            token = np.full(batch, self.bos_idx, np.int64)
            done = np.zeros(batch, bool)
            fill = self.pad_idx if self.pad_idx is not None else self.eos_idx
            steps = []
            for _ in range(int(max_len)):
                step_in = token[:, None] if self.batch_first else token[None, :]
                out, state = self.decoder(self.decoder_embed(step_in), state)
                logits = self.head(out[:, 0] if self.batch_first else out[0])
                token = np.argmax(logits, axis=-1).astype(np.int64)
                if fill is not None:
                    token = np.where(done, fill, token)
                steps.append(token)
                if self.eos_idx is not None:
                    done |= token == self.eos_idx
                    if done.all():
                        break
            tokens = np.stack(steps, axis=0)          # (steps, batch)
        finally:
            self.train(was_training)
        if unbatched:
            return tokens[:, 0]
        return np.ascontiguousarray(tokens.T) if self.batch_first else tokens

    _CHILDREN = ("encoder_embed", "encoder", "decoder_embed", "decoder", "head")

    def get_config(self):
        """The children as ``module_config`` specs and the special token ids
        (``fastrnn.io.save``); the weights are in ``state_dict()``."""
        config = {name: module_config(getattr(self, name)) for name in self._CHILDREN}
        config.update(bos_idx=self.bos_idx, eos_idx=self.eos_idx, pad_idx=self.pad_idx)
        return config

    @classmethod
    def from_config(cls, config):
        """A fresh model (random weights) from ``get_config()``."""
        config = dict(config)
        for name in cls._CHILDREN:
            config[name] = module_from_config(config[name])
        return cls(**config)

    def extra_repr(self):
        return f"bos_idx={self.bos_idx}, eos_idx={self.eos_idx}, pad_idx={self.pad_idx}"
