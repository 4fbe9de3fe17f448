"""OpenBLAS's kernels in a Python host: the core the library suggests (lt_openblas_coretype_hint) and the
binding's load, which sets it for the load only when OPENBLAS_CORETYPE is unset (_lib._load). Each case runs
a fresh interpreter: OpenBLAS chooses its core once per process, when the library loads."""
import functools
import os
import platform
import subprocess
import sys

import pytest

import loratune as lt

PRE_AVX2 = ("Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64",
                                reason="OpenBLAS core selection: Linux x86-64 only")

# after the load: the core OpenBLAS runs and the OPENBLAS_CORETYPE of this process
REPORT = ("core = L.lib().cdll.openblas_get_corename\n"
          "core.restype = ctypes.c_char_p\n"
          "print(core().decode(), os.environ.get('OPENBLAS_CORETYPE'))\n")


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def expected_hint():
    """What the library must suggest on this CPU when OpenBLAS runs a pre-AVX2 core (cpu/cpu_backend.c)."""
    f = cpu_flags()
    if {"avx2", "fma"} <= f and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= f:
        return "SkylakeX"
    return "Haswell" if {"avx2", "fma"} <= f else None


@functools.lru_cache(maxsize=None)
def honours_coretype():
    """OpenBLAS runs the core OPENBLAS_CORETYPE names (a DYNAMIC_ARCH build, as Debian's): the library loaded
    without the binding by a child with OPENBLAS_CORETYPE=Prescott."""
    code = ("import ctypes, sys\nf = ctypes.CDLL(sys.argv[1]).openblas_get_corename\nf.restype = ctypes.c_char_p\n"
            "print(f().decode())\n")
    out = subprocess.run([sys.executable, "-c", code, lt.library_path()], capture_output=True, text=True,
                         env=dict(os.environ, OPENBLAS_CORETYPE="Prescott"), timeout=120)
    return out.returncode == 0 and out.stdout.strip() == "Prescott"


def child(code, coretype=None):
    """stdout lines of `code` run by a fresh interpreter with the binding (L = loratune._lib), the library
    under test, and OPENBLAS_CORETYPE = coretype (unset when None)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["LORATUNE_LIBRARY"] = lt.library_path()
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(lt.__file__)))
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    out = subprocess.run([sys.executable, "-c", "import ctypes, os\nfrom loratune import _lib as L\n" + code],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


def test_hint_from_a_pre_avx2_core():
    """OpenBLAS forced to Prescott by the user: no hint while the variable is set (the user's choice); once it
    is unset, the AVX-512 / AVX2 core of this CPU (none on a CPU without AVX2)."""
    lines = child(REPORT + "print(L.lib().lt_openblas_coretype_hint())\n"
                  "del os.environ['OPENBLAS_CORETYPE']\n"
                  "h = L.lib().lt_openblas_coretype_hint()\n"
                  "print(h.decode() if h else None)\n", coretype="Prescott")
    if not honours_coretype():
        pytest.skip("this OpenBLAS ignores OPENBLAS_CORETYPE (no DYNAMIC_ARCH)")
    assert lines[0] == "Prescott Prescott"  # the user's value kept, OpenBLAS runs it
    assert lines[1] == "None"
    assert lines[2] == str(expected_hint())


def test_load_sets_the_hinted_core_for_the_load_only():
    """The child that asks the library (_HINT_PROBE) replaced by one that answers Core2, a core no AVX2 CPU
    gets by itself: OpenBLAS loads with it and the variable is unset again afterwards; a user's value is kept
    and the child is not asked."""
    probe = "L._HINT_PROBE = \"import sys; sys.stdout.write('Core2')\"\n"
    if not honours_coretype():
        pytest.skip("this OpenBLAS ignores OPENBLAS_CORETYPE (no DYNAMIC_ARCH)")
    lines = child(probe + REPORT, coretype="Prescott")
    assert lines[0] == "Prescott Prescott", f"OpenBLAS core and OPENBLAS_CORETYPE after the load: {lines[0]}"
    lines = child(probe + REPORT)
    assert lines[0] == "Core2 None", f"OpenBLAS core and OPENBLAS_CORETYPE after the load: {lines[0]}"


def test_no_pre_avx2_kernels_on_an_avx2_cpu():
    """As tests/cli_openblas.sh for the CLI: the binding's process runs no pre-AVX2 OpenBLAS core on a CPU with
    AVX2 + FMA, whatever OpenBLAS's own detection picks (Debian 12's 0.3.21: Prescott on the newest Xeons),
    and leaves OPENBLAS_CORETYPE unset."""
    core, env = child(REPORT)[0].split()
    assert env == "None"
    if {"avx2", "fma"} <= cpu_flags():
        assert core not in PRE_AVX2, f"pre-AVX2 OpenBLAS kernels ({core}) on an AVX2 CPU"
