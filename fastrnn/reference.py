"""Plain-NumPy reference implementation of one RNN layer in one direction.

This module is the correctness oracle for the compiled kernels in
``fastrnn._recurrent``.  It is written for clarity, not speed: one Python loop
over time steps, vectorised over the batch.  Both modules expose exactly the
same functions with the same signatures, so the layers (and the tests) can call
either one.

Cells (PyTorch definitions, ``torch.nn.RNN`` / ``LSTM`` / ``GRU``)
------------------------------------------------------------------
``x_t`` is ``(B, I)``, ``h_t`` is ``(B, H)``; ``W_ih`` is ``(G*H, I)``,
``W_hh`` is ``(G*H, H)``, biases are ``(G*H,)`` with ``G = gate_count(cell)``.
Gate blocks are stacked along the rows of the weights (``H`` rows each).

* ``CELL_RNN_TANH`` / ``CELL_RNN_RELU`` (G = 1)::

      h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)      act = tanh | relu

* ``CELL_LSTM`` (G = 4, gate order i, f, g, o)::

      i = sigmoid(.), f = sigmoid(.), g = tanh(.), o = sigmoid(.)
          where (.) = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh  (per block)
      c_t = f * c_{t-1} + i * g
      h_t = o * tanh(c_t)

* ``CELL_GRU`` (G = 3, gate order r, z, n)::

      r = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
      z = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
      n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
      h_t = (1 - z) * n + z * h_{t-1}

Contract
--------
``gate_count(cell) -> int``: 1, 1, 4, 3 for the four cells.

``forward(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
reverse, training, out, out_col, n_threads) -> (h_n, c_n, cache)``

* ``x``: ``(T, B, I)`` C-contiguous float32 or float64.  All arrays share
  ``x``'s dtype and all computation happens in that dtype.
* ``weight_ih``: ``(G*H, I)``; ``weight_hh``: ``(G*H, H)``;
  ``bias_ih``, ``bias_hh``: ``(G*H,)`` or both ``None`` (no bias).
* ``h0``: ``(B, H)``; ``c0``: ``(B, H)`` for LSTM, ``None`` otherwise.
* ``lengths``: int64 ``(B,)`` with ``1 <= lengths[b] <= T``, or ``None``
  (all sequences have length ``T``).
* ``reverse``: process time steps ``T-1`` down to ``0`` instead of ``0..T-1``.
* Sequence ``b`` is *active* at time ``t`` iff ``t < lengths[b]`` (same rule in
  both directions).  An inactive step leaves ``b``'s state (h, c) unchanged and
  writes zeros to the output.  Hence in the forward direction ``h_n[b]`` is the
  state after ``b``'s own last step, and in the reverse direction ``b``'s
  recurrence starts from ``h0`` at its own last step ``t = lengths[b] - 1``.
  This is exactly PyTorch's ``pack_padded_sequence(enforce_sorted=False)``
  semantics.
* ``training``: if true, return a cache (opaque to callers) holding what
  ``backward`` needs; otherwise ``cache`` is ``None``.
* ``out``: ``(T, B, D_out)`` preallocated (possibly ``np.empty``).  Columns
  ``out_col:out_col+H`` are written at *all* positions (zeros at inactive
  ones); other columns are never touched.
* ``n_threads``: ignored by the reference.
* Returns ``h_n`` ``(B, H)``, ``c_n`` ``(B, H)`` (LSTM) or ``None``, ``cache``.

``backward(cell, cache, x, weight_ih, weight_hh, lengths, reverse, grad_out,
out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih, grad_weight_hh,
grad_bias_ih, grad_bias_hh, n_threads) -> (grad_h0, grad_c0)``

* ``grad_out``: ``(T, B, D_out)``, gradient of the loss w.r.t. ``out``; only
  columns ``out_col:out_col+H`` are used, and values at inactive positions are
  ignored (the output there is a constant zero).
* ``grad_h_n``: ``(B, H)`` or ``None`` (zeros); ``grad_c_n``: ``(B, H)`` or
  ``None`` (LSTM only).
* ``grad_x`` ``(T, B, I)``, ``grad_weight_ih``, ``grad_weight_hh``,
  ``grad_bias_ih``, ``grad_bias_hh``: gradients are ACCUMULATED into these
  arrays in place (``+=``); the bias gradients are ``None`` without bias.
* Returns ``grad_h0`` ``(B, H)`` and ``grad_c0`` ``(B, H)`` (LSTM) or ``None``.

Cache structure (reference only; the compiled module has its own)
-----------------------------------------------------------------
A ``dict`` of arrays indexed by the real time step ``t`` (not processing
order):

* ``"h_prev"``: ``(T, B, H)`` hidden state entering step ``t``.
* ``"gates"``: ``(T, B, G*H)`` gate values *after* their activation
  (RNN: ``h_t`` itself; LSTM: ``i, f, g, o``; GRU: ``r, z, n``).
* LSTM only: ``"c_prev"`` ``(T, B, H)`` cell state entering step ``t`` and
  ``"c"`` ``(T, B, H)`` cell state produced by step ``t``.
* GRU only: ``"hn"`` ``(T, B, H)`` = ``h_{t-1} W_hn^T + b_hn`` (needed for the
  gradient of ``r``).

Entries at inactive positions hold values computed from the carried-over state;
they are masked out in ``backward``.
"""

import numpy as np

CELL_RNN_TANH = 0
CELL_RNN_RELU = 1
CELL_LSTM = 2
CELL_GRU = 3

_GATE_COUNTS = {CELL_RNN_TANH: 1, CELL_RNN_RELU: 1, CELL_LSTM: 4, CELL_GRU: 3}


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def gate_count(cell):
    """Number of gate blocks of ``cell``: 1 (RNN), 4 (LSTM) or 3 (GRU)."""
    try:
        return _GATE_COUNTS[cell]
    except KeyError:
        raise ValueError("unknown cell type %r" % (cell,)) from None


def hidden_size(weight_hh):
    """H, read from ``weight_hh`` of shape ``(G*H, H)``."""
    return weight_hh.shape[1]


def seq_len(x):
    """T, the (padded) number of time steps of ``x`` ``(T, B, I)``."""
    return x.shape[0]


def batch_size(x):
    return x.shape[1]


def time_steps(T, reverse):
    """Time indices in processing order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def active_mask(lengths, T, B):
    """Boolean ``(T, B)`` array: ``mask[t, b]`` iff ``t < lengths[b]``."""
    if lengths is None:
        return np.ones((T, B), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (B,):
        raise ValueError("lengths must have shape (%d,), got %r" % (B, lengths.shape))
    if np.any(lengths < 1) or np.any(lengths > T):
        raise ValueError("lengths must satisfy 1 <= lengths[b] <= T = %d" % T)
    return np.arange(T)[:, None] < lengths[None, :]


def sigmoid(a):
    """Numerically stable logistic function (no overflow for large |a|)."""
    e = np.exp(-np.abs(a))  # in (0, 1], never overflows
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def split_gates(a, G):
    """Split ``(..., G*H)`` into ``G`` views of shape ``(..., H)``."""
    return np.split(a, G, axis=-1)


# ---------------------------------------------------------------------------
# Single-step cells.  Inputs are pre-activations split into the part coming
# from x (``gi = x_t W_ih^T + b_ih``) and from h (``gh = h W_hh^T + b_hh``).
# Each returns (h_new, c_new or None, gates, extra) where ``gates`` are the
# activated gate values stored in the cache.
# ---------------------------------------------------------------------------

def _rnn_step(cell, gi, gh):
    a = gi + gh
    h_new = np.tanh(a) if cell == CELL_RNN_TANH else np.maximum(a, 0)
    return h_new, h_new


def _lstm_step(gi, gh, c_prev):
    a_i, a_f, a_g, a_o = split_gates(gi + gh, 4)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c_new = f * c_prev + i * g
    h_new = o * np.tanh(c_new)
    return h_new, c_new, np.concatenate([i, f, g, o], axis=-1)


def _gru_step(gi, gh, h_prev):
    gi_r, gi_z, gi_n = split_gates(gi, 3)
    gh_r, gh_z, hn = split_gates(gh, 3)
    r = sigmoid(gi_r + gh_r)
    z = sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * hn)
    h_new = (1 - z) * n + z * h_prev
    return h_new, np.concatenate([r, z, n], axis=-1), hn


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

def forward(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
            reverse, training, out, out_col, n_threads, recurrent_mask=None):
    """Run one layer, one direction.  See the module docstring for the contract.

    ``recurrent_mask`` (B, H) or None: variational (recurrent) dropout, training
    only: the state entering the recurrent product is ``h * recurrent_mask`` at
    every step (one mask per sequence, shared over time); the GRU's ``z * h``
    term uses the unmasked state.
    """
    G = gate_count(cell)
    T, B, H = seq_len(x), batch_size(x), hidden_size(weight_hh)
    dtype = x.dtype
    is_lstm = cell == CELL_LSTM
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must both be given or both be None")
    if is_lstm and c0 is None:
        raise ValueError("LSTM needs c0")
    mask = active_mask(lengths, T, B)
    cols = slice(out_col, out_col + H)
    if recurrent_mask is not None and not training:
        raise ValueError("recurrent_mask is for training (dropout is off in inference)")

    h = np.array(h0, dtype=dtype, copy=True)
    c = np.array(c0, dtype=dtype, copy=True) if is_lstm else None

    if training:
        cache = {"h_prev": np.zeros((T, B, H), dtype),
                 "gates": np.zeros((T, B, G * H), dtype)}
        if is_lstm:
            cache["c_prev"] = np.zeros((T, B, H), dtype)
            cache["c"] = np.zeros((T, B, H), dtype)
        if cell == CELL_GRU:
            cache["hn"] = np.zeros((T, B, H), dtype)
        cache["recurrent_mask"] = recurrent_mask
    else:
        cache = None

    for t in time_steps(T, reverse):
        gi = x[t] @ weight_ih.T
        gh = (h if recurrent_mask is None else h * recurrent_mask) @ weight_hh.T
        if bias_ih is not None:
            gi = gi + bias_ih
            gh = gh + bias_hh

        c_new = None
        if cell in (CELL_RNN_TANH, CELL_RNN_RELU):
            h_new, gates = _rnn_step(cell, gi, gh)
        elif is_lstm:
            h_new, c_new, gates = _lstm_step(gi, gh, c)
        else:
            h_new, gates, hn = _gru_step(gi, gh, h)

        if training:
            cache["h_prev"][t] = h
            cache["gates"][t] = gates
            if is_lstm:
                cache["c_prev"][t] = c
                cache["c"][t] = c_new
            if cell == CELL_GRU:
                cache["hn"][t] = hn

        m = mask[t][:, None]                       # (B, 1)
        out[t, :, cols] = np.where(m, h_new, 0)
        h = np.where(m, h_new, h)                  # inactive: state unchanged
        if is_lstm:
            c = np.where(m, c_new, c)

    return h, c, cache


# ---------------------------------------------------------------------------
# Backward (BPTT).  Each single-step backward takes dh (and dc) w.r.t. the
# step's outputs and returns the gradients w.r.t. the x-side pre-activation
# ``gi``, the h-side pre-activation ``gh`` (the two differ only for the GRU
# n gate) and the "direct" gradient to the previous state that does not flow
# through ``gh`` (and dc_prev for LSTM).
# ---------------------------------------------------------------------------

def _rnn_step_backward(cell, dh, h_new):
    if cell == CELL_RNN_TANH:
        da = dh * (1 - h_new * h_new)
    else:
        da = dh * (h_new > 0)
    return da, da, 0


def _lstm_step_backward(dh, dc, gates, c_prev, c_new):
    i, f, g, o = split_gates(gates, 4)
    tanh_c = np.tanh(c_new)
    do = dh * tanh_c
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    di = dc_total * g
    df = dc_total * c_prev
    dg = dc_total * i
    dc_prev = dc_total * f
    da = np.concatenate([di * i * (1 - i),
                         df * f * (1 - f),
                         dg * (1 - g * g),
                         do * o * (1 - o)], axis=-1)
    return da, da, dc_prev


def _gru_step_backward(dh, gates, hn, h_prev):
    r, z, n = split_gates(gates, 3)
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    dh_prev_direct = dh * z
    da_n = dn * (1 - n * n)        # grad w.r.t. W_in x + b_in + r * hn
    dr = da_n * hn
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=-1)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=-1)
    return dgi, dgh, dh_prev_direct


def backward(cell, cache, x, weight_ih, weight_hh, lengths, reverse, grad_out,
             out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih, grad_weight_hh,
             grad_bias_ih, grad_bias_hh, n_threads):
    """Backpropagate through one layer, one direction.

    Accumulates (+=) into grad_x, grad_weight_ih, grad_weight_hh, grad_bias_ih,
    grad_bias_hh; returns (grad_h0, grad_c0 or None).
    """
    if cache is None:
        raise ValueError("backward needs the cache of forward(training=True)")
    gate_count(cell)
    T, B, H = seq_len(x), batch_size(x), hidden_size(weight_hh)
    dtype = x.dtype
    is_lstm = cell == CELL_LSTM
    mask = active_mask(lengths, T, B)
    cols = slice(out_col, out_col + H)
    recurrent_mask = cache.get("recurrent_mask")

    dh = np.zeros((B, H), dtype) if grad_h_n is None else np.array(grad_h_n, dtype=dtype)
    dc = None
    if is_lstm:
        dc = np.zeros((B, H), dtype) if grad_c_n is None else np.array(grad_c_n, dtype=dtype)

    # Walk the processing order backwards.
    for t in reversed(time_steps(T, reverse)):
        m = mask[t][:, None]                               # (B, 1)
        # The state after step t receives the carried gradient plus the
        # gradient of out[t] (only where the step is active).
        dh_step = dh + np.where(m, grad_out[t, :, cols], 0)
        h_prev = cache["h_prev"][t]
        gates = cache["gates"][t]

        dc_prev = None
        if cell in (CELL_RNN_TANH, CELL_RNN_RELU):
            dgi, dgh, dh_direct = _rnn_step_backward(cell, dh_step, gates)
        elif is_lstm:
            dgi, dgh, dc_prev = _lstm_step_backward(
                dh_step, dc, gates, cache["c_prev"][t], cache["c"][t])
            dh_direct = 0
        else:
            dgi, dgh, dh_direct = _gru_step_backward(
                dh_step, gates, cache["hn"][t], h_prev)

        # Inactive steps contribute nothing and pass the gradient through.
        dgi = np.where(m, dgi, 0)
        dgh = np.where(m, dgh, 0)

        grad_x[t] += dgi @ weight_ih
        grad_weight_ih += dgi.T @ x[t]
        grad_weight_hh += dgh.T @ (h_prev if recurrent_mask is None else h_prev * recurrent_mask)
        if grad_bias_ih is not None:
            grad_bias_ih += dgi.sum(axis=0)
            grad_bias_hh += dgh.sum(axis=0)

        dh_rec = dgh @ weight_hh
        dh_prev = (dh_rec if recurrent_mask is None else dh_rec * recurrent_mask) + dh_direct
        dh = np.where(m, dh_prev, dh)
        if is_lstm:
            dc = np.where(m, dc_prev, dc)

    return dh, dc
