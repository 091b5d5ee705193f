# Inline, nogil activations and the derivatives the backward pass needs,
# written in terms of the activation's output (y), which is what is cached.
from libc.math cimport exp, expf, tanh, tanhf
from cython cimport floating


cdef inline floating sigmoid(floating x) noexcept nogil:
    # exp(-x) overflows to inf for very negative x, giving exactly 0: no NaN.
    if floating is float:
        return 1.0 / (1.0 + expf(-x))
    else:
        return 1.0 / (1.0 + exp(-x))


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating relu(floating x) noexcept nogil:
    # x > 0 is false for NaN: relu(NaN) would be 0; keep NaN visible instead.
    return x if (x > 0 or x != x) else 0


cdef inline floating sigmoid_grad(floating y) noexcept nogil:
    return y * (1 - y)


cdef inline floating tanh_grad(floating y) noexcept nogil:
    return 1 - y * y


cdef inline floating relu_grad(floating y) noexcept nogil:
    return 1 if y > 0 else 0
