"""nseg-data: read, check, split, encode and score DSB 2018 style nuclei data. Never imports torch."""

from nseg_data.sample import Modality, Sample

__all__ = ["Modality", "Sample"]
__version__ = "0.1.0"
