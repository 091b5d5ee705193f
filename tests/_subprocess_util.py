"""Running Python in a fresh interpreter on the fastrnn under test."""
import os
import subprocess
import sys

import fastrnn

# The directory that holds the package under test (installed, or a checkout
# built in place).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(fastrnn.__file__))


def run_python(args, cwd, timeout=120, **env):
    """``python *args`` with the environment variables `env` added and the
    package under test first on the path. cwd must not hold an uncompiled
    checkout (``python -m``/``-c`` put it first on sys.path). Returns the
    CompletedProcess."""
    env = dict(os.environ, **env,
               PYTHONPATH=os.pathsep.join([PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def assert_prints_ok(code, cwd, **env):
    """The Python `code`, run as run_python does, exits cleanly after printing
    just "ok" (its own asserts passed)."""
    done = run_python(["-c", code], cwd, **env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
