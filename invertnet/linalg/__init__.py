"""Layer 2: linear algebra on operators.

Iterative solvers, L-BFGS, preconditioners, spectra, verified (rounding-aware) bounds and absolute
value equations.
"""
