"""Data layer: readers for BTCV/MSD NIfTI, TransUNet npz/h5 and LA h5; shared transforms; slice datasets;
datalists and the published splits; PROMISE12 .mhd/.npy readers; stage-1 unlabeled slice preparation; input
validation, DICOM input, the leakage guard and the selection of labelled evaluation items."""

from samora_monai.data.datalists import (
    SPLIT_FILES,
    TEST_SPLITS,
    btcv_datalist,
    group_slices,
    la_datalist,
    load_split,
    msd_heart_datalist,
    named_datalist,
    transunet_synapse_datalist,
    write_datalist,
)
from samora_monai.data.dicom import DicomSeriesReader, is_dicom_input
from samora_monai.data.labelled import labelled_items
from samora_monai.data.leakage import check_unlabeled_datalist, exclude_test_cases
from samora_monai.data.promise12 import (
    PROMISE12_CASES,
    PROMISE12_SETTINGS,
    MetaImageReader,
    NpyDictReader,
    promise12_datalist,
)
from samora_monai.data.readers import H5VolumeReader, LoadVolumed, NpzSliceReader, volume_readers
from samora_monai.data.slices import VolumeSliceDataset, resize_slices, select_slices
from samora_monai.data.transforms import (
    BTCV_TO_SYNAPSE,
    CT_WINDOW,
    MR_PERCENTILES,
    SYNAPSE_CLASSES,
    MapLabelsd,
    ValidateVolumed,
    intensity_transform,
    slice_augmentations,
    volume_transforms,
)
from samora_monai.data.unlabeled import UnlabeledSliceDataset, case_ids, check_leakage, prepare_unlabeled
from samora_monai.utils import submodule_getattr

__getattr__ = submodule_getattr(__name__)  # samora_monai.data.bundle_data loads on first access

__all__ = [
    "BTCV_TO_SYNAPSE",
    "DicomSeriesReader",
    "CT_WINDOW",
    "MR_PERCENTILES",
    "PROMISE12_CASES",
    "PROMISE12_SETTINGS",
    "SPLIT_FILES",
    "SYNAPSE_CLASSES",
    "TEST_SPLITS",
    "H5VolumeReader",
    "LoadVolumed",
    "MapLabelsd",
    "MetaImageReader",
    "NpyDictReader",
    "NpzSliceReader",
    "UnlabeledSliceDataset",
    "ValidateVolumed",
    "VolumeSliceDataset",
    "btcv_datalist",
    "case_ids",
    "check_leakage",
    "check_unlabeled_datalist",
    "exclude_test_cases",
    "group_slices",
    "intensity_transform",
    "is_dicom_input",
    "la_datalist",
    "labelled_items",
    "load_split",
    "msd_heart_datalist",
    "named_datalist",
    "prepare_unlabeled",
    "promise12_datalist",
    "resize_slices",
    "select_slices",
    "slice_augmentations",
    "transunet_synapse_datalist",
    "volume_readers",
    "volume_transforms",
    "write_datalist",
]
