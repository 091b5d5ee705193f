"""Feed-forward layers, containers and small sequence models around the recurrent layers.

Every module here has the contract of ``fastrnn.RNN/LSTM/GRU``:

- ``forward(x, ...)`` (also ``module(x, ...)``) runs the module. In training
  mode (the default) it keeps what ``backward`` needs; ``eval()`` keeps nothing.
- ``backward(grad_out)`` backpropagates through the last training-mode forward
  (once per forward) and returns the gradient w.r.t. the input (``None`` for
  ``Embedding``, whose input is integer indices). Parameter gradients are
  ADDED to the arrays in ``.grads`` until ``zero_grad()``.
- ``named_parameters()`` gives ``(name, array)`` pairs of the live parameters
  under PyTorch's names (``weight``, ``bias``; a container prefixes its
  children's names: ``0.weight``, ``rnn.weight_ih_l0``, ...), ``parameters()``
  the arrays. ``grads`` maps the same names to the live gradient arrays.
- ``state_dict()`` / ``load_state_dict(state, strict=True)`` use the same
  names, so a torch module with the same structure exchanges weights with
  ``{k: v.numpy() for k, v in torch_module.state_dict().items()}``.
  ``load_state_dict`` of the modules here copies values INTO the existing
  arrays; the recurrent layers replace their arrays instead (so hold on to a
  model, not to its arrays: see ``fastrnn.optim``).
- ``train(mode=True)`` / ``eval()`` switch the mode recursively and return the
  module.

Layers: ``Linear``, ``Embedding``, ``Dropout``, ``ReLU``, ``Tanh``, and the
sequence poolings ``LastStep`` / ``MeanPool`` (take ``lengths``). Containers:
``Sequential`` (chains children; recurrent children get ``lengths``/``hx`` and
pass their output on). Models: ``SequenceClassifier`` (many-to-one) and
``SequenceTagger`` / ``LanguageModel`` (many-to-many); each has ``.build(...)``
to create its standard parts. ``make_recurrent(cell, ...)`` builds a recurrent
layer by name and ``sequence_mask(lengths, seq_len)`` the valid-step mask.

Sequence layout: like the recurrent layers, time-major ``(seq_len, batch, F)``
unless ``batch_first=True`` (``(batch, seq_len, F)``), or unbatched
``(seq_len, F)``. ``Linear``, ``Embedding``, ``Dropout`` and the activations
work on any leading shape ``(..., F)``, so they are layout-agnostic.
"""
from collections import OrderedDict

import numpy as np

from .layers import GRU, LSTM, RNN, _checked_lengths, _checked_state, _positive_int

__all__ = ["Module", "Linear", "Embedding", "Dropout", "ReLU", "Tanh", "LastStep", "MeanPool",
           "Sequential", "SequenceClassifier", "SequenceTagger", "LanguageModel",
           "make_recurrent", "sequence_mask", "module_config", "module_from_config",
           "register_module_class"]


# -- helpers -------------------------------------------------------------------

def _float_dtype(dtype):
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return np.dtype(dtype)


def _as_float_array(name, value, dtype=None):
    """A real floating array (converted to ``dtype`` if given); others raise TypeError."""
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be a real floating-point array, got dtype {array.dtype}")
    return array if dtype is None else array.astype(dtype, copy=False)


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _child_seeds(seed, count):
    """Independent seeds for ``count`` children (None stays None)."""
    if seed is None:
        return [None] * count
    if isinstance(seed, np.random.Generator):
        return [int(s) for s in seed.integers(0, 2**63 - 1, size=count)]
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, np.uint64)]


def _is_module(value):
    """Duck-typed module: the recurrent layers and everything in this file."""
    return (not isinstance(value, type)
            and all(callable(getattr(value, attr, None))
                    for attr in ("named_parameters", "state_dict", "load_state_dict",
                                 "zero_grad", "train", "backward")))


def _returns_state(module):
    """Recurrent layers: ``forward(x, hx, lengths) -> (out, state)``,
    ``backward(grad_out, grad_state) -> (grad_x, grad_hx)``."""
    return isinstance(module, (RNN, LSTM, GRU)) or bool(getattr(module, "returns_state", False))


def _takes_lengths(module):
    return _returns_state(module) or bool(getattr(module, "takes_lengths", False))


def _no_cache_error():
    return RuntimeError("backward() needs a forward() in training mode (call train() first) "
                        "and can be called once per forward")


def sequence_mask(lengths, seq_len, batch_first=False):
    """Boolean mask of the valid steps: ``(seq_len, batch)``, or ``(batch, seq_len)``
    with ``batch_first``; entry ``[t, b]`` is ``t < lengths[b]``. With
    ``lengths=None`` every step is valid (returns None)."""
    if lengths is None:
        return None
    lengths = np.asarray(lengths)
    mask = np.arange(seq_len)[:, None] < lengths[None, :]
    return mask.T.copy() if batch_first else mask


def _check_lengths(lengths, seq_len, batch):
    """An int64 copy of ``lengths`` ((batch,), values in 1..seq_len)."""
    return _checked_lengths(lengths, seq_len, batch).astype(np.int64)


# -- base ----------------------------------------------------------------------

class Module:
    """Base class: parameter registry, child modules, modes and state dicts.

    Subclasses register parameters with ``_add_parameter(name, array)`` (which
    also creates the zero gradient array) and child modules by assigning them
    as attributes (anything with the module methods, including the recurrent
    layers, is registered in assignment order, like ``torch.nn.Module``).
    Parameters are readable as attributes (``linear.weight``).
    """

    returns_state = False   # True for modules returning (out, state), like the RNN layers
    takes_lengths = False   # True for modules whose forward takes lengths=

    def __init__(self):
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_grads", OrderedDict())
        object.__setattr__(self, "_cache", None)
        self.training = True

    def __setattr__(self, name, value):
        modules = self.__dict__.get("_modules")
        if modules is not None:
            if _is_module(value):
                modules[name] = value
            else:
                modules.pop(name, None)
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _add_parameter(self, name, array):
        self._params[name] = array
        self._grads[name] = np.zeros_like(array)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_output):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- structure --

    def named_children(self):
        """(name, module) pairs of the direct children, in registration order."""
        return list(self._modules.items())

    def children(self):
        return list(self._modules.values())

    def modules(self):
        """This module and all modules below it (depth first)."""
        yield self
        for child in self._modules.values():
            if isinstance(child, Module):
                yield from child.modules()
            else:
                yield child

    def named_parameters(self):
        """(name, array) pairs of the live parameters, own first, then each child's
        with its name as prefix (``head.weight``, ``rnn.weight_ih_l0``)."""
        pairs = list(self._params.items())
        for prefix, child in self._modules.items():
            pairs += [(f"{prefix}.{name}", p) for name, p in child.named_parameters()]
        return pairs

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    @property
    def grads(self):
        """Name -> live gradient array (same names as named_parameters()). The
        dict is built on each access; update the arrays in place."""
        grads = OrderedDict(self._grads)
        for prefix, child in self._modules.items():
            grads.update((f"{prefix}.{name}", g) for name, g in child.grads.items())
        return grads

    def zero_grad(self):
        for grad in self._grads.values():
            grad.fill(0)
        for child in self._modules.values():
            child.zero_grad()

    def train(self, mode=True):
        self.training = bool(mode)
        if not self.training:
            self._cache = None
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """Copies of the parameters (and children's states) under PyTorch's names."""
        state = OrderedDict((name, p.copy()) for name, p in self._params.items())
        for prefix, child in self._modules.items():
            state.update((f"{prefix}.{name}", v) for name, v in child.state_dict().items())
        return state

    def _expected_state(self):
        """name -> (owner, local name, shape) for every state entry."""
        expected = OrderedDict((name, (None, name, p.shape)) for name, p in self._params.items())
        for prefix, child in self._modules.items():
            for name, value in child.state_dict().items():
                expected[f"{prefix}.{name}"] = (prefix, name, np.shape(value))
        return expected

    def load_state_dict(self, state_dict, strict=True):
        """Load by name (PyTorch's names; torch tensors converted with ``.numpy()``).
        Floating arrays are cast to each parameter's dtype. Everything is
        checked (missing / unexpected keys with ``strict``, shapes, dtypes)
        before anything is changed."""
        expected = self._expected_state()
        shapes = {name: shape for name, (_, _, shape) in expected.items()}
        values = _checked_state(state_dict, shapes, strict, list_expected=False)
        per_child = {prefix: {} for prefix in self._modules}
        for name, value in values.items():
            owner, local, _ = expected[name]
            if owner is None:
                np.copyto(self._params[local], value, casting="unsafe")
            else:
                per_child[owner][local] = value
        for prefix, child in self._modules.items():
            if per_child[prefix] or strict:
                child.load_state_dict(per_child[prefix], strict=strict)

    def get_config(self):
        """The constructor arguments that rebuild this module's architecture (a
        JSON-able dict; child modules as ``module_config`` specs). Weights are
        not included: save them with ``state_dict()`` (``fastrnn.io.save`` does
        both)."""
        raise NotImplementedError(f"{type(self).__name__} has no get_config(): define "
                                  f"get_config() / from_config() to save it with fastrnn.io")

    @classmethod
    def from_config(cls, config):
        """Rebuild from ``get_config()`` (fresh, randomly initialised weights)."""
        return cls(**config)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                text = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {text}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


# -- layers --------------------------------------------------------------------

class Linear(Module):
    """``y = x W^T + b`` on inputs of any leading shape ``(..., in_features)``.

    ``Linear(in_features, out_features, bias=True, dtype="float32", seed=None)``.
    ``weight`` is ``(out_features, in_features)``, ``bias`` ``(out_features,)``;
    both start uniform in ±1/sqrt(in_features) (torch's default: kaiming-uniform
    with a=sqrt(5)), reproducible with ``seed`` (an int or a numpy Generator).
    Inputs of any real floating dtype are converted to ``dtype``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype="float32", seed=None):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.dtype = _float_dtype(dtype)
        self._rng = _rng(seed)
        self._add_parameter("weight", np.zeros((self.out_features, self.in_features), self.dtype))
        if bias:
            self._add_parameter("bias", np.zeros(self.out_features, self.dtype))
        self.reset_parameters()

    @property
    def has_bias(self):
        return "bias" in self._params

    def reset_parameters(self):
        """Redraw in place: uniform in ±1/sqrt(in_features) (weight and bias)."""
        bound = 1.0 / np.sqrt(self.in_features)
        for p in self._params.values():
            p[...] = self._rng.uniform(-bound, bound, p.shape)

    def forward(self, x):
        """x: ``(..., in_features)`` -> ``(..., out_features)``."""
        x = _as_float_array("x", x, self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have in_features={self.in_features} features in its last "
                             f"axis, got shape {x.shape}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        out = flat @ self.weight.T
        if self.has_bias:
            out += self.bias
        # A private copy: an in-place edit of the caller's array must not change
        # the gradients.
        self._cache = {"x": np.array(flat), "lead": lead} if self.training else None
        return out.reshape(lead + (self.out_features,))

    def backward(self, grad_output):
        """grad_output ``(..., out_features)`` -> dL/dx ``(..., in_features)``."""
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        expected = cache["lead"] + (self.out_features,)
        grad = _as_float_array("grad_output", grad_output, self.dtype)
        if grad.shape != expected:
            raise ValueError(f"grad_output must have the shape of the output {expected}, "
                             f"got {grad.shape}")
        self._cache = None
        grad = grad.reshape(-1, self.out_features)
        self._grads["weight"] += grad.T @ cache["x"]
        if self.has_bias:
            self._grads["bias"] += grad.sum(axis=0)
        return (grad @ self.weight).reshape(cache["lead"] + (self.in_features,))

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.has_bias, "dtype": self.dtype.name}

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.has_bias}")


class Embedding(Module):
    """Lookup table: integer indices of any shape ``(...)`` -> ``(..., embedding_dim)``.

    ``Embedding(num_embeddings, embedding_dim, padding_idx=None, dtype="float32",
    seed=None)``. ``weight`` ``(num_embeddings, embedding_dim)`` starts N(0, 1)
    like torch; the ``padding_idx`` row (negative counts from the end) starts at
    zero and never receives a gradient. ``backward`` returns None (no gradient
    for integer inputs).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype="float32",
                 seed=None):
        super().__init__()
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not isinstance(padding_idx, (int, np.integer)) or isinstance(padding_idx, bool) \
                    or not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be an int in [-{self.num_embeddings}, "
                                 f"{self.num_embeddings}), got {padding_idx!r}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = _float_dtype(dtype)
        self._rng = _rng(seed)
        self._add_parameter("weight", np.zeros((self.num_embeddings, self.embedding_dim),
                                               self.dtype))
        self.reset_parameters()

    def reset_parameters(self):
        """Redraw in place from N(0, 1); the padding row is set to zero."""
        self.weight[...] = self._rng.standard_normal(self.weight.shape)
        if self.padding_idx is not None:
            self.weight[self.padding_idx] = 0

    def forward(self, indices):
        """indices: integer array of any shape -> ``indices.shape + (embedding_dim,)``."""
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be an integer array, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise IndexError(f"indices must be in 0..{self.num_embeddings - 1}, got values in "
                             f"{idx.min()}..{idx.max()}")
        out = self.weight[idx]
        self._cache = {"indices": np.array(idx, dtype=np.intp)} if self.training else None
        return out

    def backward(self, grad_output):
        """Adds grad_output ``(..., embedding_dim)`` to the rows used; returns None."""
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        idx = cache["indices"]
        expected = idx.shape + (self.embedding_dim,)
        grad = _as_float_array("grad_output", grad_output, self.dtype)
        if grad.shape != expected:
            raise ValueError(f"grad_output must have the shape of the output {expected}, "
                             f"got {grad.shape}")
        self._cache = None
        flat = idx.reshape(-1)
        grad = grad.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, grad = flat[keep], grad[keep]
        np.add.at(self._grads["weight"], flat, grad)
        return None

    def get_config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, "dtype": self.dtype.name}

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability ``p`` and
    scale the rest by 1/(1-p); identity in eval mode. ``Dropout(p=0.5, seed=None)``
    (the masks come from the module's own seeded rng). Any shape, any float dtype.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p!r}")
        self.p = float(p)
        self._rng = _rng(seed)

    def forward(self, x):
        x = _as_float_array("x", x)
        if not self.training:
            self._cache = None
            return x
        if self.p == 0.0:
            self._cache = {"mask": None, "shape": x.shape}
            return x
        if self.p == 1.0:
            mask = np.zeros(x.shape, x.dtype)
        else:
            keep = 1.0 - self.p
            mask = (self._rng.random(x.shape) < keep).astype(x.dtype) / x.dtype.type(keep)
        self._cache = {"mask": mask, "shape": x.shape}
        return x * mask

    def backward(self, grad_output):
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        grad = _as_float_array("grad_output", grad_output)
        if grad.shape != cache["shape"]:
            raise ValueError(f"grad_output must have the shape of the output {cache['shape']}, "
                             f"got {grad.shape}")
        self._cache = None
        return grad if cache["mask"] is None else grad * cache["mask"]

    def get_config(self):
        return {"p": self.p}

    def extra_repr(self):
        return f"p={self.p}"


class _Activation(Module):
    def get_config(self):
        return {}

    def forward(self, x):
        x = _as_float_array("x", x)
        y = self._f(x)
        self._cache = {"y": y} if self.training else None
        return y

    def backward(self, grad_output):
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        grad = _as_float_array("grad_output", grad_output)
        if grad.shape != cache["y"].shape:
            raise ValueError(f"grad_output must have the shape of the output "
                             f"{cache['y'].shape}, got {grad.shape}")
        self._cache = None
        return self._df(cache["y"], grad)


class ReLU(_Activation):
    """``max(x, 0)`` elementwise (gradient 0 at 0, like torch)."""

    @staticmethod
    def _f(x):
        return np.maximum(x, 0)

    @staticmethod
    def _df(y, grad):
        return grad * (y > 0)


class Tanh(_Activation):
    """``tanh(x)`` elementwise."""

    @staticmethod
    def _f(x):
        return np.tanh(x)

    @staticmethod
    def _df(y, grad):
        return grad * (1 - y * y)


# -- sequence poolings ---------------------------------------------------------

class _Pool(Module):
    """Base of the poolings over time: ``forward(x, lengths=None)``."""

    takes_lengths = True

    def __init__(self, batch_first=False):
        super().__init__()
        self.batch_first = bool(batch_first)

    def _time_major(self, x):
        x = _as_float_array("x", x)
        if x.ndim == 2:
            return x[:, None, :], True
        if x.ndim != 3:
            raise ValueError(f"x must be (seq_len, batch, features), (batch, seq_len, features) "
                             f"with batch_first, or (seq_len, features), got shape {x.shape}")
        return (x.transpose(1, 0, 2) if self.batch_first else x), False

    def forward(self, x, lengths=None):
        """x: sequence outputs (layout as the recurrent layers') -> ``(batch, features)``
        (unbatched: ``(features,)``). lengths: one int per sequence in 1..seq_len."""
        xt, unbatched = self._time_major(x)
        seq_len, batch, _ = xt.shape
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths needs a batched input")
            lengths = _check_lengths(lengths, seq_len, batch)
        else:
            lengths = np.full(batch, seq_len, np.int64)
        out = self._pool(xt, lengths)
        self._cache = ({"shape": xt.shape, "dtype": xt.dtype, "lengths": lengths,
                        "unbatched": unbatched} if self.training else None)
        return out[0] if unbatched else out

    def backward(self, grad_output):
        """grad_output ``(batch, features)`` -> dL/dx in the input's layout."""
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        seq_len, batch, features = cache["shape"]
        grad = _as_float_array("grad_output", grad_output, cache["dtype"])
        expected = (features,) if cache["unbatched"] else (batch, features)
        if grad.shape != expected:
            raise ValueError(f"grad_output must have the shape of the output {expected}, "
                             f"got {grad.shape}")
        self._cache = None
        grad_x = self._unpool(grad.reshape(batch, features), cache["lengths"], cache["shape"])
        if cache["unbatched"]:
            return grad_x[:, 0]
        return np.ascontiguousarray(grad_x.transpose(1, 0, 2)) if self.batch_first else grad_x

    def get_config(self):
        return {"batch_first": self.batch_first}

    def extra_repr(self):
        return "batch_first=True" if self.batch_first else ""


class LastStep(_Pool):
    """The output at each sequence's last valid step ``lengths[b] - 1`` (the last
    step when ``lengths`` is None): ``(seq_len, batch, F) -> (batch, F)``.
    ``LastStep(batch_first=False)``; for a bidirectional layer the reverse half
    of that step has seen only that one step (see SequenceClassifier's
    ``pool="state"``)."""

    @staticmethod
    def _pool(x, lengths):
        return x[lengths - 1, np.arange(x.shape[1])]

    @staticmethod
    def _unpool(grad, lengths, shape):
        grad_x = np.zeros(shape, grad.dtype)
        grad_x[lengths - 1, np.arange(shape[1])] = grad
        return grad_x


class MeanPool(_Pool):
    """Mean of the outputs over each sequence's valid steps:
    ``(seq_len, batch, F) -> (batch, F)``. ``MeanPool(batch_first=False)``."""

    @staticmethod
    def _pool(x, lengths):
        mask = (np.arange(x.shape[0])[:, None] < lengths[None, :]).astype(x.dtype)
        return np.einsum("tbf,tb->bf", x, mask) / lengths[:, None].astype(x.dtype)

    @staticmethod
    def _unpool(grad, lengths, shape):
        mask = (np.arange(shape[0])[:, None] < lengths[None, :]).astype(grad.dtype)
        return (mask / lengths.astype(grad.dtype))[:, :, None] * grad[None, :, :]


# -- containers ----------------------------------------------------------------

class Sequential(Module):
    """Chain modules: ``Sequential(m0, m1, ...)`` or ``Sequential(OrderedDict(name=m))``.

    Parameter names are prefixed by the child's position (``0.weight``,
    ``1.weight_ih_l0``) or by its name in the OrderedDict, like torch.

    ``forward(x, lengths=None, hx=None)``: each child gets the previous child's
    output. Recurrent children (which return ``(out, state)``) get ``hx`` and
    ``lengths`` and pass ``out`` on; their final states are kept in
    ``self.states`` (child name -> state) and ``self.final_state`` (the last
    recurrent child's). Children with ``takes_lengths`` (``LastStep``,
    ``MeanPool``) get ``lengths`` too. ``hx`` is None (zeros), a dict
    ``{child name or index: state}``, or, when there is exactly one recurrent
    child, that child's state itself.

    ``backward(grad_output, grad_states=None)`` runs the children's backwards in
    reverse and returns dL/d(input) (None if the first child is an Embedding).
    ``grad_states`` (dL/d final states) follows the rules of ``hx``; the
    gradients w.r.t. the initial states are left in ``self.grad_hx`` (child
    name -> gradient).
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, module in items:
            self.append(module, name)
        self.states = {}
        self.grad_hx = {}

    def append(self, module, name=None):
        """Add a child at the end (named by its position unless ``name`` is given)."""
        if not _is_module(module):
            raise TypeError(f"Sequential children must be modules (with forward/backward, "
                            f"named_parameters, ...), got {type(module).__name__}")
        name = str(len(self._modules)) if name is None else str(name)
        if name in self._modules or "." in name or not name:
            raise ValueError(f"invalid or duplicate child name {name!r}")
        self._modules[name] = module
        return self

    def get_config(self):
        return {"modules": [[name, module_config(child)] for name, child in self._modules.items()]}

    @classmethod
    def from_config(cls, config):
        return cls(OrderedDict((name, module_from_config(spec))
                               for name, spec in config["modules"]))

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, str):
            return self._modules[index]
        return list(self._modules.values())[index]

    def _recurrent_names(self):
        return [name for name, m in self._modules.items() if _returns_state(m)]

    def _per_child(self, what, value):
        """Normalise hx / grad_states into {child name: value}."""
        if value is None:
            return {}
        recurrent = self._recurrent_names()
        if isinstance(value, dict):
            names = list(self._modules)
            result = {}
            for key, v in value.items():
                name = names[key] if isinstance(key, (int, np.integer)) else str(key)
                if name not in recurrent:
                    raise KeyError(f"{what}: {key!r} is not a recurrent child "
                                   f"(recurrent children: {recurrent})")
                result[name] = v
            return result
        if len(recurrent) != 1:
            raise TypeError(f"{what} must be a dict {{child name or index: state}} when the "
                            f"Sequential has {len(recurrent)} recurrent children")
        return {recurrent[0]: value}

    @property
    def final_state(self):
        """Final state of the last recurrent child in the last forward (or None)."""
        recurrent = [n for n in self._recurrent_names() if n in self.states]
        return self.states[recurrent[-1]] if recurrent else None

    def forward(self, x, lengths=None, hx=None):
        hx = self._per_child("hx", hx)
        self.states = {}
        for name, module in self._modules.items():
            if _returns_state(module):
                x, state = module(x, hx.get(name), lengths)
                self.states[name] = state
            elif _takes_lengths(module):
                x = module(x, lengths=lengths)
            else:
                x = module(x)
        return x

    def backward(self, grad_output, grad_states=None):
        grad_states = self._per_child("grad_states", grad_states)
        self.grad_hx = {}
        grad = grad_output
        items = list(self._modules.items())
        for position in reversed(range(len(items))):
            name, module = items[position]
            if grad is None:
                raise RuntimeError(f"child {name!r} returned no input gradient (an Embedding "
                                   f"can only be the first child)")
            if _returns_state(module):
                grad, self.grad_hx[name] = module.backward(grad, grad_states.get(name))
            else:
                grad = module.backward(grad)
        return grad


# -- models --------------------------------------------------------------------

_CELL_NAMES = {"rnn": (RNN, "tanh"), "rnn_tanh": (RNN, "tanh"), "rnn_relu": (RNN, "relu"),
               "lstm": (LSTM, None), "gru": (GRU, None)}


def make_recurrent(cell, input_size, hidden_size, **kwargs):
    """A recurrent layer by name: ``cell`` in "rnn"/"rnn_tanh", "rnn_relu", "lstm",
    "gru" (case-insensitive); ``kwargs`` go to the layer (num_layers,
    bidirectional, batch_first, dropout, dtype, seed, impl, n_threads, bias)."""
    key = str(cell).lower()
    if key not in _CELL_NAMES:
        raise ValueError(f"cell must be one of {sorted(_CELL_NAMES)}, got {cell!r}")
    cls, nonlinearity = _CELL_NAMES[key]
    if nonlinearity is not None:
        kwargs["nonlinearity"] = nonlinearity
    return cls(input_size, hidden_size, **kwargs)


def _build_parts(num_classes, hidden_size, cell, vocab_size, embedding_dim, input_size,
                 padding_idx, num_layers, bidirectional, rnn_dropout, batch_first, dtype, seed,
                 impl, n_threads):
    """(embed, rnn, head, dropout seed) of the standard models."""
    seeds = _child_seeds(seed, 4)
    if vocab_size is not None:
        if input_size is not None:
            raise ValueError("give vocab_size (token inputs) or input_size (feature inputs), "
                             "not both")
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        embed = Embedding(vocab_size, embedding_dim, padding_idx=padding_idx, dtype=dtype,
                          seed=seeds[0])
        rnn_input = embedding_dim
    elif input_size is not None:
        if padding_idx is not None:
            raise ValueError("padding_idx needs token inputs (vocab_size)")
        embed = (None if embedding_dim is None
                 else Linear(input_size, embedding_dim, dtype=dtype, seed=seeds[0]))
        rnn_input = input_size if embedding_dim is None else embedding_dim
    else:
        raise ValueError("give vocab_size (token inputs) or input_size (feature inputs)")
    rnn = make_recurrent(cell, rnn_input, hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dropout=rnn_dropout,
                         batch_first=batch_first, dtype=dtype, seed=seeds[1], impl=impl,
                         n_threads=n_threads)
    head = Linear(hidden_size * rnn.num_directions, num_classes, dtype=dtype, seed=seeds[2])
    return embed, rnn, head, seeds[3]


class _RecurrentModel(Module):
    """Shared parts: ``embed`` (optional, per step) -> ``rnn`` -> ... -> ``head``."""

    def __init__(self, rnn, head, embed=None, dropout=0.0, seed=None):
        super().__init__()
        if not _returns_state(rnn):
            raise TypeError(f"rnn must be a recurrent layer (RNN, LSTM, GRU), got "
                            f"{type(rnn).__name__}")
        for name, module in (("head", head), ("embed", embed)):
            if module is not None and not _is_module(module):
                raise TypeError(f"{name} must be a module, got {type(module).__name__}")
        if embed is not None:
            self.embed = embed
        self.rnn = rnn
        if isinstance(dropout, Dropout):
            self.dropout = dropout
        elif float(dropout) > 0:
            self.dropout = Dropout(dropout, seed=seed)
        else:
            self.dropout = None
        self.head = head
        self.final_state = None
        self.grad_hx = None

    @property
    def batch_first(self):
        return bool(getattr(self.rnn, "batch_first", False))

    def get_config(self):
        embed = getattr(self, "embed", None)
        return {"rnn": module_config(self.rnn), "head": module_config(self.head),
                "embed": None if embed is None else module_config(embed),
                "dropout": 0.0 if self.dropout is None else self.dropout.p}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("rnn", "head", "embed"):
            if config.get(key) is not None:
                config[key] = module_from_config(config[key])
        return cls(**config)

    def _encode(self, x, lengths, hx):
        h = self.embed(x) if getattr(self, "embed", None) is not None else x
        out, state = self.rnn(h, hx, lengths)
        self.final_state = state
        return out, state

    def _decode_input_grad(self, grad_out, grad_hn):
        grad_x, self.grad_hx = self.rnn.backward(grad_out, grad_hn)
        if getattr(self, "embed", None) is not None:
            return self.embed.backward(grad_x)
        return grad_x


class SequenceClassifier(_RecurrentModel):
    """Many-to-one: ``[embed] -> rnn -> pool over time -> [dropout] -> head``.

    ``SequenceClassifier(rnn, head, embed=None, pool="last", dropout=0.0, seed=None)``
    composes given modules: ``rnn`` a recurrent layer, ``head`` a module on
    ``(batch, features)`` (usually ``Linear(hidden * directions, classes)``),
    ``embed`` an optional per-step module (``Embedding`` for token ids,
    ``Linear`` for features). ``pool``:

    - ``"last"``: the output at each sequence's last valid step (``lengths - 1``);
    - ``"mean"``: the mean of the outputs over the valid steps;
    - ``"state"``: the last layer's final hidden state ``h_n``, directions
      concatenated (for a bidirectional layer the reverse direction's state after
      reading the whole sequence; equals "last" for a unidirectional layer).

    ``forward(x, lengths=None, hx=None) -> logits (batch, classes)`` (unbatched
    input: ``(classes,)``); the recurrent final state is kept in
    ``final_state``. ``backward(grad_logits, grad_hn=None)`` returns dL/dx
    (None with an Embedding) and leaves dL/d(hx) in ``grad_hx``.
    ``SequenceClassifier.build(...)`` creates the standard parts.
    Parameter names: ``embed.*``, ``rnn.*``, ``head.*``.
    """

    POOLS = ("last", "mean", "state")

    def __init__(self, rnn, head, embed=None, pool="last", dropout=0.0, seed=None):
        super().__init__(rnn, head, embed, dropout, seed)
        if pool not in self.POOLS:
            raise ValueError(f"pool must be one of {self.POOLS}, got {pool!r}")
        self.pool = pool

    @classmethod
    def build(cls, num_classes, hidden_size, *, cell="lstm", vocab_size=None,
              embedding_dim=None, input_size=None, padding_idx=None, num_layers=1,
              bidirectional=False, dropout=0.0, rnn_dropout=0.0, pool="last",
              batch_first=False, dtype="float32", seed=None, impl="cython", n_threads=None):
        """Standard classifier. Token inputs: ``vocab_size`` (an Embedding of
        ``embedding_dim``, default hidden_size, with optional ``padding_idx``).
        Feature inputs: ``input_size`` (fed to the rnn directly, or through a
        Linear projection to ``embedding_dim`` if given). ``dropout`` before the
        head, ``rnn_dropout`` between recurrent layers. ``seed`` seeds every part."""
        embed, rnn, head, drop_seed = _build_parts(
            num_classes, hidden_size, cell, vocab_size, embedding_dim, input_size, padding_idx,
            num_layers, bidirectional, rnn_dropout, batch_first, dtype, seed, impl, n_threads)
        return cls(rnn, head, embed=embed, pool=pool, dropout=dropout, seed=drop_seed)

    def forward(self, x, lengths=None, hx=None):
        out, state = self._encode(x, lengths, hx)
        unbatched = out.ndim == 2
        out_t = out[:, None] if unbatched else (out.transpose(1, 0, 2) if self.batch_first
                                                else out)
        seq_len, batch, width = out_t.shape
        lens = (np.full(batch, seq_len, np.int64) if lengths is None
                else np.asarray(lengths, dtype=np.int64))
        if self.pool == "last":
            feats = LastStep._pool(out_t, lens)
        elif self.pool == "mean":
            feats = MeanPool._pool(out_t, lens)
        else:
            h_n = state[0] if isinstance(state, tuple) else state
            D = self.rnn.num_directions
            top = h_n[-D:] if not unbatched else h_n[-D:, None]      # (D, batch, H)
            feats = np.ascontiguousarray(top.transpose(1, 0, 2)).reshape(batch, -1)
        if unbatched:
            feats = feats[0]
        if self.dropout is not None:
            feats = self.dropout(feats)
        logits = self.head(feats)
        self._cache = ({"shape": out_t.shape, "lengths": lens, "unbatched": unbatched,
                        "dtype": out.dtype, "state_shape": np.shape(state[0] if isinstance(
                            state, tuple) else state), "lstm": isinstance(state, tuple)}
                       if self.training else None)
        return logits

    def backward(self, grad_logits, grad_hn=None):
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        self._cache = None
        grad = self.head.backward(grad_logits)
        if self.dropout is not None:
            grad = self.dropout.backward(grad)
        seq_len, batch, width = cache["shape"]
        grad = np.asarray(grad, dtype=cache["dtype"]).reshape(batch, width)
        if self.pool == "state":
            grad_out = np.zeros(cache["shape"], cache["dtype"])
            D = self.rnn.num_directions
            g_top = grad.reshape(batch, D, -1).transpose(1, 0, 2)   # (D, batch, H)
            g_h = np.zeros(cache["state_shape"], cache["dtype"])
            g_h[-D:] = g_top[:, 0] if cache["unbatched"] else g_top
            if cache["lstm"]:
                user_h, user_c = (None, None) if grad_hn is None else grad_hn
                grad_hn = (g_h if user_h is None else g_h + user_h, user_c)
            else:
                grad_hn = g_h if grad_hn is None else g_h + grad_hn
        elif self.pool == "last":
            grad_out = LastStep._unpool(grad, cache["lengths"], cache["shape"])
        else:
            grad_out = MeanPool._unpool(grad, cache["lengths"], cache["shape"])
        if cache["unbatched"]:
            grad_out = grad_out[:, 0]
        elif self.batch_first:
            grad_out = np.ascontiguousarray(grad_out.transpose(1, 0, 2))
        return self._decode_input_grad(grad_out, grad_hn)

    def get_config(self):
        return dict(super().get_config(), pool=self.pool)

    def extra_repr(self):
        return f"pool={self.pool!r}"


class SequenceTagger(_RecurrentModel):
    """Many-to-many: ``[embed] -> rnn -> [dropout] -> head`` at every step.

    ``SequenceTagger(rnn, head, embed=None, dropout=0.0, seed=None)``: ``head``
    (usually ``Linear(hidden * directions, classes)``) is applied to every
    step's output. ``forward(x, lengths=None, hx=None) -> logits`` of shape
    ``(seq_len, batch, classes)`` (``(batch, seq_len, classes)`` if the rnn is
    batch_first; ``(seq_len, classes)`` unbatched). With ``lengths`` the
    logits past a sequence's end are the head applied to zeros: mask them in
    the loss (``ignore_index`` or ``mask=sequence_mask(lengths, seq_len)``).
    ``final_state`` keeps the recurrent state (carry it as ``hx`` for truncated
    BPTT). ``backward(grad_logits, grad_hn=None)`` returns dL/dx (None with an
    Embedding) and leaves dL/d(hx) in ``grad_hx``. ``build(...)`` creates the
    standard parts. Parameter names: ``embed.*``, ``rnn.*``, ``head.*``.
    """

    @classmethod
    def build(cls, num_classes, hidden_size, *, cell="lstm", vocab_size=None,
              embedding_dim=None, input_size=None, padding_idx=None, num_layers=1,
              bidirectional=False, dropout=0.0, rnn_dropout=0.0, batch_first=False,
              dtype="float32", seed=None, impl="cython", n_threads=None):
        """Standard tagger; arguments as ``SequenceClassifier.build``."""
        embed, rnn, head, drop_seed = _build_parts(
            num_classes, hidden_size, cell, vocab_size, embedding_dim, input_size, padding_idx,
            num_layers, bidirectional, rnn_dropout, batch_first, dtype, seed, impl, n_threads)
        return cls(rnn, head, embed=embed, dropout=dropout, seed=drop_seed)

    def forward(self, x, lengths=None, hx=None):
        out, _ = self._encode(x, lengths, hx)
        if self.dropout is not None:
            out = self.dropout(out)
        logits = self.head(out)
        self._cache = {"ok": True} if self.training else None
        return logits

    def backward(self, grad_logits, grad_hn=None):
        if self._cache is None:
            raise _no_cache_error()
        self._cache = None
        grad = self.head.backward(grad_logits)
        if self.dropout is not None:
            grad = self.dropout.backward(grad)
        return self._decode_input_grad(grad, grad_hn)


class LanguageModel(SequenceTagger):
    """Next-token model: a SequenceTagger over a vocabulary (token ids in, one
    logit per vocabulary entry and step out). ``LanguageModel.build(vocab_size,
    hidden_size, *, embedding_dim=None, cell="lstm", num_layers=1, ...)``; train
    with targets = inputs shifted by one step."""

    @classmethod
    def build(cls, vocab_size, hidden_size, *, cell="lstm", embedding_dim=None,
              padding_idx=None, num_layers=1, dropout=0.0, rnn_dropout=0.0,
              batch_first=False, dtype="float32", seed=None, impl="cython", n_threads=None):
        """Embedding(vocab_size, embedding_dim) -> unidirectional rnn -> Linear to vocab."""
        embed, rnn, head, drop_seed = _build_parts(
            vocab_size, hidden_size, cell, vocab_size, embedding_dim, None, padding_idx,
            num_layers, False, rnn_dropout, batch_first, dtype, seed, impl, n_threads)
        return cls(rnn, head, embed=embed, dropout=dropout, seed=drop_seed)


# -- architecture configs --------------------------------------------------------

_RECURRENT_CLASSES = (RNN, LSTM, GRU)
_REGISTRY = {}


def _class_path(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def register_module_class(cls):
    """Make a module class outside fastrnn loadable by ``module_from_config`` /
    ``fastrnn.io.load`` (it needs ``get_config()`` and ``from_config()``).
    Usable as a class decorator; returns ``cls``."""
    if not isinstance(cls, type):
        raise TypeError(f"register_module_class needs a class, got {cls!r}")
    _REGISTRY[_class_path(cls)] = cls
    return cls


def _recurrent_config(layer):
    config = {"input_size": layer.input_size, "hidden_size": layer.hidden_size,
              "num_layers": layer.num_layers, "bias": layer.bias,
              "batch_first": layer.batch_first, "dropout": layer.dropout,
              "bidirectional": layer.bidirectional, "dtype": layer.dtype.name,
              "impl": layer.impl, "recurrent_dropout": layer.recurrent_dropout}
    if isinstance(layer, RNN):
        config["nonlinearity"] = layer.nonlinearity
    return config


def module_config(module):
    """``{"class": "fastrnn.nn.Linear", "config": {...}}``: a JSON-able spec that
    ``module_from_config`` turns back into the same architecture (with fresh
    weights). Works for the recurrent layers, every module here and any module
    with ``get_config()``; thread settings (``n_threads``) are not part of it."""
    if isinstance(module, _RECURRENT_CLASSES):
        return {"class": _class_path(type(module)), "config": _recurrent_config(module)}
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise NotImplementedError(f"{type(module).__name__} has no get_config(): define "
                                  f"get_config() / from_config() to save it with fastrnn.io")
    return {"class": _class_path(type(module)), "config": get_config()}


def _resolve_class(path):
    if path in _REGISTRY:
        return _REGISTRY[path]
    module_name, _, name = str(path).rpartition(".")
    if module_name == "fastrnn" or module_name.startswith("fastrnn."):
        import importlib
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type):
            return cls
    raise ValueError(f"unknown module class {path!r}: classes outside fastrnn must be "
                     f"registered with fastrnn.nn.register_module_class before loading")


def module_from_config(spec):
    """Rebuild a module from ``module_config(module)`` (fresh weights)."""
    if not isinstance(spec, dict) or "class" not in spec or "config" not in spec:
        raise ValueError(f"a module spec must be a dict with 'class' and 'config', got {spec!r}")
    cls = _resolve_class(spec["class"])
    config = dict(spec["config"])
    if issubclass(cls, _RECURRENT_CLASSES):
        return cls(**config)
    from_config = getattr(cls, "from_config", None)
    if from_config is None:
        raise ValueError(f"{spec['class']} has no from_config()")
    return from_config(config)
