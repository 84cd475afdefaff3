"""tubelet.data.datasets: manifests, class folders, frame folders and images as clip datasets."""

from tubelet.data.datasets.base import ClipDataset, FailureTracker, Sample, failure_report
from tubelet.data.datasets.folders import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, scan_class_folders
from tubelet.data.datasets.frames import FrameFolderReader, ImageReader, read_image
from tubelet.data.datasets.images import ImageDataset
from tubelet.data.datasets.labels import LabelMap, load_label_map
from tubelet.data.datasets.manifest import read_manifest
from tubelet.data.datasets.paths import check_under_root, outside_root, resolve_under_root

__all__ = [
    "ClipDataset",
    "FailureTracker",
    "FrameFolderReader",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageReader",
    "LabelMap",
    "Sample",
    "VIDEO_EXTENSIONS",
    "check_under_root",
    "failure_report",
    "load_label_map",
    "outside_root",
    "read_image",
    "read_manifest",
    "resolve_under_root",
    "scan_class_folders",
]
