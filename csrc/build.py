"""cffi builder for wgfast._native: the cdef is csrc/wgfast.h, the sources are csrc/*.c."""

from __future__ import annotations

import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))


def _cdef_text() -> str:
    text = (HERE / "wgfast.h").read_text()
    # cffi's parser takes plain integers only: drop C integer suffixes.
    return re.sub(r"\b(\d+)U?LL\b", r"\1", text)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "wgfast._native",
    '#include "wgfast_internal.h"',
    sources=SOURCES,
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-std=gnu99", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["dl", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
