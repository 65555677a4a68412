"""What drives the Predictor: the command line, the Python API, the folder watcher, the cluster
and the napari plugin."""
