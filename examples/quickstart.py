"""A small forward and backward pass through a 2-layer bidirectional LSTM,
checked against fastrnn's NumPy reference implementation."""
import time

import numpy as np

import fastrnn

rng = np.random.default_rng(0)
seq_len, batch, input_size, hidden_size = 50, 16, 32, 64
x = rng.standard_normal((seq_len, batch, input_size)).astype(np.float32)
lengths = rng.integers(1, seq_len + 1, size=batch)      # variable-length batch

lstm = fastrnn.LSTM(input_size, hidden_size, num_layers=2, bidirectional=True, seed=0)
start = time.perf_counter()
out, (h_n, c_n) = lstm(x, lengths=lengths)
grad_out = np.ones_like(out)                             # d(sum(out)) / d(out)
dx, (dh0, dc0) = lstm.backward(grad_out)
elapsed = time.perf_counter() - start
print(lstm)
print(f"out {out.shape}, h_n {h_n.shape}, c_n {c_n.shape}, dx {dx.shape}")
print(f"forward + backward: {elapsed * 1e3:.2f} ms with {fastrnn.get_num_threads()} threads")

# The same computation through the NumPy reference, from the same weights.
ref = fastrnn.LSTM(input_size, hidden_size, num_layers=2, bidirectional=True,
                   impl="reference")
ref.load_state_dict(lstm.state_dict())
ref_out, _ = ref(x, lengths=lengths)
ref_dx, _ = ref.backward(grad_out)
print(f"max |out - reference| = {np.abs(out - ref_out).max():.2e}")
print(f"max |dx - reference|  = {np.abs(dx - ref_dx).max():.2e}")
worst = max(np.abs(lstm.grads[k] - ref.grads[k]).max() for k in lstm.grads)
print(f"max parameter-gradient difference = {worst:.2e}")
assert np.allclose(out, ref_out, rtol=1e-4, atol=1e-5) and np.allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
print("OK")
