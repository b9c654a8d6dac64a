"""Layer 3: one capture of a model.

Its torch.fx graph (or, where fx cannot trace, its chain of modules), the values of its nodes, and the
dimension count over them.
"""
