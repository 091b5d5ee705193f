"""Plain-NumPy reference of one layer, one direction of the layer-normalised
LSTM with zoneout (the oracle of the compiled ``fastrnn._lnlstm``).

Written for clarity: one Python loop over time steps, vectorised over the
batch. ``fastrnn._lnlstm`` exposes the same two functions with the same
signatures, so ``fastrnn.LayerNormLSTM(impl="reference")`` and the tests can
call either.

Cell (PyTorch gate order i, f, g, o; ``H`` hidden units, ``G = 4H``)
--------------------------------------------------------------------
With layer norm (``weights`` holds the ``ln_*`` parameters)::

    a   = LN(x_t W_ih^T ; ln_ih_weight, ln_ih_bias)
        + LN(h_{t-1} W_hh^T ; ln_hh_weight, ln_hh_bias) + bias_ih + bias_hh
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
    c~  = f * c_{t-1} + i * g
    h~  = o * tanh(LN(c~ ; ln_c_weight, ln_c_bias))

    LN(v ; w, b) = (v - mean(v)) / sqrt(var(v) + eps) * w + b

over the last axis: the G = 4H gate pre-activations jointly (all four gates
together, as Haste does) for the input and recurrent parts, the H cell units
for c~. ``var`` is the biased variance (divide by the count); ``eps = 1e-5``
by default.

Without layer norm (no ``ln_*`` keys) it is the plain LSTM of
``fastrnn.reference``: ``a = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``,
``h~ = o * tanh(c~)``.

Zoneout (Krueger et al. 2016), separately for h and c::

    h_t = m_h * h_{t-1} + (1 - m_h) * h~        c_t = m_c * c_{t-1} + (1 - m_c) * c~

``m_h[t, b, j]`` is ``mask_h[t, b, j]`` (a Bernoulli(zoneout_h) draw: 1 =
keep the previous value) when a mask is given, otherwise the constant
``zoneout_h`` (the expectation, used in evaluation). The same for c. With
rate 0 and no mask the step is ``h_t = h~`` exactly. ``h~`` is computed from
the un-zoned ``c~`` (Krueger et al.). The output at step t is ``h_t`` (after
zoneout), as in Haste.

Contract
--------
``forward(x, weights, h0, c0, lengths, reverse, training, out, out_col,
zoneout_h, zoneout_c, mask_h, mask_c, eps, n_threads) -> (h_n, c_n, cache)``

* ``x`` ``(T, B, I)`` C-contiguous float32/float64; everything in x's dtype.
* ``weights``: dict of the local parameter names (``weight_ih`` ``(G, I)``,
  ``weight_hh`` ``(G, H)``; optionally ``bias_ih``, ``bias_hh`` ``(G,)``;
  optionally all of ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``,
  ``ln_hh_bias`` ``(G,)``, ``ln_c_weight``, ``ln_c_bias`` ``(H,)``).
* ``h0``, ``c0`` ``(B, H)``; ``lengths`` int ``(B,)`` in 1..T or None;
  ``reverse``: process T-1 .. 0. Step t of sequence b is active iff
  ``t < lengths[b]``; an inactive step keeps the state (h, c) and writes a
  zero output (``fastrnn.reference``'s rule, PyTorch's packed sequences).
* ``out`` ``(T, B, D_out)``: columns ``out_col:out_col+H`` are written.
* ``zoneout_h``, ``zoneout_c`` in [0, 1]; ``mask_h``, ``mask_c`` ``(T, B, H)``
  arrays of 0/1 in x's dtype, or None (then the rate itself is used).
* ``eps``: the layer-norm epsilon; ``n_threads`` is ignored here.

``backward(cache, x, weights, lengths, reverse, grad_out, out_col, grad_h_n,
grad_c_n, grad_x, grads, n_threads) -> (grad_h0, grad_c0)``

* ``grads``: dict with the keys of ``weights``; the parameter gradients are
  ACCUMULATED into its arrays (``+=``), the input gradient into ``grad_x``.
* ``grad_out`` ``(T, B, D_out)`` (columns ``out_col:out_col+H`` used, values at
  inactive steps ignored); ``grad_h_n``, ``grad_c_n`` ``(B, H)`` or None.
"""
import numpy as np

from ._lnlstm_args import check_backward_args, check_forward_args
from .reference import active_mask, sigmoid, split_gates, time_steps


def layer_norm(v, weight, bias, eps):
    """LN over the last axis. Returns (y, xhat, rstd) with y = xhat * weight + bias."""
    mean = v.mean(axis=-1, keepdims=True)
    centred = v - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = centred * rstd
    return xhat * weight + bias, xhat, rstd


def layer_norm_backward(dy, weight, xhat, rstd):
    """dL/dv of LN given dL/dy (the gain/bias gradients are sum(dy * xhat), sum(dy))."""
    g = dy * weight
    return rstd * (g - g.mean(axis=-1, keepdims=True)
                   - xhat * (g * xhat).mean(axis=-1, keepdims=True))


def _zone(p, mask, t):
    """The zoneout weight of step t: the mask's row, the rate, or None (off)."""
    if mask is not None:
        return mask[t]
    return p if p > 0 else None


def forward(x, weights, h0, c0, lengths, reverse, training, out, out_col, zoneout_h,
            zoneout_c, mask_h, mask_c, eps, n_threads):
    """One layer, one direction; see the module docstring."""
    T, B, I, H, bias, ln, lengths, zoneout_h, zoneout_c, eps = check_forward_args(
        x, weights, h0, c0, lengths, out, out_col, zoneout_h, zoneout_c, mask_h, mask_c,
        eps, n_threads)
    dtype = x.dtype
    w = weights
    mask = active_mask(lengths, T, B)
    cols = slice(out_col, out_col + H)
    h = np.array(h0, dtype=dtype)
    c = np.array(c0, dtype=dtype)
    keys = ["h_prev", "c_prev", "gates", "y"]
    if ln:
        keys += ["xhat_x", "rstd_x", "xhat_h", "rstd_h", "xhat_c", "rstd_c"]
    steps = {k: [None] * T for k in keys} if training else None
    for t in time_steps(T, reverse):
        gx = x[t] @ w["weight_ih"].T
        gh = h @ w["weight_hh"].T
        if ln:
            ax, xhat_x, rstd_x = layer_norm(gx, w["ln_ih_weight"], w["ln_ih_bias"], eps)
            ah, xhat_h, rstd_h = layer_norm(gh, w["ln_hh_weight"], w["ln_hh_bias"], eps)
            a = ax + ah
        else:
            a = gx + gh
        if bias:
            a = a + (w["bias_ih"] + w["bias_hh"])
        a_i, a_f, a_g, a_o = split_gates(a, 4)
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
        c_new = f * c + i * g
        if ln:
            y, xhat_c, rstd_c = layer_norm(c_new, w["ln_c_weight"], w["ln_c_bias"], eps)
        else:
            y = c_new
        h_new = o * np.tanh(y)
        m = _zone(zoneout_h, mask_h, t)
        if m is not None:
            h_new = m * h + (1 - m) * h_new
        m = _zone(zoneout_c, mask_c, t)
        if m is not None:
            c_new = m * c + (1 - m) * c_new
        if training:
            values = {"h_prev": h, "c_prev": c, "gates": np.concatenate([i, f, g, o], -1),
                      "y": y}
            if ln:
                values.update(xhat_x=xhat_x, rstd_x=rstd_x, xhat_h=xhat_h, rstd_h=rstd_h,
                              xhat_c=xhat_c, rstd_c=rstd_c)
            for k, v in values.items():
                steps[k][t] = v
        active = mask[t][:, None]
        out[t, :, cols] = np.where(active, h_new, 0)
        h = np.where(active, h_new, h)
        c = np.where(active, c_new, c)
    cache = None
    if training:
        cache = {k: np.stack(v) for k, v in steps.items()}
        cache.update(T=T, B=B, H=H, dtype=dtype, layer_norm=ln, reverse=bool(reverse),
                     zoneout_h=zoneout_h, zoneout_c=zoneout_c, mask_h=mask_h, mask_c=mask_c,
                     consumed=False)
    return h, c, cache


def backward(cache, x, weights, lengths, reverse, grad_out, out_col, grad_h_n, grad_c_n,
             grad_x, grads, n_threads):
    """BPTT through one layer, one direction; accumulates into grad_x and grads.
    Returns (grad_h0, grad_c0)."""
    if cache is None or cache.get("consumed", True):
        raise RuntimeError("backward needs the cache of a training-mode forward, and can use "
                           "it once")
    if cache["reverse"] != bool(reverse):
        raise ValueError("cache comes from a forward in the other direction")
    T, B, H, ln = cache["T"], cache["B"], cache["H"], cache["layer_norm"]
    I, bias, lengths, dh, dc = check_backward_args(
        T, B, H, cache["dtype"], ln, x, weights, lengths, grad_out, out_col, grad_h_n,
        grad_c_n, grad_x, grads, n_threads)
    cache["consumed"] = True
    w = weights
    mask = active_mask(lengths, T, B)
    cols = slice(out_col, out_col + H)
    for t in reversed(time_steps(T, reverse)):
        active = mask[t][:, None]
        dh_t = dh + np.where(active, grad_out[t, :, cols], 0)
        dc_t = dc
        i, f, g, o = split_gates(cache["gates"][t], 4)
        h_prev, c_prev = cache["h_prev"][t], cache["c_prev"][t]
        # Zoneout: h_t = m h_{t-1} + (1 - m) h~, the same for c.
        m = _zone(cache["zoneout_h"], cache["mask_h"], t)
        dh_new, dh_direct = (dh_t, 0) if m is None else ((1 - m) * dh_t, m * dh_t)
        m = _zone(cache["zoneout_c"], cache["mask_c"], t)
        dc_new, dc_direct = (dc_t, 0) if m is None else ((1 - m) * dc_t, m * dc_t)
        # h~ = o * tanh(y), y = LN(c~) or c~.
        tanh_y = np.tanh(cache["y"][t])
        do = dh_new * tanh_y
        dy = dh_new * o * (1 - tanh_y * tanh_y)
        if ln:
            xhat_c = cache["xhat_c"][t]
            dc_new = dc_new + layer_norm_backward(dy, w["ln_c_weight"], xhat_c,
                                                  cache["rstd_c"][t])
            dy = np.where(active, dy, 0)
            grads["ln_c_weight"] += (dy * xhat_c).sum(0)
            grads["ln_c_bias"] += dy.sum(0)
        else:
            dc_new = dc_new + dy
        # c~ = f * c_{t-1} + i * g
        dc_prev = dc_new * f + dc_direct
        da = np.concatenate([dc_new * g * i * (1 - i), dc_new * c_prev * f * (1 - f),
                             dc_new * i * (1 - g * g), do * o * (1 - o)], axis=-1)
        da = np.where(active, da, 0)
        if ln:
            xhat_x, xhat_h = cache["xhat_x"][t], cache["xhat_h"][t]
            dgx = layer_norm_backward(da, w["ln_ih_weight"], xhat_x, cache["rstd_x"][t])
            dgh = layer_norm_backward(da, w["ln_hh_weight"], xhat_h, cache["rstd_h"][t])
            grads["ln_ih_weight"] += (da * xhat_x).sum(0)
            grads["ln_ih_bias"] += da.sum(0)
            grads["ln_hh_weight"] += (da * xhat_h).sum(0)
            grads["ln_hh_bias"] += da.sum(0)
        else:
            dgx = dgh = da
        if bias:
            grads["bias_ih"] += da.sum(0)
            grads["bias_hh"] += da.sum(0)
        grad_x[t] += dgx @ w["weight_ih"]
        grads["weight_ih"] += dgx.T @ x[t]
        grads["weight_hh"] += dgh.T @ h_prev
        dh_prev = dgh @ w["weight_hh"] + dh_direct
        dh = np.where(active, dh_prev, dh)
        dc = np.where(active, dc_prev, dc)
    return dh, dc
