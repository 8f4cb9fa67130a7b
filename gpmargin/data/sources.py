"""Dataset specifications: file names, official checksums, download mirrors, statistics.

Every IDX file has two accepted md5 sums: the official one of the ``.gz`` file, and the
one of its uncompressed payload.  The second lets a re-compressed copy (Debian's
``dataset-fashion-mnist`` re-gzips the official files) or an uncompressed copy be verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATASETS = ("mnist", "fashion_mnist", "cifar10", "digits")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FileSpec:
    """One official file: its base name (without ``.gz``) and its md5 sums."""

    base: str
    md5_gz: str | None  # md5 of the official compressed file (None: stored uncompressed)
    md5_raw: str  # md5 of the uncompressed payload
    kind: str = "idx"  # "idx" or "cifar"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files come from and what they must look like."""

    name: str
    title: str
    files: dict[str, tuple[FileSpec, ...]]  # split -> files needed for that split
    mirrors: tuple[str, ...] = ()  # base URLs tried in order
    archive: FileSpec | None = None  # single official archive holding every split
    archive_folder: str | None = None  # folder inside the archive
    subfolders: tuple[str, ...] = ()  # names of "<name>/" folders accepted under a root
    system_dirs: tuple[str, ...] = ()  # folders filled by OS packages
    install_hint: str = ""
    num_classes: int = 10
    sizes: dict[str, int] = field(default_factory=dict)  # examples per split
    shape: tuple[int, int, int] = (1, 28, 28)


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    files={
        "train": (
            FileSpec("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            FileSpec("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        ),
        "test": (
            FileSpec("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            FileSpec("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        ),
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    subfolders=("mnist", "MNIST"),
    sizes={"train": 60000, "test": 10000},
)

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    title="Fashion-MNIST",
    files={
        "train": (
            FileSpec("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            FileSpec("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        ),
        "test": (
            FileSpec("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            FileSpec("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    subfolders=("fashion_mnist", "fashion-mnist", "FashionMNIST"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    install_hint="or run 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu)",
    sizes={"train": 60000, "test": 10000},
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    title="CIFAR-10",
    files={
        "train": tuple(
            FileSpec(f"data_batch_{i}", None, md5, kind="cifar")
            for i, md5 in enumerate(
                (
                    "c99cafc152244af753f735de768cd75f",
                    "d4bba439e000b95fd0a9bffe97cbabec",
                    "54ebc095f3ab1f0389bbae665268c751",
                    "634d18415352ddfa80567beed471001a",
                    "482c414d41f54cd18b22e5b47cb7c3cb",
                ),
                start=1,
            )
        ),
        "test": (FileSpec("test_batch", None, "40351d587109b95175f43aff81a1287e", kind="cifar"),),
    },
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    archive=FileSpec("cifar-10-python.tar.gz", None, "c58f30108f718f92721af3b95e74349a", kind="archive"),
    archive_folder="cifar-10-batches-py",
    subfolders=("cifar10", "cifar-10", "CIFAR10"),
    sizes={"train": 50000, "test": 10000},
    shape=(3, 32, 32),
)

DIGITS = DatasetSpec(
    name="digits",
    title="scikit-learn digits",
    files={"train": (), "test": ()},
    sizes={"train": 1000, "test": 797},
    shape=(1, 8, 8),
)

SPECS: dict[str, DatasetSpec] = {s.name: s for s in (MNIST, FASHION_MNIST, CIFAR10, DIGITS)}

# Per-channel pixel mean and std of the training split, for pixels in [0, 1].
# digits: computed once from gpmargin.data.digits' train split (1000 images, pixels / 16)
# in float64 as x.mean() and x.std() over every pixel of every image (population std, ddof=0):
# 0.3058193359375 and 0.37613806484499845; a test recomputes and checks them.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((0.3058193359375,), (0.37613806484499845,)),
}


def spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; a clear error for an unknown name."""
    from gpmargin.errors import GpmarginError

    key = name.lower().replace("-", "_")
    if key not in SPECS:
        raise GpmarginError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return SPECS[key]


def check_split(split: str) -> str:
    """Validate a split name."""
    from gpmargin.errors import GpmarginError

    if split not in SPLITS:
        raise GpmarginError(f"unknown split {split!r}; choose 'train' or 'test'")
    return split
