# Cell codes shared by the kernels (the same values as fastrnn._kernel_args), and the
# per-row elementwise functions of _cell_math.h (see there for layouts and strides).
cdef enum:
    RNN_TANH = 0
    RNN_RELU = 1
    LSTM = 2
    GRU = 3


cdef extern from "_cell_math.h" nogil:
    void lstm_forward_row_f32(Py_ssize_t n, Py_ssize_t stride, Py_ssize_t bias_stride,
                              float *gates, const float *bias, const float *c_prev,
                              float *c_new, float *h_new, float *out)
    int FR_LSTM_BLOCK_UNITS
    void lstm_forward_blocks_f32(Py_ssize_t n_blocks, Py_ssize_t block_stride, float *gates,
                                 const float *bias, const float *c_prev, float *c_new,
                                 float *h_new, float *out)
    void lstm_forward_row_f64(Py_ssize_t n, Py_ssize_t stride, Py_ssize_t bias_stride,
                              double *gates, const double *bias, const double *c_prev,
                              double *c_new, double *h_new, double *out)
    void gru_forward_row_f32(Py_ssize_t n, Py_ssize_t stride, Py_ssize_t bias_stride,
                             float *gates, float *gates_h, const float *bias,
                             const float *bias_hn, const float *h_prev, float *h_new,
                             float *out)
    void gru_forward_row_f64(Py_ssize_t n, Py_ssize_t stride, Py_ssize_t bias_stride,
                             double *gates, double *gates_h, const double *bias,
                             const double *bias_hn, const double *h_prev, double *h_new,
                             double *out)
    void rnn_forward_row_f32(Py_ssize_t n, int relu, const float *gates, const float *bias,
                             float *h_new, float *out)
    void rnn_forward_row_f64(Py_ssize_t n, int relu, const double *gates, const double *bias,
                             double *h_new, double *out)
    void lstm_backward_row_f32(Py_ssize_t n, Py_ssize_t stride, float *gates, const float *c_prev,
                               const float *c_new, const float *grad_out, const float *dh,
                               float *dh_prev, float *dc)
    void lstm_backward_blocks_f32(Py_ssize_t n_blocks, Py_ssize_t block_stride, float *gates,
                                  const float *c_prev, const float *c_new,
                                  const float *grad_out, const float *dh, float *dh_prev,
                                  float *dc)
    void lstm_backward_row_f64(Py_ssize_t n, Py_ssize_t stride, double *gates,
                               const double *c_prev, const double *c_new,
                               const double *grad_out, const double *dh, double *dh_prev,
                               double *dc)
    void gru_backward_row_f32(Py_ssize_t n, Py_ssize_t stride, float *gates, float *hn,
                              const float *h_prev, const float *grad_out, const float *dh,
                              float *dh_prev)
    void gru_backward_row_f64(Py_ssize_t n, Py_ssize_t stride, double *gates, double *hn,
                              const double *h_prev, const double *grad_out, const double *dh,
                              double *dh_prev)
    void rnn_backward_row_f32(Py_ssize_t n, int relu, float *gates, const float *h_new,
                              const float *grad_out, const float *dh, float *dh_prev)
    void rnn_backward_row_f64(Py_ssize_t n, int relu, double *gates, const double *h_new,
                              const double *grad_out, const double *dh, double *dh_prev)
