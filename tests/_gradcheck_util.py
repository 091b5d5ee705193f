"""Central finite differences shared by the nn / loss gradient tests (float64)."""
import numpy as np

EPS = 1e-6
RTOL = 1e-6


def sample_indices(shape, rng, max_count=24, exclude_rows=()):
    """Up to max_count multi-indices of an array of ``shape`` (all if small)."""
    all_idx = [idx for idx in np.ndindex(*shape) if not (idx and idx[0] in exclude_rows)]
    if len(all_idx) <= max_count:
        return all_idx
    pick = rng.choice(len(all_idx), size=max_count, replace=False)
    return [all_idx[i] for i in sorted(pick)]


def numeric(f, array, indices, eps=EPS):
    """dF/d array[idx] for each idx, by central differences (array edited in place)."""
    result = []
    for idx in indices:
        old = array[idx]
        array[idx] = old + eps
        plus = f()
        array[idx] = old - eps
        minus = f()
        array[idx] = old
        result.append((plus - minus) / (2 * eps))
    return np.array(result)


def rel_error(a, b):
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    if scale < 1e-10:
        return 0.0
    return np.linalg.norm(a - b) / scale


def assert_close_grad(name, f, array, analytic, rng, max_count=24, exclude_rows=(),
                      rtol=RTOL):
    """Compare the analytic gradient of F w.r.t. ``array`` with finite differences."""
    assert analytic.shape == array.shape, (name, analytic.shape, array.shape)
    indices = sample_indices(array.shape, rng, max_count, exclude_rows)
    num = numeric(f, array, indices)
    ana = np.array([analytic[idx] for idx in indices])
    err = rel_error(num, ana)
    assert err < rtol, f"{name}: relative error {err:.3e}\nnumeric  {num}\nanalytic {ana}"


def check_model(model, loss_of_output, inputs, forward, backward, rng, check_inputs=(),
                max_count=24, exclude=None):
    """Gradient check of every parameter of ``model`` (and of the arrays in
    ``check_inputs``: dict name -> (array, analytic gradient getter)).

    forward() -> output; loss_of_output(output) -> (loss, dL/doutput);
    backward(grad_output) -> anything (kept and passed to check_inputs getters).
    """
    model.zero_grad()
    out = forward()
    _, grad_out = loss_of_output(out)
    back = backward(grad_out)
    grads = {k: v.copy() for k, v in model.grads.items()}

    def f():
        return loss_of_output(forward())[0]

    exclude = exclude or {}
    for name, p in model.named_parameters():
        assert_close_grad(name, f, p, grads[name], rng, max_count,
                          exclude_rows=exclude.get(name, ()))
    for name, (array, getter) in dict(check_inputs).items():
        assert_close_grad(name, f, array, getter(back), rng, max_count)
    return grads, back
