"""Optimisers (SGD, Adam, AdamW), learning-rate schedulers and gradient clipping
with torch.optim's update rules, on NumPy arrays updated IN PLACE.

What to optimise (the ``params`` argument):

- a model: anything with ``named_parameters()`` and ``.grads`` (every
  fastrnn layer, ``Sequential``, the models). Parameters and gradients are
  looked up BY NAME at every step, so this stays right after
  ``model.load_state_dict(...)`` (the recurrent layers replace their arrays
  there). This is the recommended form.
- a list of ``(name, array)`` pairs, with ``grads=`` a mapping name ->
  gradient array read at each step (e.g. ``model.grads``), or gradients given
  to ``step(grads=...)``. These arrays are fixed at construction.
- a list of dicts ``{"params": model_or_pairs, "lr": ..., ...}``: parameter
  groups with their own hyperparameters, like torch.

``param_groups`` is a list of dicts holding each group's hyperparameters and
``"params"``: the names of its parameters; schedulers change ``group["lr"]``.
The optimiser state (momentum buffers, Adam moments, step counts) is keyed by
parameter name, so ``state_dict()`` / ``load_state_dict()`` round-trip
across processes as long as the names match.

Updates happen in the parameter's dtype, as in torch. A parameter whose
gradient is None (in the grads mapping) is skipped, like a torch parameter
with ``grad=None``; a zero gradient is an ordinary gradient (momentum and
weight decay still apply).

The recurrent layers make their parameters read-only in eval mode (while
packed inference weights are cached): call ``model.train()`` before
optimising; a read-only parameter raises a RuntimeError saying so.
"""
import math
import types

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "ExponentialLR",
           "CosineAnnealingLR", "LambdaLR", "clip_grad_norm_", "clip_grad_value_"]


def _is_model(obj):
    return callable(getattr(obj, "named_parameters", None)) and hasattr(obj, "grads")


class _Group:
    """Where a group's arrays come from (private; param_groups hold the public part)."""

    def __init__(self, source, grads):
        if _is_model(source):
            self.model = source
            self.pairs = None
            self.names = [name for name, _ in source.named_parameters()]
        else:
            self.model = None
            bare = TypeError("params must be named: pass the model itself or "
                             "model.named_parameters() (name, array) pairs, not bare arrays")
            if isinstance(source, np.ndarray):
                raise bare
            try:
                items = list(source)
            except TypeError:
                raise TypeError("params must be a model (with named_parameters() and .grads), "
                                "a list of (name, array) pairs, or a list of param-group "
                                "dicts") from None
            if any(isinstance(item, np.ndarray) for item in items):
                raise bare
            try:
                pairs = [tuple(item) for item in items]
            except TypeError:
                raise TypeError("params must be a model (with named_parameters() and .grads), "
                                "a list of (name, array) pairs, or a list of param-group "
                                "dicts") from None
            for item in pairs:
                if len(item) != 2 or not isinstance(item[0], str) \
                        or not isinstance(item[1], np.ndarray):
                    raise TypeError("params pairs must be (name: str, array: numpy.ndarray), "
                                    f"got {tuple(type(v).__name__ for v in item)}")
            self.pairs = dict(pairs)
            if len(self.pairs) != len(pairs):
                raise ValueError("params pairs contain duplicate names")
            self.names = [name for name, _ in pairs]
        self.grads = grads

    def arrays(self, override):
        """[(name, param, grad or None)] for this step."""
        if self.model is not None:
            params = dict(self.model.named_parameters())
            grads = self.model.grads
        else:
            params = self.pairs
            grads = self.grads
        if override is not None:
            grads = override
        if grads is None:
            raise ValueError("no gradients: pass grads= (a mapping name -> gradient array) to "
                             "the optimiser or to step()")
        result = []
        for name in self.names:
            if name not in params:
                raise KeyError(f"parameter {name!r} is no longer in the model")
            if name not in grads:
                raise KeyError(f"no gradient for parameter {name!r}")
            result.append((name, params[name], grads[name]))
        return result

    def zero_grad(self):
        if self.model is not None:
            self.model.zero_grad()
        elif self.grads is not None:
            for name in self.names:
                g = self.grads.get(name)
                if g is not None:
                    g.fill(0)


class Optimizer:
    """Base class: parameter groups, per-name state, zero_grad and state dicts.

    Subclasses implement ``_update(group, name, param, grad, state)`` for one
    parameter (``state`` is its dict in ``self.state``).
    """

    def __init__(self, params, defaults, grads=None):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        self._groups = []
        self._grads = grads
        if isinstance(params, (list, tuple)) and params and isinstance(params[0], dict):
            for group in params:
                self.add_param_group(group)
        else:
            self.add_param_group({"params": params})

    def add_param_group(self, group):
        """Add ``{"params": model_or_pairs, **hyperparameters}`` (defaults fill the rest)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a param group must be a dict with a 'params' entry")
        source = _Group(group["params"], self._grads)
        taken = {n for g in self.param_groups for n in g["params"]}
        clash = [n for n in source.names if n in taken]
        if clash:
            raise ValueError(f"parameters appear in more than one group: {clash}")
        unknown = [k for k in group if k != "params" and k not in self.defaults
                   and k != "initial_lr"]
        if unknown:
            raise TypeError(f"unknown hyperparameters {unknown} (known: {list(self.defaults)})")
        public = dict(self.defaults)
        public.update({k: v for k, v in group.items() if k != "params"})
        self._check_hyper(public)
        public["params"] = list(source.names)
        self.param_groups.append(public)
        self._groups.append(source)

    def _check_hyper(self, group):
        if not group["lr"] >= 0.0:
            raise ValueError(f"invalid learning rate: {group['lr']}")
        if not group.get("weight_decay", 0.0) >= 0.0:
            raise ValueError(f"invalid weight_decay: {group['weight_decay']}")

    def zero_grad(self):
        """Zero the gradients of every parameter (the model's, or the grads mapping's)."""
        for source in self._groups:
            source.zero_grad()

    def step(self, grads=None):
        """One update of every parameter, in place. ``grads``: optional mapping
        name -> gradient for this step (instead of the model's / constructor's)."""
        work = []
        for group, source in zip(self.param_groups, self._groups):
            for name, param, grad in source.arrays(grads):
                if grad is None:
                    continue
                if not isinstance(param, np.ndarray) or not param.flags.writeable:
                    raise RuntimeError(
                        f"parameter {name!r} is read-only: the recurrent layers lock their "
                        f"parameters in eval mode (packed inference weights are cached); call "
                        f"model.train() before optimiser steps")
                grad = np.asarray(grad)
                if grad.shape != param.shape:
                    raise ValueError(f"gradient of {name!r} has shape {grad.shape}, the "
                                     f"parameter {param.shape}")
                work.append((group, name, param, grad))
        for group, name, param, grad in work:
            self._update(group, name, param, grad, self.state.setdefault(name, {}))

    def _update(self, group, name, param, grad, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self):
        """``{"state": {name: {key: array copy or scalar}}, "param_groups": [...]}``."""
        state = {name: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                        for k, v in entry.items()}
                 for name, entry in self.state.items()}
        groups = [dict(g, params=list(g["params"])) for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters (incl. scheduler-set lr) and state; the groups
        must hold the same parameter names. Arrays are copied."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimiser "
                             f"{len(self.param_groups)}")
        for saved, group in zip(groups, self.param_groups):
            if list(saved["params"]) != group["params"]:
                raise ValueError("state_dict param groups hold different parameter names")
        names = {n for g in self.param_groups for n in g["params"]}
        unknown = [n for n in state_dict["state"] if n not in names]
        if unknown:
            raise KeyError(f"state for unknown parameters {unknown}")
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {name: {k: (np.array(v) if isinstance(v, np.ndarray) else v)
                             for k, v in entry.items()}
                      for name, entry in state_dict["state"].items()}

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in group.items() if k != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule::

        g = grad (+ weight_decay * p)
        if momentum: buf = g at the first step, else momentum * buf + (1 - dampening) * g
                     g = g + momentum * buf if nesterov else buf
        p -= lr * g            (maximize: the gradient is negated first)

    ``SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
    *, maximize=False, grads=None)``.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, grads=None):
        if momentum < 0.0:
            raise ValueError(f"invalid momentum value: {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), grads)

    def _update(self, group, name, param, grad, state):
        lr, momentum = group["lr"], group["momentum"]
        g = -grad if group["maximize"] else grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * param
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, dtype=param.dtype)
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        param += (-lr) * g


class Adam(Optimizer):
    """Adam, torch.optim.Adam's rule (step t counted per parameter)::

        g = grad (+ weight_decay * p)             (AdamW: p *= 1 - lr * weight_decay)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        v_hat = max(v_hat, v) if amsgrad else v
        p += -(lr / (1 - beta1^t)) * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)

    ``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    amsgrad=False, *, maximize=False, grads=None)``.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, grads=None):
        if not 0.0 <= eps:
            raise ValueError(f"invalid epsilon value: {eps}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas: {betas} (two values in [0, 1))")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize), grads)

    def _update(self, group, name, param, grad, state):
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0.0
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(param)
        g = -grad if group["maximize"] else grad
        state["step"] += 1
        step = state["step"]
        if wd != 0:
            if self._decoupled:
                param *= 1 - lr * wd
            else:
                g = g + wd * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # torch's lerp: start + w * (end - start) for |w| < 0.5, else end - (end - start) * (1 - w)
        weight = 1 - beta1
        if abs(weight) < 0.5:
            exp_avg += weight * (g - exp_avg)
        else:
            exp_avg[...] = g - (g - exp_avg) * (1 - weight)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        if group["amsgrad"]:
            if "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = np.zeros_like(param)
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            denom = np.sqrt(state["max_exp_avg_sq"]) / bias_correction2_sqrt + eps
        else:
            denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        param += (-step_size) * exp_avg / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): each step first does
    ``p *= 1 - lr * weight_decay``, then the Adam update without L2 in the gradient.

    ``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
    amsgrad=False, *, maximize=False, grads=None)``.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, grads=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, grads=grads)


# -- learning-rate schedulers --------------------------------------------------

class LRScheduler:
    """Base class with torch.optim.lr_scheduler's protocol: construction sets
    ``group["initial_lr"]`` and takes the initial step (``last_epoch`` becomes 0);
    call ``step()`` once per epoch AFTER ``optimizer.step()``. ``get_last_lr()``
    gives the current learning rates; ``state_dict()`` / ``load_state_dict()``.
    ``last_epoch >= 0`` resumes (needs ``initial_lr`` in the groups, e.g. from a
    loaded optimiser state)."""

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a fastrnn.optim.Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   f"when resuming a scheduler with last_epoch >= 0")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self):
        """Advance one epoch and set each group's lr."""
        self._step_count += 1
        self.last_epoch += 1
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)

    def _current(self):
        return [group["lr"] for group in self.optimizer.param_groups]


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs (torch's recursive form).
    ``StepLR(optimizer, step_size, gamma=0.1, last_epoch=-1)``."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = int(step_size)
        if self.step_size < 1:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]


class ExponentialLR(LRScheduler):
    """Multiply the lr by ``gamma`` every epoch. ``ExponentialLR(optimizer, gamma,
    last_epoch=-1)``."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._current()
        return [lr * self.gamma for lr in self._current()]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the initial lr to ``eta_min`` over ``T_max`` epochs,
    with torch's recursive formula (so it composes with external lr changes, and
    goes back up after T_max like torch).
    ``CosineAnnealingLR(optimizer, T_max, eta_min=0.0, last_epoch=-1)``."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._current()
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base_lr - self.eta_min)
                    * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base_lr in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [lr + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, lr in zip(self.base_lrs, self._current())]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (lr - self.eta_min) + self.eta_min
                for lr in self._current()]


class LambdaLR(LRScheduler):
    """lr = initial lr * ``lr_lambda(epoch)`` (one function, or one per group).
    ``LambdaLR(optimizer, lr_lambda, last_epoch=-1)``. ``state_dict()`` leaves out
    plain functions/lambdas (like torch); callable objects' ``__dict__`` is saved."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        groups = optimizer.param_groups
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(groups):
                raise ValueError(f"expected {len(groups)} lr_lambdas, got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(groups)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas,
                                                                      self.base_lrs)]

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        lambdas = state.pop("lr_lambdas")
        self.__dict__.update(state)
        for fn, saved in zip(self.lr_lambdas, lambdas):
            if saved is not None:
                fn.__dict__.update(saved)


# -- gradient clipping ---------------------------------------------------------

def _grad_arrays(grads):
    """Gradient arrays from a model (``.grads``), an optimiser, a mapping name ->
    gradient, a single array, or an iterable of arrays or (name, array) pairs."""
    if isinstance(grads, Optimizer):
        arrays = []
        for source in grads._groups:
            arrays += [g for _, _, g in source.arrays(None)]
    elif hasattr(grads, "grads") and not isinstance(grads, np.ndarray):
        arrays = list(grads.grads.values())
    elif isinstance(grads, dict):
        arrays = list(grads.values())
    elif isinstance(grads, np.ndarray):
        arrays = [grads]
    else:
        arrays = [item[1] if isinstance(item, tuple) else item for item in grads]
    arrays = [g for g in arrays if g is not None]
    for g in arrays:
        if not isinstance(g, np.ndarray):
            raise TypeError(f"gradients must be numpy arrays, got {type(g).__name__}")
    return arrays


def _vector_norm(values, norm_type):
    if norm_type == math.inf:
        return float(np.max(np.abs(values))) if values.size else 0.0
    if norm_type == -math.inf:
        return float(np.min(np.abs(values))) if values.size else math.inf
    return float(np.linalg.norm(values, ord=norm_type)) if values.size else 0.0


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale gradients in place so that their global norm is at most ``max_norm``
    (torch.nn.utils.clip_grad_norm_): total = norm of the per-array norms; every
    gradient is multiplied by ``min(max_norm / (total + 1e-6), 1)``. Returns the
    total norm (before clipping) as a float.

    ``grads``: a model (its ``.grads``), an optimiser (its parameters'
    gradients), a mapping name -> gradient, or an iterable of gradient arrays /
    ``(name, gradient)`` pairs. NOTE: pass GRADIENTS (``model.grads``), not
    ``model.named_parameters()``. Norms are computed in float64.
    """
    arrays = _grad_arrays(grads)
    norm_type = float(norm_type)
    if not arrays:
        return 0.0
    norms = np.array([_vector_norm(np.asarray(g, dtype=np.float64).reshape(-1), norm_type)
                      for g in arrays])
    total = _vector_norm(norms, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"non-finite, so it cannot be clipped; set error_if_nonfinite=False "
                           f"to scale by it anyway")
    coef = float(np.minimum(float(max_norm) / (total + 1e-6), 1.0))
    if coef != 1.0:
        for g in arrays:
            g *= coef
    return total


def clip_grad_value_(grads, clip_value):
    """Clip every gradient element into ``[-clip_value, clip_value]`` in place
    (torch.nn.utils.clip_grad_value_); ``grads`` as for ``clip_grad_norm_``."""
    clip_value = float(clip_value)
    for g in _grad_arrays(grads):
        np.clip(g, -clip_value, clip_value, out=g)
