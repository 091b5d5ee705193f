"""Build the Cython kernels, with OpenMP when the compiler supports it.

Environment variables:
  FASTRNN_NO_OPENMP=1    build serial kernels even if OpenMP is available.
  FASTRNN_BOUNDSCHECK=1  compile with Cython bounds and wraparound checks (debugging).
"""
import glob
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# _blas.pxd, _parallel.pxd, _gemm_split.pxi and the C headers hold only helpers that
# compile into the kernels.
MODULES = ["_aligned", "_openmp", "_recurrent", "_packed", "_timedelay", "_lnlstm"]


def _compiler_supports_openmp(compiler):
    """Compile and link a tiny OpenMP program the way the extensions will be."""
    code = textwrap.dedent(
        """
        #include <omp.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return n > 0 ? 0 : 1;
        }
        """
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "check_openmp.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, os.path.join(tmp, "check_openmp"),
                                     extra_postargs=["-fopenmp"])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        use_openmp = os.environ.get("FASTRNN_NO_OPENMP", "0") in ("", "0")
        if use_openmp and not _compiler_supports_openmp(self.compiler):
            use_openmp = False
            msg = ("\n" + "*" * 72 + "\nfastrnn: the C compiler does not support OpenMP; "
                   "building SERIAL kernels (one thread).\n" + "*" * 72)
            warnings.warn(msg)
            print(msg, file=sys.stderr)
        for ext in self.extensions:
            if use_openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


def extensions():
    directives = {
        "language_level": "3",
        "boundscheck": os.environ.get("FASTRNN_BOUNDSCHECK", "0") not in ("", "0"),
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
    }
    exts = [
        Extension(
            f"fastrnn.{name}",
            [f"src/{name}.pyx"],
            include_dirs=[numpy.get_include(), "src"],
            # C headers, .pxd and .pxi files: a change to any of them rebuilds the modules.
            depends=sorted(glob.glob("src/*.h") + glob.glob("src/*.pxd") + glob.glob("src/*.pxi")),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            # -O3 without -ffast-math: NaN handling and parity with the reference stay exact.
            extra_compile_args=["-O3"],
        )
        for name in MODULES
    ]
    return cythonize(exts, compiler_directives=directives, include_path=["src"])


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
