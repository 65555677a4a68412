"""nseg-infer: the torch-free nuclei segmentation runtime."""

__version__ = "0.1.0"
