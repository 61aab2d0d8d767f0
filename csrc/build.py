"""cffi builder for wgfast._native: the cdef is csrc/wgfast.h, the sources are csrc/*.c.

WGFAST_SANITIZE=1 in the environment builds with AddressSanitizer and UndefinedBehaviorSanitizer
(the CI lane of .ci/run that runs the fuzzers): any out-of-bounds access or undefined behaviour
then aborts the process with a report.  Such a build loads only into a process that has the ASan
runtime first, e.g. LD_PRELOAD="$(gcc -print-file-name=libasan.so)"; see the README's Checks.
"""

from __future__ import annotations

import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))

CFLAGS = ["-std=gnu99", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
# Recover from nothing: a UBSan finding must fail the test run, not scroll past in its output.
# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which would hide signed overflow from
# UBSan (the C here is plain C99 and does not count on wrapping signed integers).
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-fno-wrapv", "-g"]


def cdef_text() -> str:
    """wgfast.h as cffi's cdef takes it."""
    text = (HERE / "wgfast.h").read_text()
    # cffi's parser takes plain integers only: drop C integer suffixes.
    return re.sub(r"\b(\d+)U?LL\b", r"\1", text)


def sanitize() -> bool:
    return os.environ.get("WGFAST_SANITIZE", "") not in ("", "0")


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "wgfast._native",
    '#include "wgfast_internal.h"',
    sources=SOURCES,
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=CFLAGS + (SANITIZE if sanitize() else []),
    extra_link_args=SANITIZE if sanitize() else [],
    libraries=["dl", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
