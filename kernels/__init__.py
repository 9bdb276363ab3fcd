"""Compute kernels for tandem: plain-torch references and (on CUDA) Triton versions.

Callers never import a backend directly: :func:`kernels.dispatch.select_backend`
returns the module whose functions match :mod:`kernels.reference`'s signatures.
"""
