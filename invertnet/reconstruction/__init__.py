"""Layer 3: reconstruction from a captured graph.

The walk down the graph, blocks, the joint inversion, priors, the default's completion and the public
:func:`~invertnet.reconstruct`.
"""
