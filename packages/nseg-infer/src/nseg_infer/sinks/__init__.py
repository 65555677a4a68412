"""One writer per product: labels TIFF, OME-Zarr, CSV measurements, GeoJSON, overlay, ROI zip."""
