"""Data layer: discover labelled files, read them, split them, and make synthetic phantoms."""

from . import dicom, nifti  # noqa: F401 - registers the DICOM and NIfTI readers
from .discover import ImageFolder, ImageRecord, discover, fingerprint, list_images, positive_class
from .read import read_image, register_reader, register_suffixes
from .slices import summarise_volume, summarise_volumes
from .split import kfold, train_val_split

__all__ = [
    "ImageFolder", "ImageRecord", "discover", "fingerprint", "list_images", "positive_class",
    "read_image", "register_reader", "register_suffixes", "kfold", "train_val_split", "summarise_volume",
    "summarise_volumes",
]
