"""DESIGN §1: the dependency direction between the four packages, and a torch-free `import lmlang`."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"lmlang": ROOT / "lmlang", "runtime": ROOT / "runtime", "kernels": ROOT / "kernels", "grammar": ROOT / "grammar"}


def _imports(path: pathlib.Path):
    """(module, is_top_level) for every import in a file; top level = not inside a function."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, not in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, not in_func))
            visit(child, f)

    visit(tree, False)
    return out


def _files(pkg):
    return sorted(PACKAGES[pkg].rglob("*.py"))


def test_kernels_import_only_torch_and_triton():
    for f in _files("kernels"):
        for mod, _ in _imports(f):
            assert not mod.startswith("lmlang") or mod.startswith("lmlang.kernels"), f"{f}: imports {mod}"
            assert not mod.startswith(("transformers", "numpy.", "lmlang.runtime")), f"{f}: imports {mod}"


def test_grammar_imports_no_other_lmlang_package():
    for f in _files("grammar"):
        for mod, _ in _imports(f):
            if mod.startswith("lmlang"):
                assert mod.startswith("lmlang.grammar"), f"{f}: imports {mod}"


def test_runtime_never_imports_the_language():
    allowed = ("lmlang.runtime", "lmlang.kernels", "lmlang.grammar")
    for f in _files("runtime"):
        for mod, _ in _imports(f):
            if mod == "lmlang" or mod.startswith("lmlang."):
                assert mod.startswith(allowed), f"{f}: imports {mod}"


def test_language_imports_runtime_only_lazily():
    for f in _files("lmlang"):
        if "testing" in f.parts:
            continue  # test utilities build checkpoints with torch; never imported by `import lmlang`
        for mod, top in _imports(f):
            if mod.startswith("lmlang.runtime") and mod != "lmlang.runtime.protocol":
                assert not top, f"{f}: imports {mod} at module level (only lmlang.runtime.protocol may be)"
            if mod.split(".")[0] in ("torch", "transformers", "triton"):
                assert not top, f"{f}: imports {mod} at module level"


def test_import_lmlang_pulls_no_torch_or_transformers():
    code = (
        "import sys, lmlang, lmlang.runtime.protocol\n"
        "bad = [m for m in ('torch', 'transformers', 'triton') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
