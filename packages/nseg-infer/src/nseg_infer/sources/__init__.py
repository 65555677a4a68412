"""Images read region by region: file formats, vendor readers, channel choice, pixel size and
rescaling to the model's scale."""
