"""nseg-infer: the torch-free nuclei segmentation runtime.

`from nseg_infer import segment` is the Python API (`nseg_infer.api`); it is loaded on first use
so that importing the package (the CLI, the folder watch) stays light.
"""

__version__ = "0.1.0"
__all__ = ["Segmentation", "segment"]


def __getattr__(name: str):
    if name in __all__:
        from nseg_infer import api

        return getattr(api, name)
    raise AttributeError(f"module 'nseg_infer' has no attribute {name!r}")
