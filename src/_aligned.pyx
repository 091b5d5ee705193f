"""Arrays that start on a cache line.

- When the kernels split the hidden units across threads, each thread writes its
  own columns of every state and output row. A row that starts mid-line puts the
  last line of one thread's columns in the other's too, and the two cores then
  pass that line back and forth on every step: measured 2x slower at batch 8.
- The packed weights are read a whole 64-byte vector at a time; starting
  mid-line splits every load across two lines (LSTM batch 8 on 2 threads: 0.31
  ms aligned, up to 0.53 ms depending on where malloc put the weights).
- The threads of a batch split each keep their buffers in pages of their own
  (``alignment=PAGE``): see _packed's thread space.
"""

# Compiled: reading an array's address from Python (``a.ctypes.data``) costs
# about 0.8 us, and made this function 1.8 us (now 0.75 us), half of a short
# forward's overhead in the layer.

cimport numpy as cnp
import numpy as np

cnp.import_array()

CACHE_LINE = 64
PAGE = 4096


def aligned_empty(shape, dtype=np.float32, Py_ssize_t alignment=CACHE_LINE):
    """Like ``np.empty(shape, dtype)``, with the data on a cache-line boundary
    (or on a multiple of ``alignment`` bytes, a power of two)."""
    if alignment < 1 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment}")
    dtype = np.dtype(dtype)
    if isinstance(shape, int):
        shape = (shape,)
    cdef Py_ssize_t count = 1, n
    for n in shape:
        if n < 0:
            raise ValueError(f"negative dimensions are not allowed, got {shape}")
        count *= n
    cdef Py_ssize_t size = count * dtype.itemsize
    cdef cnp.npy_intp raw_size = size + alignment
    cdef cnp.ndarray raw = cnp.PyArray_EMPTY(1, &raw_size, cnp.NPY_UINT8, 0)
    cdef Py_ssize_t skip = (alignment - <size_t>cnp.PyArray_DATA(raw) % alignment) % alignment
    return raw[skip:skip + size].view(dtype).reshape(shape)
