"""rewas-rt: the ReWaS inference runtime (NumPy orchestration of exported engines).

This package never imports torch; the PyTorch side lives in ``training/``.
"""
__version__ = "0.1.0"
