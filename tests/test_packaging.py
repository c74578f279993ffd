"""Every package directory is listed in pyproject's `packages` (the package-dir mapping needs it)."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOP = {"lmlang": "lmlang", "runtime": "lmlang.runtime", "kernels": "lmlang.kernels", "grammar": "lmlang.grammar"}


def test_all_packages_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in TOP.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed, f"missing from pyproject: {found - listed}; listed but absent: {listed - found}"
