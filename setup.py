# The metadata is in pyproject.toml; this file only adds the cffi build of wgfast._native.
from setuptools import setup

setup(cffi_modules=["csrc/build.py:ffibuilder"])
