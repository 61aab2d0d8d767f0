"""wgfast: userspace WireGuard for Linux with a Python control plane and a C data plane."""

__version__ = "0.1.0"
