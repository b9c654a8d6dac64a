"""Layer 4: the model zoo: the paper's architectures, trained weights and model specs (``package.module:callable``)."""
