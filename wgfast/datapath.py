"""The one module that imports wgfast._native: C data plane handles and zero-copy numpy views."""

from __future__ import annotations

import numpy as np

import nacl._sodium as _sodium

from wgfast._native import ffi, lib

__all__ = ["ffi", "lib", "init_aead", "ADDR_DTYPE"]

# wg_addr as numpy sees it (24 bytes, no padding).
ADDR_DTYPE = np.dtype(
    [("family", "<u2"), ("port", "<u2"), ("scope_id", "<u4"), ("addr", "u1", (16,))]
)

_backends_mask: int | None = None


def init_aead() -> int:
    """Load the AEAD backends once; returns the bitmask of those available."""
    global _backends_mask
    if _backends_mask is None:
        _backends_mask = lib.wg_aead_init(_sodium.__file__.encode())
    return _backends_mask
