"""Layer-normalised LSTM and zoneout (as Haste has them on GPU), on CPU kernels.

``LayerNormLSTM``
    Haste's ``LayerNormLSTM`` cell (github.com/lmnt-com/haste, issue #1 and
    ``lib/layer_norm_lstm_forward_gpu.cu.cc``), with PyTorch's gate order
    i, f, g, o and parameter names::

        a   = LN(x_t W_ih^T ; ln_ih_weight, ln_ih_bias)
            + LN(h_{t-1} W_hh^T ; ln_hh_weight, ln_hh_bias) + bias_ih + bias_hh
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
        c~  = f * c_{t-1} + i * g
        h~  = o * tanh(LN(c~ ; ln_c_weight, ln_c_bias))
        LN(v ; w, b) = (v - mean(v)) / sqrt(var(v) + eps) * w + b

    Each LN normalises over its last axis: the 4H gate pre-activations jointly
    (input and recurrent parts separately) and the H cell units; ``var`` is
    the biased variance and ``eps = 1e-5``, as in Haste. Haste's cell is the
    special case ``ln_ih_bias = ln_hh_bias = 0`` (Haste has gains only there)
    and ``bias_ih + bias_hh = b`` (Haste's one bias); its ``gamma[0]``,
    ``gamma[1]``, ``gamma_h``, ``beta_h`` are our ``ln_ih_weight``,
    ``ln_hh_weight``, ``ln_c_weight``, ``ln_c_bias`` (after reordering Haste's
    i, g, f, o gate blocks to i, f, g, o). The four additive gate biases are
    redundant (they receive the same gradient); they are kept so that the LSTM
    weights load unchanged and every layer norm has PyTorch's (weight, bias).

``ZoneoutLSTM``
    The same kernels with layer norm off: PyTorch's LSTM cell
    (``h~ = o * tanh(c~)``) plus zoneout; with zoneout 0 it computes
    ``fastrnn.LSTM``, with the same parameter names.

Zoneout (Krueger et al. 2016, "Zoneout: regularizing RNNs by randomly
preserving hidden activations"), on both classes::

    h_t = m_h * h_{t-1} + (1 - m_h) * h~        c_t = m_c * c_{t-1} + (1 - m_c) * c~

- ``zoneout`` is the rate of h, ``zoneout_cell`` the rate of c (default 0:
  like Haste, which zones out h only). In training each unit of each step and
  sequence draws ``m ~ Bernoulli(rate)`` (1 = keep the previous value) from
  the layer's generator (``seed``); in ``eval()`` ``m`` is the rate itself
  (the expectation). ``h~`` is computed from the un-zoned ``c~``, as in
  Krueger et al.; the output of step t is ``h_t`` (after zoneout), as in
  Haste. Backward goes through the masks: ``dh_{t-1} += m_h dh_t``,
  ``dh~ = (1 - m_h) dh_t`` (the same for c).
- Masks come from the layer's generator in a fixed order: for each layer,
  for each direction, the h mask then the c mask (each (seq_len, batch,
  hidden_size), indexed by time step in both directions; not drawn when the
  rate is 0), then that layer's inter-layer dropout mask. The same seed gives
  the same masks. ``last_zoneout_masks`` keeps the masks of the last training
  forward: per layer a list of ``(mask_h, mask_c)`` per direction (None where
  off).
- ``dropout`` is PyTorch's dropout between layers (Haste's ``dropout`` is
  DropConnect on the recurrent weights, which is not implemented here).

Layer contract (that of ``fastrnn.LSTM``):
``out, (h_n, c_n) = layer(x, hx=None, lengths=None)``;
``dx, (dh0, dc0) = layer.backward(grad_out, grad_hn=None)``; parameter
gradients are added to ``layer.grads`` until ``zero_grad()``; ``named_parameters``,
``state_dict``, ``load_state_dict`` (copies into the live arrays), ``train``,
``eval``; ``returns_state = True`` (so ``fastrnn.nn.Sequential`` passes
``hx``/``lengths``). Shapes, ``batch_first``, unbatched input, ``lengths``
(inactive steps keep the state and output zero; the reverse direction starts
at each sequence's last step), ``dropout`` between layers, ``bidirectional``,
dtypes (float32/float64) and ``impl`` ("cython" or "reference") are as in
``fastrnn.LSTM``.

Parameters of layer k (``_reverse`` appended for the reverse direction), in
this order:

====================  ==============  =======================================
name                  shape           initial value
====================  ==============  =======================================
``weight_ih_lk``      (4H, I_k)       U(-1/sqrt(H), 1/sqrt(H))  (torch's LSTM)
``weight_hh_lk``      (4H, H)         U(-1/sqrt(H), 1/sqrt(H))
``bias_ih_lk``        (4H,)           U(-1/sqrt(H), 1/sqrt(H))  (bias=True)
``bias_hh_lk``        (4H,)           U(-1/sqrt(H), 1/sqrt(H))  (bias=True)
``ln_ih_weight_lk``   (4H,)           1   (LayerNormLSTM only, from here on)
``ln_ih_bias_lk``     (4H,)           0
``ln_hh_weight_lk``   (4H,)           1
``ln_hh_bias_lk``     (4H,)           0
``ln_c_weight_lk``    (H,)            1
``ln_c_bias_lk``      (H,)            0
====================  ==============  =======================================

``I_0 = input_size``, ``I_k = H * num_directions`` for k > 0.
"""
import threading

import numpy as np

from . import _lnlstm, lnlstm_reference
from ._lnlstm_args import DEFAULT_EPS, param_shapes
from .layers import _RecurrentBase

__all__ = ["LayerNormLSTM", "ZoneoutLSTM"]

_IMPLS = {"cython": _lnlstm, "reference": lnlstm_reference}


def _rate(name, value, upper_inclusive):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, got {value!r}") from None
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if upper_inclusive else ')'}, "
                         f"got {value!r}")
    return value


class _ZoneoutLSTMBase(_RecurrentBase):
    """Shared machinery of LayerNormLSTM and ZoneoutLSTM (see the module docstring).

    The layer machinery is fastrnn.LSTM's (``fastrnn.layers._RecurrentBase``);
    what differs: the parameters (layer norm), the kernels (``fastrnn._lnlstm``
    or ``fastrnn.lnlstm_reference``, called with a dict of one direction's
    parameters) and the zoneout masks.
    """

    returns_state = True
    takes_lengths = True
    _layer_norm = True
    _mode = "LSTM"
    _impls = _IMPLS
    _repr_rates = ("dropout", "zoneout", "zoneout_cell")
    _contiguous_states = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, zoneout=0.0, zoneout_cell=0.0,
                 eps=DEFAULT_EPS, dtype="float32", seed=None, impl="cython", n_threads=None):
        self._init_sizes(input_size, hidden_size, num_layers, bias, batch_first, bidirectional)
        self.dropout = _rate("dropout", dropout, upper_inclusive=False)
        self.zoneout = _rate("zoneout", zoneout, upper_inclusive=True)
        self.zoneout_cell = _rate("zoneout_cell", zoneout_cell, upper_inclusive=True)
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.eps = eps
        self.last_zoneout_masks = None
        # Each running forward's masks, by thread (see _run_forward).
        self._drawn_masks = {}
        self._init_rest(dtype, seed, None, impl, n_threads)

    # -- structure -----------------------------------------------------------

    @property
    def layer_norm(self):
        return self._layer_norm

    def _local_shapes(self, layer):
        return param_shapes(self._layer_input_size(layer), self.hidden_size, self.bias,
                            self._layer_norm)

    def _local(self, source, layer, direction):
        """{local name: array} of one layer and direction, from _params or grads."""
        return {local: source[name] for local, name
                in zip(self._local_shapes(layer), self._names(layer, direction))}

    def _initial_value(self, name, shape, bound):
        if name.startswith("ln_"):
            return np.full(shape, 1.0 if "_weight_" in name else 0.0)
        return super()._initial_value(name, shape, bound)

    def reset_parameters(self):
        """Weights and biases uniform in +-1/sqrt(hidden_size) (PyTorch's LSTM);
        layer-norm gains 1 and biases 0. In place when the arrays exist."""
        super().reset_parameters()

    def get_config(self):
        """The constructor arguments (JSON-able) that rebuild this architecture
        (``fastrnn.nn.module_config`` / ``fastrnn.io``); weights are not included."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias,
                "batch_first": self.batch_first, "dropout": self.dropout,
                "bidirectional": self.bidirectional, "zoneout": self.zoneout,
                "zoneout_cell": self.zoneout_cell, "eps": self.eps, "dtype": self.dtype.name,
                "impl": self.impl}

    @classmethod
    def from_config(cls, config):
        """Rebuild from ``get_config()`` (fresh, randomly initialised weights)."""
        return cls(**config)

    # -- forward / backward --------------------------------------------------

    def _masks(self, shape):
        """Zoneout masks of one layer direction (training), or (None, None)."""
        if not self.training:
            return None, None
        masks = []
        for rate in (self.zoneout, self.zoneout_cell):
            masks.append((self._rng.random(shape) < rate).astype(self.dtype) if rate > 0
                         else None)
        return tuple(masks)

    def _run_forward(self, x, states, lengths):
        # _forward_direction draws each direction's masks (between the layers'
        # dropout masks: one generator, a fixed order) and records them here,
        # per layer a list of (mask_h, mask_c) per direction: under the calling
        # thread, as other threads may be in a call of this layer too.
        thread = threading.get_ident()
        self._drawn_masks[thread] = drawn = []
        try:
            result = super()._run_forward(x, states, lengths)
        finally:
            del self._drawn_masks[thread]
        if self.training:
            self.last_zoneout_masks = drawn
        return result

    def _forward_direction(self, kernels, layer, direction, index, x, h0, c0, lengths,
                           training, out, n_threads):
        seq_len, batch, _ = x.shape
        H = self.hidden_size
        mask_h, mask_c = self._masks((seq_len, batch, H))
        drawn = self._drawn_masks[threading.get_ident()]
        if direction == 0:
            drawn.append([])
        drawn[-1].append((mask_h, mask_c))
        return kernels.forward(x, self._local(self._params, layer, direction), h0, c0, lengths,
                               bool(direction), training, out, direction * H, self.zoneout,
                               self.zoneout_cell, mask_h, mask_c, self.eps, n_threads)

    def _backward_direction(self, kernels, layer, direction, index, cache, x, lengths,
                            grad_out, grad_h_n, grad_c_n, grad_x, n_threads):
        return kernels.backward(cache, x, self._local(self._params, layer, direction), lengths,
                                bool(direction), grad_out, direction * self.hidden_size,
                                grad_h_n, grad_c_n, grad_x,
                                self._local(self.grads, layer, direction), n_threads)


_ARGS = """
    Arguments: input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0 (between layers, training only), bidirectional=False (as
    torch.nn.LSTM); zoneout=0.0 (rate of h), zoneout_cell=0.0 (rate of c);
    eps=1e-5 (layer norm); dtype ("float32" or "float64"); seed (initialisation,
    zoneout and dropout masks); impl ("cython" kernels or the NumPy
    "reference"); n_threads (None: the global default, see
    fastrnn.set_num_threads). See fastrnn.lnlstm for the formulas and names.
"""


class LayerNormLSTM(_ZoneoutLSTMBase):
    __doc__ = """Layer-normalised LSTM (Haste's formulation) with optional zoneout.
    ``out, (h_n, c_n) = layer(x, (h_0, c_0), lengths)``.
    """ + _ARGS
    _layer_norm = True


class ZoneoutLSTM(_ZoneoutLSTMBase):
    __doc__ = """LSTM (torch.nn.LSTM's cell and parameter names) with zoneout.
    ``out, (h_n, c_n) = layer(x, (h_0, c_0), lengths)``; with zoneout=0 it equals
    fastrnn.LSTM with the same weights. ``eps`` is accepted and unused.
    """ + _ARGS
    _layer_norm = False
