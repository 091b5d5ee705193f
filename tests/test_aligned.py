"""Work buffers and layer outputs start on a cache line (fastrnn._aligned)."""

import numpy as np
import pytest

import fastrnn
from fastrnn._aligned import CACHE_LINE, PAGE, aligned_empty


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 7, 13), (0, 4), (100, 8, 128)])
def test_aligned_empty_shape_dtype_alignment(shape, dtype):
    for _ in range(5):  # several allocations: malloc's offsets vary
        a = aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
        if a.size:
            assert a.ctypes.data % CACHE_LINE == 0
        a[...] = 1  # the whole array is usable memory
        assert a.sum() == a.size


@pytest.mark.parametrize("alignment", [1, 16, PAGE])
def test_aligned_empty_other_alignments(alignment):
    for _ in range(5):
        a = aligned_empty((3, 100), alignment=alignment)
        assert a.ctypes.data % alignment == 0
        a[...] = 2
        assert a.sum() == 600
    with pytest.raises(ValueError, match="power of two"):
        aligned_empty(4, alignment=48)


def test_aligned_empty_int_shape_and_negative_size():
    assert aligned_empty(7, np.float64).shape == (7,)
    with pytest.raises(ValueError, match="negative"):
        aligned_empty((2, -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_output_is_aligned(dtype):
    layer = fastrnn.LSTM(5, 7, num_layers=2, dtype=dtype)
    x = np.ones((3, 2, 5), dtype)
    for mode in ("eval", "train"):
        getattr(layer, mode)()
        out, _ = layer(x)
        assert out.ctypes.data % CACHE_LINE == 0


def test_misaligned_output_rows_give_the_same_result():
    """The hidden-unit split on 2 threads, writing into an out buffer whose rows
    start mid-line, computes what the aligned one does."""
    from fastrnn import _packed
    from fastrnn.layers import _CELLS
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 3, 20, 80
    cell = _CELLS[("LSTM", None)]
    w_ih = rng.standard_normal((4 * H, I)).astype(np.float32) * 0.1
    w_hh = rng.standard_normal((4 * H, H)).astype(np.float32) * 0.1
    b_ih = rng.standard_normal(4 * H).astype(np.float32) * 0.1
    b_hh = rng.standard_normal(4 * H).astype(np.float32) * 0.1
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    results = []
    for offset in (0, 1, 5):
        raw = aligned_empty((T * B * H + offset,))
        out = raw[offset:].reshape(T, B, H)
        h, c, _ = _packed.forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, None, False, False,
                                  out, 0, 2)
        results.append((out.copy(), h, c))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode, hidden", [("LSTM", 20), ("GRU", 70), ("RNN", 5)])
def test_packed_weights_are_aligned(mode, hidden):
    """The SIMD kernels load whole cache lines of the packed weights: a packing
    that starts mid-line splits every load in two."""
    layer = getattr(fastrnn, mode)(3, hidden)
    layer.eval()
    layer(np.ones((2, 1, 3), np.float32))
    packed = layer._packed[0]
    for name in ("weight_ih", "weight_hh", "bias", "bias_hn"):
        array = getattr(packed, name)
        if array is not None:
            assert array.ctypes.data % CACHE_LINE == 0, name
