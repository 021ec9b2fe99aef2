"""`imagenet-seg:PATH`: the ImageNet-segmentation benchmark of Chefer et al. 2021 (4,276
ImageNet val images with a foreground mask each, from Guillaumin et al. 2014), read from the
`gtsegs_ijcv.mat` file the user supplies.

The file is MATLAB v7.3, i.e. HDF5: `/value/img` and `/value/gt` are N×1 arrays of object
references. Image k is the dataset `/value/img[k, 0]` points to, stored as MATLAB writes a
column-major H×W×3 array: 3×W×H uint8 in HDF5, so it is transposed back. Its mask is one
reference further: `/value/gt[k, 0]` points to a 1×1 array of references whose element
points to the W×H mask (non-zero = the object).

The file is 1.8 GB, so nothing is read up front but the layout: `ImageDataset.images` and
`.masks` are `SegImages`, arrays that decode only the images indexed (a capture of `-n 64`
reads 64 images), each through the checkpoint's preprocessing (resize and centre crop) with
its mask through the same geometry by nearest neighbour. The images carry no class labels:
what a map explains is the model's prediction (`--target pred`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from vitscope.data.base import ImageDataset
from vitscope.data.images import Preprocess, prepare_image
from vitscope.errors import DataError

IMAGES, MASKS = "/value/img", "/value/gt"
SOURCE = ("the gtsegs_ijcv.mat file of the ImageNet-segmentation benchmark (docs/score.md, "
          "'ImageNet segmentation')")


def load(path: str, split: str, size: "int | Preprocess", *, spec: str) -> ImageDataset:
    """Every image of the file (it has no splits: any `split` is all of it), unlabelled,
    decoded lazily at `size`, with its mask."""
    file = Path(path).expanduser().absolute()
    count = check_file(file, spec)
    pp = Preprocess.of(size)
    reader = _Reader(file, pp, spec)
    return ImageDataset(images=SegImages(reader, count, "image"),
                        labels=np.full(count, -1, np.int64), classes=[],
                        masks=SegImages(reader, count, "mask"), spec=spec, split=split,
                        paths=None)


def check_file(file: Path, spec: str) -> int:
    """The number of images; DataError, in one sentence, for a file that is missing, not
    HDF5, or not laid out as the benchmark's (read: the two reference arrays and image 0)."""
    import h5py
    if not file.exists():
        raise DataError(f"The file '{file}' of --data {spec} does not exist; download "
                        f"{SOURCE} and pass its path.")
    if file.is_dir():
        raise DataError(f"'{file}' of --data {spec} is a folder; imagenet-seg:PATH takes "
                        f"{SOURCE}.")
    if not h5py.is_hdf5(file):
        raise DataError(f"'{file}' of --data {spec} is not a MATLAB v7.3 (HDF5) file, so it is "
                        f"not {SOURCE}; check the download (it is about 1.8 GB).")
    try:
        with h5py.File(file, "r") as f:
            refs = []
            for key in (IMAGES, MASKS):
                a = f.get(key)
                if not isinstance(a, h5py.Dataset) or a.dtype != h5py.ref_dtype or \
                        a.ndim != 2 or a.shape[1] != 1:
                    raise DataError(f"'{file}' of --data {spec} has no N×1 array of references "
                                    f"at {key}, so it is not {SOURCE}.")
                refs.append(a.shape[0])
            if refs[0] != refs[1] or refs[0] == 0:
                raise DataError(f"'{file}' of --data {spec} holds {refs[0]} images but {refs[1]} "
                                f"masks; {SOURCE} has one mask per image.")
            image, mask = read_pair(f, 0)
    except DataError:
        raise
    except Exception as e:   # HDF5 damage: OSError, KeyError, ValueError from h5py
        raise DataError(f"'{file}' of --data {spec} cannot be read as {SOURCE} "
                        f"({type(e).__name__}: {str(e)[:120]}); download it again.") from None
    _check_pair(image, mask, 0, file, spec)
    return refs[0]


def read_pair(f, k: int, pixels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Image k (H×W×3) and its mask (H×W), as MATLAB holds them (transposed back). Without
    `pixels`, the image is an empty array of its shape and type (the mask is checked
    against it without decoding it)."""
    stored = f[f[IMAGES][k, 0]]
    image = np.asarray(stored).transpose(2, 1, 0) if pixels else \
        np.empty(stored.shape[::-1], stored.dtype)
    cell = f[f[MASKS][k, 0]]
    mask = np.asarray(f[cell[0, 0]]).transpose(1, 0)
    return image, mask


def write(path, images, masks) -> None:
    """A file in the benchmark's layout, for tests and benchmarks: MATLAB's 512-byte header,
    /value/img and /value/gt as N×1 references, each image stored 3×W×H (column-major
    H×W×3), each mask W×H behind a 1×1 array of references. `images`: H×W×3 uint8 arrays (any
    sizes); `masks`: H×W arrays (non-zero = the object)."""
    import h5py
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        img = np.empty((len(images), 1), h5py.ref_dtype)
        gt = np.empty((len(images), 1), h5py.ref_dtype)
        for k, (im, m) in enumerate(zip(images, masks)):
            img[k, 0] = refs.create_dataset(f"i{k}", data=np.asarray(im).transpose(2, 1, 0)).ref
            mask = refs.create_dataset(f"m{k}", data=np.asarray(m, np.uint8).transpose(1, 0))
            gt[k, 0] = refs.create_dataset(f"c{k}", data=np.array([[mask.ref]],
                                                                  h5py.ref_dtype)).ref
        f.create_dataset(IMAGES, data=img)
        f.create_dataset(MASKS, data=gt)


def _check_pair(image: np.ndarray, mask: np.ndarray, k: int, file: Path, spec: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"Image {k} of '{file}' (--data {spec}) is a {image.dtype} array of "
                        f"shape {image.shape} after MATLAB's transposition, not H×W×3 uint8; "
                        f"the file is not {SOURCE}.")
    if mask.shape != image.shape[:2]:
        raise DataError(f"The mask of image {k} of '{file}' (--data {spec}) is {mask.shape[0]}×"
                        f"{mask.shape[1]} but the image is {image.shape[0]}×{image.shape[1]}; "
                        f"the file is not {SOURCE}.")


class _Reader:
    """Decodes images and masks of one file at one preprocessing; opens the file per read, so
    nothing stays open between captures and forked workers never share a handle."""

    def __init__(self, file: Path, pp: Preprocess, spec: str) -> None:
        self.file, self.pp, self.spec = file, pp, spec
        # the mask follows the image's geometry exactly, by nearest neighbour
        self.mask_pp = dataclasses.replace(pp, interpolation="nearest")

    def read(self, index: np.ndarray, what: str) -> np.ndarray:
        import h5py
        from PIL import Image
        h, w = self.pp.out_size
        out = np.empty((len(index), h, w, 3) if what == "image" else (len(index), h, w),
                       np.uint8 if what == "image" else bool)
        try:
            with h5py.File(self.file, "r") as f:
                for i, k in enumerate(index):
                    image, mask = read_pair(f, int(k), pixels=what == "image")
                    _check_pair(image, mask, int(k), self.file, self.spec)
                    if what == "image":
                        out[i] = prepare_image(Image.fromarray(image), self.pp)
                    else:
                        m = Image.fromarray((mask > 0).astype(np.uint8) * 255)
                        out[i] = np.asarray(self.mask_pp.apply(m)) > 0
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"Image {int(k)} of '{self.file}' (--data {self.spec}) cannot be "
                            f"read ({type(e).__name__}: {str(e)[:120]}); the file is damaged, "
                            f"download it again.") from None
        return out

    def identity(self) -> str:
        """What the pixels depend on: the file (path, size, modification time) and the
        preprocessing. Hashing 1.8 GB per run to fingerprint it would cost more than a score."""
        st = self.file.stat()
        return hashlib.sha256(f"imagenet-seg {self.file}\t{st.st_size}\t{st.st_mtime_ns}\t"
                              f"{self.pp.key()}".encode()).hexdigest()


class SegImages:
    """N×H×W×3 uint8 images (or N×H×W bool masks) of the file, decoded when indexed: an int,
    a slice or an int array gives a numpy array, like indexing the decoded array would."""

    def __init__(self, reader: _Reader, count: int, what: str) -> None:
        self.reader, self.count, self.what = reader, count, what
        h, w = reader.pp.out_size
        self.shape = (count, h, w, 3) if what == "image" else (count, h, w)
        self.dtype = np.dtype(np.uint8 if what == "image" else bool)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.reader.read(np.arange(self.count)[[key]], self.what)[0]
        index = np.arange(self.count)[key]    # slices, int and bool arrays, bounds checked
        return self.reader.read(np.atleast_1d(index), self.what)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def fingerprint(self) -> str:
        return self.reader.identity()
