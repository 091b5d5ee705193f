"""``fastrnn.show_config()``: how this build computes."""
import scipy

from . import _openmp, _packed, _recurrent  # noqa: F401  (_recurrent loads SciPy's BLAS)
from ._threads import get_num_threads


def config():
    """Build and runtime information as a dict."""
    info = {
        "openmp": _openmp.openmp_enabled(),
        "num_threads": get_num_threads(),
        "dtypes": ["float32", "float64"],
        "blas": "scipy.linalg.cython_blas (SciPy " + scipy.__version__ + ")",
        "simd": _packed.get_isa(),
        "simd_supported": _packed.supported_isas(),
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    # The BLAS the kernels call is the one SciPy links; list what is loaded.
    info["blas_libraries"] = [
        f"{lib['internal_api']} {lib.get('version')} ({lib.get('architecture')}, "
        f"{lib['num_threads']} threads) {lib['filepath']}"
        for lib in threadpool_info() if lib["user_api"] == "blas"]
    return info


def show_config():
    """Print whether OpenMP is on, the thread count and the BLAS in use."""
    info = config()
    print(f"fastrnn OpenMP: {'on' if info['openmp'] else 'off (serial build)'}")
    print(f"fastrnn threads: {info['num_threads']}")
    print(f"dtypes: {', '.join(info['dtypes'])}")
    print(f"float32 kernels: packed SIMD GEMM, variant {info['simd']} "
          f"(supported here: {', '.join(info['simd_supported'])})")
    print(f"float64 kernels, BLAS: {info['blas']}")
    for lib in info.get("blas_libraries", []):
        print(f"  loaded: {lib}")
