"""Build hook: compiles the cffi C kernels (build_native.py) at install time."""

from setuptools import setup

setup(cffi_modules=["build_native.py:ffibuilder"])
