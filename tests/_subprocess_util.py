"""Running Python code in a fresh interpreter on the fastrnn under test."""
import os
import subprocess
import sys

import fastrnn


def run_python(code, cwd, **env):
    """Run `code` in a new interpreter with the environment variables `env`
    added; the package under test (installed, or a checkout built in place)
    comes first on the path, and cwd (a directory outside the checkout) keeps
    an uncompiled checkout from shadowing it. Returns the CompletedProcess."""
    package_parent = os.path.dirname(os.path.dirname(fastrnn.__file__))
    env = dict(os.environ, **env,
               PYTHONPATH=os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=cwd)
