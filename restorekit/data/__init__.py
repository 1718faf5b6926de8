"""Images, paired data sets and the low-light model.

An image is a ``numpy`` float32 array of shape ``(H, W, 3)``, RGB, values in [0, 1].
"""

from restorekit.data.io import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    check_image_file,
    image_size,
    list_images,
    max_pixels,
    read_image,
    to_image,
    to_tensor,
    write_image,
)
from restorekit.data.lowlight import LowLightModel, linear_to_srgb, srgb_to_linear, synthesize
from restorekit.data.pairs import (
    EMBEDDED_PHOTOS,
    EmbeddedPairs,
    FolderPairs,
    Holdout,
    PairSet,
    SubsetPairs,
    TrainCrops,
    check_min_size,
    open_pairs,
)

__all__ = [
    "EMBEDDED_PHOTOS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "EmbeddedPairs",
    "FolderPairs",
    "Holdout",
    "LowLightModel",
    "PairSet",
    "SubsetPairs",
    "TrainCrops",
    "check_image_file",
    "check_min_size",
    "image_size",
    "linear_to_srgb",
    "list_images",
    "max_pixels",
    "open_pairs",
    "read_image",
    "srgb_to_linear",
    "synthesize",
    "to_image",
    "to_tensor",
    "write_image",
]
