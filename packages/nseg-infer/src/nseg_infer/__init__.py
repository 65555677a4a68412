"""nseg-infer: the torch-free nuclei segmentation runtime.

`from nseg_infer import segment` is the Python API (`nseg_infer.runners.api`); `run_on_cluster` (with
`ClusterOptions`, `ClusterReport`) runs a batch on a dask.distributed cluster (`nseg_infer.runners.cluster.client`,
the `dask` extra), with `FileConfig` (how files are read, which products are written); `Predictor`,
`RunConfig` (its model settings) and `load_bundle` are the engine (`nseg_infer.engine`). They are loaded
on first use so that importing the package (the CLI, the folder watch) stays light.
"""

__version__ = "0.1.0"
_API = ("Segmentation", "segment")
_CLUSTER = ("ClusterOptions", "ClusterReport", "run_on_cluster")
_FILES = ("FileConfig",)
_ENGINE = {"Predictor": "predictor", "RunConfig": "config", "Prediction": "predictor", "load_bundle": "bundle", "Bundle": "bundle"}
__all__ = [*_API, *_CLUSTER, *_FILES, *_ENGINE]


def __getattr__(name: str):
    if name in _API:
        from nseg_infer.runners import api
        return getattr(api, name)
    if name in _CLUSTER:
        from nseg_infer.runners.cluster import client as cluster
        return getattr(cluster, name)
    if name in _FILES:
        from nseg_infer.runners import file_config
        return getattr(file_config, name)
    if name in _ENGINE:
        import importlib
        return getattr(importlib.import_module(f"nseg_infer.engine.{_ENGINE[name]}"), name)
    raise AttributeError(f"module 'nseg_infer' has no attribute {name!r}")
