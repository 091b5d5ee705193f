"""Losses with explicit gradients: softmax cross-entropy and mean squared error.

Two equivalent APIs:

- Loss objects, for training loops::

      ce = CrossEntropyLoss(ignore_index=-100, reduction="mean")
      loss = ce(logits, targets, mask=None)    # a Python float
      grad = ce.backward()                     # dL/dlogits, shape and dtype of logits
      model.backward(grad)

  ``backward(grad_loss=1.0)`` scales by the upstream gradient (an array of
  the targets' shape for ``reduction="none"``) and uses the last call.

- Functions returning ``(loss, grad)``: ``cross_entropy(logits, targets, ...)``
  and ``mse_loss(pred, target, ...)``.

Everything is computed in float64 (numerically stable log-sum-exp for the
cross-entropy); the gradient is returned in the input's dtype.
"""
import numpy as np

__all__ = ["CrossEntropyLoss", "MSELoss", "cross_entropy", "mse_loss", "log_softmax", "softmax"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _float_input(name, value):
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be a real floating-point array, got dtype {array.dtype}")
    return array


def _mask(mask, shape):
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool and mask.dtype.kind not in "iu":
        raise TypeError(f"mask must be boolean (True = counts) or 0/1 integers, got dtype "
                        f"{mask.dtype}")
    try:
        return np.broadcast_to(mask.astype(bool), shape)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to {shape}") from None


def log_softmax(logits, axis=-1):
    """Numerically stable log-softmax (in float64 for float64 input, else the input dtype)."""
    z = _float_input("logits", logits)
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(logits, axis=-1):
    """Numerically stable softmax."""
    return np.exp(log_softmax(logits, axis))


def _scale(grad_loss, reduction, shape):
    """Upstream gradient as a float or an array of the per-element loss shape."""
    if reduction == "none":
        g = np.asarray(grad_loss, dtype=np.float64)
        try:
            return np.broadcast_to(g, shape)
        except ValueError:
            raise ValueError(f"grad_loss must broadcast to the loss shape {shape} "
                             f"(reduction='none'), got shape {g.shape}") from None
    g = np.asarray(grad_loss, dtype=np.float64)
    if g.size != 1:
        raise ValueError(f"grad_loss must be a scalar for reduction={reduction!r}")
    return float(g.reshape(()))


class CrossEntropyLoss:
    """Softmax cross-entropy on logits ``(..., C)`` (classes in the LAST axis) with
    integer targets of shape ``(...)`` (torch's ``CrossEntropyLoss`` on
    ``logits.reshape(-1, C)``, ``targets.reshape(-1)``).

    ``CrossEntropyLoss(ignore_index=-100, reduction="mean", weight=None)``:

    - targets equal to ``ignore_index`` count for nothing (not in the mean's
      denominator either); other targets must be in 0..C-1 (else IndexError);
    - ``mask`` (call argument, boolean, broadcastable to the targets' shape,
      e.g. ``fastrnn.nn.sequence_mask(lengths, seq_len)``): False entries are
      ignored the same way (padding);
    - ``weight``: optional per-class weights ``(C,)``; with "mean" the sum is
      divided by the total weight of the counted targets (torch's rule);
    - ``reduction``: "mean" (over counted targets; NaN if there are none, as in
      torch, with a zero gradient), "sum", or "none" (per-element losses of the
      targets' shape, 0 where ignored).

    ``loss = ce(logits, targets, mask=None)`` returns a float (an array for
    "none"); ``ce.backward(grad_loss=1.0)`` returns dL/dlogits (shape and dtype
    of logits; exactly zero at ignored positions, even if their logits are not
    finite).
    """

    def __init__(self, ignore_index=-100, reduction="mean", weight=None):
        self.ignore_index = int(ignore_index)
        self.reduction = _check_reduction(reduction)
        if weight is not None:
            weight = np.asarray(_float_input("weight", weight), dtype=np.float64)
            if weight.ndim != 1:
                raise ValueError(f"weight must be 1-D (one per class), got shape {weight.shape}")
        self.weight = weight
        self._cache = None

    def __call__(self, logits, targets, mask=None):
        return self.forward(logits, targets, mask)

    def forward(self, logits, targets, mask=None):
        logits = _float_input("logits", logits)
        if logits.ndim < 1 or logits.shape[-1] < 1:
            raise ValueError("logits must have a non-empty class axis (the last one)")
        targets = np.asarray(targets)
        if targets.dtype.kind not in "iu":
            raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"targets must have shape {logits.shape[:-1]} (logits' shape "
                             f"without the class axis), got {targets.shape}")
        C = logits.shape[-1]
        if self.weight is not None and self.weight.shape != (C,):
            raise ValueError(f"weight must have shape ({C},), got {self.weight.shape}")
        z = logits.reshape(-1, C).astype(np.float64)
        t = targets.reshape(-1).astype(np.int64)
        valid = t != self.ignore_index
        mask = _mask(mask, targets.shape)
        if mask is not None:
            valid &= mask.reshape(-1)
        if np.any(valid & ((t < 0) | (t >= C))):
            bad = t[valid & ((t < 0) | (t >= C))]
            raise IndexError(f"targets must be in 0..{C - 1} or ignore_index="
                             f"{self.ignore_index}, got {bad[:5].tolist()}")
        safe_t = np.where(valid, t, 0)
        rows = np.arange(t.size)
        with np.errstate(invalid="ignore", over="ignore"):
            logp = z - z.max(axis=1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        w = (self.weight[safe_t] if self.weight is not None else np.ones(t.size)) * valid
        picked = np.where(valid, logp[rows, safe_t], 0.0)
        losses = -w * picked
        total_weight = w.sum()
        if self.reduction == "mean":
            loss = losses.sum() / total_weight if total_weight != 0 else float("nan")
        elif self.reduction == "sum":
            loss = losses.sum()
        else:
            loss = losses.reshape(targets.shape)
        self._cache = {"logp": logp, "t": safe_t, "valid": valid, "w": w,
                       "total": total_weight, "shape": logits.shape, "dtype": logits.dtype}
        return float(loss) if self.reduction != "none" else loss

    def backward(self, grad_loss=1.0):
        """dL/dlogits of the last call (shape and dtype of its logits)."""
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward call first")
        scale = _scale(grad_loss, self.reduction, cache["shape"][:-1])
        if self.reduction == "none":
            coef = cache["w"] * np.asarray(scale).reshape(-1)
        elif self.reduction == "mean":
            coef = cache["w"] * (scale / cache["total"] if cache["total"] != 0 else 0.0)
        else:
            coef = cache["w"] * scale
        valid = cache["valid"]
        with np.errstate(invalid="ignore", over="ignore"):
            grad = np.exp(cache["logp"])
        grad[np.arange(grad.shape[0]), cache["t"]] -= 1.0
        grad *= coef[:, None]
        grad[~valid] = 0.0
        return grad.reshape(cache["shape"]).astype(cache["dtype"], copy=False)


class MSELoss:
    """Mean squared error ``(pred - target)^2``; ``pred`` and ``target`` of the same shape.

    ``MSELoss(reduction="mean")`` ("mean", "sum" or "none"). ``mask`` (call
    argument, boolean, broadcastable to ``pred``'s shape): only True elements
    count, and "mean" divides by their number. ``loss = mse(pred, target,
    mask=None)``; ``mse.backward(grad_loss=1.0)`` returns dL/dpred.
    """

    def __init__(self, reduction="mean"):
        self.reduction = _check_reduction(reduction)
        self._cache = None

    def __call__(self, pred, target, mask=None):
        return self.forward(pred, target, mask)

    def forward(self, pred, target, mask=None):
        pred = _float_input("pred", pred)
        target = _float_input("target", target)
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {pred.shape} and "
                             f"{target.shape}")
        diff = pred.astype(np.float64) - target.astype(np.float64)
        mask = _mask(mask, pred.shape)
        if mask is not None:
            diff = np.where(mask, diff, 0.0)
        count = diff.size if mask is None else int(mask.sum())
        sq = diff * diff
        if self.reduction == "mean":
            loss = float(sq.sum() / count) if count else float("nan")
        elif self.reduction == "sum":
            loss = float(sq.sum())
        else:
            loss = sq
        self._cache = {"diff": diff, "count": count, "dtype": pred.dtype}
        return loss

    def backward(self, grad_loss=1.0):
        """dL/dpred of the last call (shape and dtype of its pred)."""
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward call first")
        diff = cache["diff"]
        scale = _scale(grad_loss, self.reduction, diff.shape)
        if self.reduction == "mean":
            scale = scale / cache["count"] if cache["count"] else 0.0
        return (2.0 * diff * scale).astype(cache["dtype"], copy=False)


def cross_entropy(logits, targets, *, ignore_index=-100, reduction="mean", weight=None,
                  mask=None):
    """``(loss, dL/dlogits)`` of ``CrossEntropyLoss(ignore_index, reduction, weight)``
    (for "none", the gradient of the sum of the per-element losses)."""
    ce = CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction, weight=weight)
    loss = ce(logits, targets, mask)
    return loss, ce.backward()


def mse_loss(pred, target, *, reduction="mean", mask=None):
    """``(loss, dL/dpred)`` of ``MSELoss(reduction)`` (for "none", the gradient of
    the sum of the per-element losses)."""
    mse = MSELoss(reduction=reduction)
    loss = mse(pred, target, mask)
    return loss, mse.backward()
