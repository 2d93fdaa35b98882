"""Numerics with no files: geometry, CTF, filters, Fourier-slice projection, the array backend and the fast kernels beside their NumPy references."""
