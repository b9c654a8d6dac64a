"""Layer 4: the analyses.

The paper's and ours: injectivity spectra, what ReLU keeps, filter pairing, the Rademacher bound,
invariance and sparsity.
"""
