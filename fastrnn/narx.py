"""NARX: nonlinear autoregressive model with exogenous inputs.

    y_t = f(x_t, x_{t-1}, ..., x_{t-Kx}, y_{t-1}, ..., y_{t-Ky}),

with ``f`` a small feed-forward net (``Linear -> tanh -> Linear`` by default).

- Training is OPEN-LOOP (series-parallel): the true past outputs are fed in,
  so the model is a feed-forward net on lagged features, run on all steps of
  all sequences as one batch (``forward(x, y)`` / ``backward(grad)``).
- Forecasting is CLOSED-LOOP (parallel): after a warm-up history the model's
  own predictions are fed back for ``horizon`` steps (``forecast``).

Steps before the start of a sequence are zeros in both modes, so a short
warm-up history is handled as at the start of training.
"""
import numpy as np

from .layers import _user_layout
from .timedelay import _int_at_least
from .nn import (Linear, Module, ReLU, Sequential, Tanh, _Activation, _as_float_array,
                 _check_lengths, _child_seeds, _float_dtype, _no_cache_error, _positive_int)

__all__ = ["NARX", "lagged_features"]

_ACTIVATIONS = {"tanh": Tanh, "relu": ReLU}


def lagged_features(x, y, input_delays, output_delays):
    """The regressors of every step, time-major.

    x: ``(T, B, I)`` exogenous inputs or None; y: ``(T, B, O)`` outputs or None.
    Returns ``(T, B, (Kx + 1) * I + Ky * O)``: at step t the concatenation
    ``[x_t, x_{t-1}, ..., x_{t-Kx}, y_{t-1}, ..., y_{t-Ky}]`` (lag order), zeros
    for steps before 0. ``y_t`` itself is never used at step t.
    """
    ref = x if x is not None else y
    T, B = ref.shape[:2]
    dtype = ref.dtype
    width = ((input_delays + 1) * x.shape[2] if x is not None else 0) + \
        (output_delays * y.shape[2] if y is not None else 0)
    feats = np.zeros((T, B, width), dtype)
    col = 0
    if x is not None:
        I = x.shape[2]
        for j in range(input_delays + 1):
            if j < T:
                feats[j:, :, col:col + I] = x[:T - j]
            col += I
    if y is not None:
        O = y.shape[2]
        for j in range(1, output_delays + 1):
            if j < T:
                feats[j:, :, col:col + O] = y[:T - j]
            col += O
    return feats


def _unlag(grad_feats, I, O, input_delays, output_delays):
    """Adjoint of ``lagged_features``: (grad_x or None, grad_y or None)."""
    T, B, _ = grad_feats.shape
    grad_x = np.zeros((T, B, I), grad_feats.dtype) if I else None
    grad_y = np.zeros((T, B, O), grad_feats.dtype) if output_delays else None
    col = 0
    if I:
        for j in range(input_delays + 1):
            if j < T:
                grad_x[:T - j] += grad_feats[j:, :, col:col + I]
            col += I
    for j in range(1, output_delays + 1):
        if j < T:
            grad_y[:T - j] += grad_feats[j:, :, col:col + O]
        col += O
    return grad_x, grad_y


class NARX(Module):
    """Nonlinear autoregressive model with exogenous inputs (see the module docstring).

    ``NARX(input_size, output_size, input_delays=2, output_delays=2, hidden_size=32,
    activation="tanh", batch_first=False, dtype="float32", seed=None)``:

    - ``input_size`` I (0: no exogenous input, a pure autoregressive NAR model),
      ``output_size`` O (the dimension of y);
    - ``input_delays`` Kx >= 0: x_t ... x_{t-Kx} are used (Kx + 1 taps);
      ``output_delays`` Ky >= 0: y_{t-1} ... y_{t-Ky} are fed back (Ky taps);
    - ``hidden_size``: an int (one hidden layer) or a sequence of ints;
      ``activation`` "tanh" or "relu" between the Linear layers.

    The feed-forward net is the child ``net`` = ``Sequential(Linear, Tanh,
    Linear, ...)`` on the features of ``lagged_features`` (``[x_t .. x_{t-Kx},
    y_{t-1} .. y_{t-Ky}]``), so the parameters are ``net.0.weight``,
    ``net.0.bias``, ``net.2.weight``, ``net.2.bias`` (a torch
    ``nn.Sequential(Linear, Tanh, Linear)`` exchanges state dicts with it).

    Layout: time-major ``(seq_len, batch, features)``, ``(batch, seq_len,
    features)`` with ``batch_first``, or unbatched ``(seq_len, features)``.

    - ``forward(x, y, lengths=None)`` (open loop): x the exogenous inputs (None
      if input_size is 0), y the TRUE outputs; returns the one-step predictions
      of y_t for every step (the shape of y). With ``lengths`` the predictions
      past a sequence's length are zero.
    - ``backward(grad_pred)`` -> ``(grad_x, grad_y)`` (grad_x None without
      exogenous input; grad_y None when output_delays is 0); parameter
      gradients are added to ``grads``.
    - ``forecast(y_history, horizon=None, x=None)`` (closed loop): see there.
    """

    def __init__(self, input_size, output_size, input_delays=2, output_delays=2,
                 hidden_size=32, activation="tanh", batch_first=False, dtype="float32",
                 seed=None):
        super().__init__()
        self.input_size = _int_at_least("input_size", input_size, 0)
        self.output_size = _positive_int("output_size", output_size)
        self.input_delays = _int_at_least("input_delays", input_delays, 0)
        self.output_delays = _int_at_least("output_delays", output_delays, 0)
        hidden = ((hidden_size,) if isinstance(hidden_size, (int, np.integer))
                  and not isinstance(hidden_size, bool) else tuple(hidden_size))
        self.hidden_sizes = tuple(_positive_int("hidden_size", h) for h in hidden)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got "
                             f"{activation!r}")
        self.activation = activation
        self.batch_first = bool(batch_first)
        self.dtype = _float_dtype(dtype)
        if self.num_features == 0:
            raise ValueError("NARX needs some regressors: input_size > 0 or output_delays > 0")
        sizes = (self.num_features,) + self.hidden_sizes + (self.output_size,)
        seeds = _child_seeds(seed, len(sizes) - 1)
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(Linear(sizes[i], sizes[i + 1], dtype=self.dtype, seed=seeds[i]))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.net = Sequential(*layers)

    @property
    def num_features(self):
        """Width of the regressor vector: ``(Kx + 1) * I + Ky * O``."""
        return (self.input_delays + 1) * self.input_size + self.output_delays * self.output_size

    # -- layout helpers --

    def _time_major(self, name, array, width, allow_unbatched=True):
        array = _as_float_array(name, array, self.dtype)
        if array.ndim == 2 and allow_unbatched:
            array = array[:, None, :]
            unbatched = True
        elif array.ndim == 3:
            unbatched = False
            if self.batch_first:
                array = array.transpose(1, 0, 2)
        else:
            layout = ("(batch, seq_len, features)" if self.batch_first
                      else "(seq_len, batch, features)")
            raise ValueError(f"{name} must be 3-D {layout} or 2-D (seq_len, features), got "
                             f"shape {array.shape}")
        if array.shape[2] != width:
            raise ValueError(f"{name} must have {width} features in its last axis, got shape "
                             f"{array.shape if not unbatched else array[:, 0].shape}")
        return array, unbatched

    def _check_pair(self, x, y):
        """Time-major (x or None, y) with matching seq_len and batch."""
        y, unbatched = self._time_major("y", y, self.output_size)
        if self.input_size:
            if x is None:
                raise ValueError(f"x (exogenous inputs, {self.input_size} features) is required")
            x, x_unbatched = self._time_major("x", x, self.input_size)
            if x_unbatched != unbatched or x.shape[:2] != y.shape[:2]:
                raise ValueError(f"x and y must have the same seq_len and batch, got "
                                 f"{x.shape[:2]} and {y.shape[:2]} (time-major)")
        elif x is not None:
            raise ValueError("this NARX has no exogenous input (input_size=0): pass x=None")
        if y.shape[0] < 1 or y.shape[1] < 1:
            raise ValueError("x and y must have seq_len >= 1 and batch >= 1")
        return x, y, unbatched

    # -- open loop --

    def forward(self, x, y, lengths=None):
        """One-step predictions of y_t from the true past (open loop); see the class."""
        x, y, unbatched = self._check_pair(x, y)
        T, B = y.shape[:2]
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths needs a batched input")
            lengths = _check_lengths(lengths, T, B)
        feats = lagged_features(x, y if self.output_delays else None, self.input_delays,
                                self.output_delays)
        pred = self.net(feats)
        mask = None
        if lengths is not None:
            mask = np.arange(T)[:, None] < lengths[None, :]
            pred[~mask] = 0
        self._cache = {"shape": y.shape, "unbatched": unbatched, "mask": mask} \
            if self.training else None
        return _user_layout(pred, unbatched, self.batch_first)

    def backward(self, grad_pred):
        """dL/d(predictions) -> ``(grad_x, grad_y)`` in the inputs' layout."""
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        grad, _ = self._time_major("grad_pred", grad_pred, self.output_size,
                                   allow_unbatched=cache["unbatched"])
        if grad.shape != cache["shape"]:
            raise ValueError(f"grad_pred must have the shape of the predictions, got "
                             f"{grad.shape} (time-major) for {cache['shape']}")
        self._cache = None
        if cache["mask"] is not None:
            grad = np.where(cache["mask"][:, :, None], grad, 0).astype(self.dtype)
        grad_feats = self.net.backward(np.ascontiguousarray(grad))
        grad_x, grad_y = _unlag(grad_feats, self.input_size, self.output_size,
                                self.input_delays, self.output_delays)
        unbatched = cache["unbatched"]
        return (None if grad_x is None else _user_layout(grad_x, unbatched, self.batch_first),
                None if grad_y is None else _user_layout(grad_y, unbatched, self.batch_first))

    # -- closed loop --

    def _predict(self, feats):
        """The net on features (rows, F), without touching any training cache."""
        h = feats
        for module in self.net:
            if isinstance(module, Linear):
                h = h @ module.weight.T
                if module.has_bias:
                    h = h + module.bias
            elif isinstance(module, _Activation):
                h = module._f(h)
            else:  # pragma: no cover - the net is built here
                raise TypeError(f"unexpected module in net: {type(module).__name__}")
        return h

    def forecast(self, y_history, horizon=None, x=None):
        """Closed-loop forecast: predictions fed back as the past outputs.

        y_history: the known outputs ``(T_h, batch, O)`` (layout as ``forward``;
        T_h >= 1) that warm the model up. x: the exogenous inputs over the
        history AND the forecast, ``(T_h + horizon, batch, I)`` (required iff
        input_size > 0; ``horizon`` then defaults to ``len(x) - T_h``).
        Returns the ``horizon`` predicted steps ``(horizon, batch, O)`` in the
        same layout. Runs in inference (no gradients, training caches untouched).
        """
        y_hist, unbatched = self._time_major("y_history", y_history, self.output_size)
        T_h, B = y_hist.shape[:2]
        if T_h < 1 or B < 1:
            raise ValueError("y_history must have seq_len >= 1 and batch >= 1")
        if self.input_size:
            if x is None:
                raise ValueError(f"x (exogenous inputs over history and horizon, "
                                 f"{self.input_size} features) is required")
            x, x_unbatched = self._time_major("x", x, self.input_size)
            if x_unbatched != unbatched or x.shape[1] != B:
                raise ValueError("x and y_history must have the same batch layout and size")
            if horizon is None:
                horizon = x.shape[0] - T_h
            if x.shape[0] != T_h + horizon:
                raise ValueError(f"x must cover the history and the horizon: {T_h} + "
                                 f"{horizon} steps, got {x.shape[0]}")
        elif x is not None:
            raise ValueError("this NARX has no exogenous input (input_size=0): pass x=None")
        if horizon is None:
            raise ValueError("horizon is required when there is no exogenous input")
        horizon = _int_at_least("horizon", horizon, 1)
        I, O, Kx, Ky = self.input_size, self.output_size, self.input_delays, self.output_delays
        ys = np.zeros((T_h + horizon, B, O), self.dtype)
        ys[:T_h] = y_hist
        feats = np.zeros((B, self.num_features), self.dtype)
        for t in range(T_h, T_h + horizon):
            col = 0
            for j in range(Kx + 1 if I else 0):
                feats[:, col:col + I] = x[t - j] if t - j >= 0 else 0
                col += I
            for j in range(1, Ky + 1):
                feats[:, col:col + O] = ys[t - j] if t - j >= 0 else 0
                col += O
            ys[t] = self._predict(feats)
        return _user_layout(ys[T_h:], unbatched, self.batch_first)

    def get_config(self):
        """Constructor arguments rebuilding this model (``fastrnn.io.save``); the
        weights (``net.*``) are in ``state_dict()``; ``seed`` is not kept."""
        return {"input_size": self.input_size, "output_size": self.output_size,
                "input_delays": self.input_delays, "output_delays": self.output_delays,
                "hidden_size": list(self.hidden_sizes), "activation": self.activation,
                "batch_first": self.batch_first, "dtype": self.dtype.name}

    def extra_repr(self):
        return (f"input_size={self.input_size}, output_size={self.output_size}, "
                f"input_delays={self.input_delays}, output_delays={self.output_delays}")

