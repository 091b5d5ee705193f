/* Compile the row-function template named by FR_ROWS_FILE (functions written
 * with REAL, SFX, SIGMOID, TANH) once for float (suffix _f32) and once for
 * double (_f64). Include it after defining FR_ROWS_FILE; it undefines it. */
#define REAL float
#define SFX(name) name##_f32
#define SIGMOID fr_sigmoidf
#define TANH fr_tanhf
#include FR_ROWS_FILE
#undef REAL
#undef SFX
#undef SIGMOID
#undef TANH

#define REAL double
#define SFX(name) name##_f64
#define SIGMOID fr_sigmoid
#define TANH fr_tanh
#include FR_ROWS_FILE
#undef REAL
#undef SFX
#undef SIGMOID
#undef TANH
#undef FR_ROWS_FILE
