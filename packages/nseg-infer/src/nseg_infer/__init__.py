"""nseg-infer: the torch-free nuclei segmentation runtime.

`from nseg_infer import segment` is the Python API (`nseg_infer.api`); `run_on_cluster` (with
`ClusterOptions`, `ClusterReport`) runs a batch on a dask.distributed cluster (`nseg_infer.cluster`,
the `dask` extra). They are loaded on first use so that importing the package (the CLI, the folder
watch) stays light.
"""

__version__ = "0.1.0"
_API = ("Segmentation", "segment")
_CLUSTER = ("ClusterOptions", "ClusterReport", "run_on_cluster")
__all__ = [*_API, *_CLUSTER]


def __getattr__(name: str):
    if name in _API:
        from nseg_infer import api

        return getattr(api, name)
    if name in _CLUSTER:
        from nseg_infer import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module 'nseg_infer' has no attribute {name!r}")
