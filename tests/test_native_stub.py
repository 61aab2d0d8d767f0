"""wgfast/_native.pyi, the type stub of the cffi module, against csrc/wgfast.h and the module."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parent.parent
REGENERATE = "python3 csrc/gen_stub.py"


def _gen_stub() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gen_stub", ROOT / "csrc" / "gen_stub.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stub_lib_names() -> set[str]:
    tree = ast.parse((ROOT / "wgfast" / "_native.pyi").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Lib"]
    names = set()
    for n in cls.body:
        if isinstance(n, ast.FunctionDef):
            names.add(n.name)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
    return names


def test_stub_is_up_to_date_with_the_header() -> None:
    want = _gen_stub().render()
    have = (ROOT / "wgfast" / "_native.pyi").read_text()
    assert have == want, f"wgfast/_native.pyi is out of date with csrc/wgfast.h: run {REGENERATE}"


def test_stub_names_what_lib_has() -> None:
    # The built module and the stub list the same functions and constants (the module is the
    # one built from this checkout's wgfast.h: rebuild it after changing the header).
    from wgfast._native import lib

    assert _stub_lib_names() == set(dir(lib))
