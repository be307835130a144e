"""perfusion_runtime — applies Perfusion concepts to local diffusers pipelines.

This distribution is laid out and installable; the runtime itself (``apply``, ``new_concept``,
``build_covariance``) arrives with its own issue. Concepts are read with :mod:`perfusion_format`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
