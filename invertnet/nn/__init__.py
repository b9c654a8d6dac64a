"""Layer 1: the activations as torch modules and functions (CReLU and its variants) and their inverses on tensors."""
