"""Writes wgfast/_native.pyi, the type stub of the cffi module wgfast._native, from csrc/wgfast.h.

    python3 csrc/gen_stub.py            rewrite the stub (after any change to wgfast.h)
    python3 csrc/gen_stub.py --check    exit 1 if the stub is out of date

The header is read with the parser cffi itself uses for the cdef (csrc/build.py), so the stub
names exactly what `lib` has: every function of wgfast.h with its C parameter names, and every
#define as an int.  Python types follow the C ones: integers are int, double is float, void is
None.  Pointer arguments are Any: cffi checks them at call time (cdata of the pointed-to type,
ffi.NULL, bytes for a byte pointer, a list for an array), which a stub cannot say better.  A
pointer to a struct wgfast.h spells out comes back as a class of its fields; any other pointer
as cffi's CData.  tests/test_native_stub.py fails when this file and the stub disagree.
"""

from __future__ import annotations

import importlib.util
import keyword
import pathlib
import re
import sys
from typing import Any

from cffi import model

HERE = pathlib.Path(__file__).resolve().parent
STUB = HERE.parent / "wgfast" / "_native.pyi"
LINE = 100      # ruff's line length (pyproject.toml)


def _load_build() -> Any:
    spec = importlib.util.spec_from_file_location("_wgfast_build", HERE / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _struct_name(t: Any) -> str | None:
    """The stub class of a struct with fields (None for an opaque one)."""
    if isinstance(t, model.StructType) and t.fldnames is not None:
        return "_" + t.name.lstrip("$")
    return None


def _scalar(t: Any) -> str | None:
    if isinstance(t, model.PrimitiveType):
        if t.is_integer_type():
            return "int"
        if t.is_float_type():
            return "float"
        return "bytes"      # char
    if isinstance(t, model.VoidType):
        return "None"
    return None


def _field_type(t: Any) -> str:
    return _scalar(t) or _struct_name(t) or "_CData"


def _result_type(t: Any) -> str:
    if isinstance(t, model.PointerType):
        return _struct_name(t.totype) or "_CData"
    return _scalar(t) or "_CData"


def _arg_type(t: Any) -> str:
    return "_Pointer" if isinstance(t, model.PointerType | model.ArrayType) else _field_type(t)


def _param_names(decl: Any) -> list[str]:
    params = decl.type.args.params if decl.type.args is not None else []
    names = []
    for i, p in enumerate(params):
        name = getattr(p, "name", None)
        if name is None:            # (void), or a parameter without a name
            if getattr(p.type, "type", None) is not None and \
                    getattr(p.type.type, "names", None) == ["void"]:
                continue
            name = f"arg{i}"
        names.append(name + "_" if keyword.iskeyword(name) else name)
    return names


def _def(name: str, params: list[str], result: str) -> list[str]:
    head, tail = f"    def {name}(", f") -> {result}: ..."
    one = head + ", ".join(["self", *params, "/"]) + tail
    if len(one) <= LINE:
        return [one]
    return [head, *(f"        {p}," for p in ["self", *params, "/"]), "    " + tail]


def render() -> str:
    build = _load_build()
    parser = build.ffibuilder._parser
    decls = parser._declarations
    ast = parser._parse(build.cdef_text())[0]
    header = (HERE / "wgfast.h").read_text()

    out = [
        '"""Types of the cffi module wgfast._native, generated from csrc/wgfast.h by',
        "csrc/gen_stub.py: do not edit; run `python3 csrc/gen_stub.py` after changing the",
        'header."""',
        "",
        "from typing import Any, Final, TypeAlias, final, type_check_only",
        "",
        "import _cffi_backend",
        "",
        "_CData: TypeAlias = _cffi_backend.FFI.CData",
        "# Pointer arguments: cffi checks them at call time (cdata, ffi.NULL, bytes, a list).",
        "_Pointer: TypeAlias = Any",
        "",
        "ffi: _cffi_backend.FFI",
    ]

    for key, (t, _q) in decls.items():
        kind, _, name = key.partition(" ")
        if kind != "typedef" or _struct_name(t) is None:
            continue
        out += ["", "", "@final", "@type_check_only", f"class _{name}:"]
        out += [f"    {f}: {_field_type(ft)}" for f, ft in zip(t.fldnames, t.fldtypes, strict=True)]

    out += ["", "", "@final", "@type_check_only", "class _Lib:"]
    macros = [m for m in re.findall(r"^\s*#\s*define\s+(\w+)", header, re.M)
              if f"macro {m}" in decls]
    out += [f"    {m}: Final[int]" for m in macros]
    for d in ast.ext:
        fn = decls.get(f"function {d.name}")
        if fn is None:
            continue
        ftype = fn[0]
        names = _param_names(d)
        assert len(names) == len(ftype.args), d.name
        params = [f"{n}: {_arg_type(a)}" for n, a in zip(names, ftype.args, strict=True)]
        out += _def(d.name, params, _result_type(ftype.result))

    out += ["", "", "lib: _Lib", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if not STUB.exists() or STUB.read_text() != text:
            print(f"{STUB} is out of date with csrc/wgfast.h: run python3 csrc/gen_stub.py",
                  file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    STUB.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
