"""Data sets (CIFAR-10/100, Flowers 102, Cats & Dogs, any image folder), transforms, loaders."""
from spa.data.datasets import DataBundle, SampleDataset, build_datasets, make_loader
from spa.data.readable import UnreadableImagesError
from spa.data.sources import SOURCES, DatasetNotFoundError, load_source
from spa.data.transforms import build_transforms, normalization

__all__ = ["DataBundle", "SampleDataset", "build_datasets", "make_loader", "SOURCES",
           "DatasetNotFoundError", "UnreadableImagesError", "load_source", "build_transforms", "normalization"]
