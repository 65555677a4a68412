"""The folder watch (`nseg-infer watch`, `nseg-infer status`): every image that lands in a folder
segmented exactly once, through the file runner, with an SQLite ledger as the record of what is
done. `watcher` (the main loop), `intake` (the scanner thread), `settle` (when a file is
complete), `ledger`, `guard` (the output folder and its faults), `report` (summary, status),
`config` (WatchConfig, the watch's logger)."""
