from setuptools import find_packages, setup

setup(
    name="wgfast",
    version="0.1.0",
    description="Userspace WireGuard for Linux: Python control plane, batched C data plane",
    python_requires=">=3.11",
    packages=find_packages(include=["wgfast", "wgfast.*"]),
    package_data={"wgfast.lab": ["flooder.c"]},     # compiled by wgfast.lab.flood for tests/bench
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build.py:ffibuilder"],
    install_requires=["cffi>=1.15", "pynacl>=1.5", "numpy>=1.24", "prometheus-client>=0.17",
                      "rich>=13"],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "ruff", "noiseprotocol>=0.3"],
        "bench": ["matplotlib>=3.6"],
    },
    entry_points={
        "console_scripts": [
            "wgfast=wgfast.lab.cli:main",
            "wgfast-daemon=wgfast.daemon:main",
        ]
    },
)
