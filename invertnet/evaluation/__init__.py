"""Layer 4: reconstruction over datasets.

The resumable results file, the evaluation loop, summaries and the in-memory comparison of methods.
"""
