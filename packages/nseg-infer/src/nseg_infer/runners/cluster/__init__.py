"""`nseg-infer run --cluster` (the `dask` extra): the file runner's work as dask.distributed tasks,
a large image split into its instance blocks. `client` (run_on_cluster: the client's loop),
`tasks` (what the workers run), `manifest` (what a run has finished), `connect` (the command
line's cluster)."""
