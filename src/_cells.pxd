# Cell codes shared by the kernels (the same values as fastrnn._kernel_args).
cdef enum:
    RNN_TANH = 0
    RNN_RELU = 1
    LSTM = 2
    GRU = 3
