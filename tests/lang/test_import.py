"""`import lmlang` stays light: no torch, no transformers, well under half a second."""

import subprocess
import sys


def test_importtime_shows_no_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lmlang"],
                         capture_output=True, text=True, check=True)
    modules = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "lmlang" in modules
    heavy = [m for m in modules if m.split(".")[0] in ("torch", "transformers", "numpy", "triton")]
    assert not heavy, heavy


def test_import_is_fast_and_primitives_stay_light():
    code = (
        "import time, sys\n"
        "t = time.perf_counter()\n"
        "import lmlang\n"
        "elapsed = time.perf_counter() - t\n"
        "@lmlang.function\n"
        "def f(s, q):\n"
        "    s += lmlang.user(q) + lmlang.assistant(lmlang.gen('a', max_tokens=4))\n"
        "f.trace()\n"
        "assert not [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(elapsed)\n"
    )
    best = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
               for _ in range(3))
    assert best < 0.5, f"import lmlang took {best:.3f} s"
