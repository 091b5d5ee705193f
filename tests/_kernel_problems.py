"""Random float32 problems for the kernel tests: one layer direction's input,
weights, biases and initial state, drawn as PyTorch initialises a layer."""
import numpy as np

from fastrnn import reference


def random_problem(cell, T, B, I, H, bias=True, seed=1):
    """(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0): x (T, B, I) and the
    states standard normal, the weights and biases uniform in +-1/sqrt(H) (no
    biases without `bias`, no c0 but for the LSTM)."""
    G = reference.gate_count(cell)
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    weight_ih = rng.uniform(-bound, bound, (G * H, I)).astype(np.float32)
    weight_hh = rng.uniform(-bound, bound, (G * H, H)).astype(np.float32)
    bias_ih = rng.uniform(-bound, bound, G * H).astype(np.float32) if bias else None
    bias_hh = rng.uniform(-bound, bound, G * H).astype(np.float32) if bias else None
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32) if cell == reference.CELL_LSTM else None
    return x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0
