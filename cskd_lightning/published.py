"""Published top-1 accuracies of the students of the bundled CIFAR-100 and ImageNet pairs, by
method, with their sources: the one table ``cskd-report`` puts beside a sweep's numbers.

Every row is ``(data, pair, method, top-1 %, source)``: ``data`` and ``pair`` as a run's
``summary.json`` names them (``data.name``, ``pair.name``), ``method`` a ``distill=`` name
(``ce`` is the student trained on the labels alone). The sources (:data:`SOURCES`) are the
README tables of the methods' own repositories, read on 2026-12-06 at the commits named there.
The teachers' published accuracies are in the pair configs (``pair.teacher.published_acc``).

What each number is: the best test-epoch top-1 of the standard protocol (240 epochs, one
view; docs/method.md section 6), except ``mlkd`` (MLKD's own two-view recipe) and the DIST
rows (the mean over seeds its README gives). No CSKD number is published per pair (the
paper's tables were not available), so the CSKD methods have no row.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PUBLISHED", "SOURCES", "Published", "published_top1"]

SOURCES = {
    "CRD": "RepDistiller README (Tian et al., CRD, ICLR 2020), HobbitLong/RepDistiller b84f547, "
    '"Benchmark Results on CIFAR-100"',
    "DKD": "mdistiller README (Zhao et al., DKD, CVPR 2022), megvii-research/mdistiller a08d46f",
    "DIST": "DIST_KD README (Huang et al., DIST, NeurIPS 2022), hunto/DIST_KD 2418f18",
    "LS": "logit-standardization-KD README (Sun et al., CVPR 2024), "
    "sunshangquan/logit-standardization-KD f6e5aa5",
    "torchvision": "torchvision's IMAGENET1K_V1 weights (acc@1), trained without a teacher",
}
"""The short source names of :data:`PUBLISHED` and what each one is."""


class Published(NamedTuple):
    """One published number: a pair's student top-1 (percent) with a method, and its source."""

    data: str
    pair: str
    method: str
    top1: float
    source: str  # a key of SOURCES


_C = "cifar100"
_IN = "imagenet"
# fmt: off
PUBLISHED: tuple[Published, ...] = tuple(Published(*row) for row in [
    # the student alone (RepDistiller README, the "Student" row under each pair)
    (_C, "resnet56_resnet20", "ce", 69.06, "CRD"),
    (_C, "resnet110_resnet32", "ce", 71.14, "CRD"),
    (_C, "resnet32x4_resnet8x4", "ce", 72.50, "CRD"),
    (_C, "wrn_40_2_wrn_16_2", "ce", 73.26, "CRD"),
    (_C, "wrn_40_2_wrn_40_1", "ce", 71.98, "CRD"),
    (_C, "vgg13_vgg8", "ce", 70.36, "CRD"),
    (_C, "resnet32x4_shufflev1", "ce", 70.50, "CRD"),
    (_C, "resnet32x4_shufflev2", "ce", 71.82, "CRD"),
    (_C, "wrn_40_2_shufflev1", "ce", 70.50, "CRD"),
    (_C, "vgg13_mobilenetv2", "ce", 64.60, "CRD"),
    (_C, "resnet50_mobilenetv2", "ce", 64.60, "CRD"),
    # KD (RepDistiller README, the "KD" row; the DKD paper repeats these numbers)
    (_C, "resnet56_resnet20", "kd", 70.66, "CRD"),
    (_C, "resnet110_resnet32", "kd", 73.08, "CRD"),
    (_C, "resnet32x4_resnet8x4", "kd", 73.33, "CRD"),
    (_C, "wrn_40_2_wrn_16_2", "kd", 74.92, "CRD"),
    (_C, "wrn_40_2_wrn_40_1", "kd", 73.54, "CRD"),
    (_C, "vgg13_vgg8", "kd", 72.98, "CRD"),
    (_C, "resnet32x4_shufflev1", "kd", 74.07, "CRD"),
    (_C, "resnet32x4_shufflev2", "kd", 74.45, "CRD"),
    (_C, "wrn_40_2_shufflev1", "kd", 74.83, "CRD"),
    (_C, "vgg13_mobilenetv2", "kd", 67.37, "CRD"),
    (_C, "resnet50_mobilenetv2", "kd", 67.35, "CRD"),
    # CRD (RepDistiller README, the "CRD" row)
    (_C, "resnet56_resnet20", "crd", 71.16, "CRD"),
    (_C, "resnet110_resnet32", "crd", 73.48, "CRD"),
    (_C, "resnet32x4_resnet8x4", "crd", 75.51, "CRD"),
    (_C, "wrn_40_2_wrn_16_2", "crd", 75.48, "CRD"),
    (_C, "wrn_40_2_wrn_40_1", "crd", 74.14, "CRD"),
    (_C, "vgg13_vgg8", "crd", 73.94, "CRD"),
    (_C, "resnet32x4_shufflev1", "crd", 75.11, "CRD"),
    (_C, "resnet32x4_shufflev2", "crd", 75.65, "CRD"),
    (_C, "wrn_40_2_shufflev1", "crd", 76.05, "CRD"),
    (_C, "vgg13_mobilenetv2", "crd", 69.73, "CRD"),
    (_C, "resnet50_mobilenetv2", "crd", 69.11, "CRD"),
    # DKD (mdistiller README, the "DKD" rows; its column "ResNet32x4 MobileNet-V2" is
    # ShuffleNet-V2, whose 77.07 the LS README lists under ResNet32x4 -> SHN-V2)
    (_C, "resnet56_resnet20", "dkd", 71.97, "DKD"),
    (_C, "resnet110_resnet32", "dkd", 74.11, "DKD"),
    (_C, "resnet32x4_resnet8x4", "dkd", 76.32, "DKD"),
    (_C, "wrn_40_2_wrn_16_2", "dkd", 76.23, "DKD"),
    (_C, "wrn_40_2_wrn_40_1", "dkd", 74.81, "DKD"),
    (_C, "vgg13_vgg8", "dkd", 74.68, "DKD"),
    (_C, "resnet32x4_shufflev1", "dkd", 76.45, "DKD"),
    (_C, "resnet32x4_shufflev2", "dkd", 77.07, "LS"),
    (_C, "wrn_40_2_shufflev1", "dkd", 76.70, "DKD"),
    (_C, "vgg13_mobilenetv2", "dkd", 69.71, "DKD"),
    (_C, "resnet50_mobilenetv2", "dkd", 70.35, "DKD"),
    # DIST (DIST_KD README, CIFAR-100 table: the pairs it reports)
    (_C, "resnet56_resnet20", "dist", 71.75, "DIST"),
    (_C, "resnet32x4_resnet8x4", "dist", 76.31, "DIST"),
    (_C, "wrn_40_2_wrn_40_1", "dist", 74.43, "DIST"),
    (_C, "resnet32x4_shufflev1", "dist", 76.34, "DIST"),
    (_C, "resnet32x4_shufflev2", "dist", 77.35, "DIST"),
    (_C, "resnet50_mobilenetv2", "dist", 68.66, "DIST"),
    # KD + logit standardization (LS README, "KD+Ours"; the per-pair base temperature and
    # weight of each run are in its log's name)
    (_C, "resnet56_resnet20", "kd_ls", 71.43, "LS"),
    (_C, "resnet110_resnet32", "kd_ls", 74.17, "LS"),
    (_C, "resnet32x4_resnet8x4", "kd_ls", 76.62, "LS"),
    (_C, "wrn_40_2_wrn_16_2", "kd_ls", 76.11, "LS"),
    (_C, "wrn_40_2_wrn_40_1", "kd_ls", 74.37, "LS"),
    (_C, "vgg13_vgg8", "kd_ls", 74.36, "LS"),
    (_C, "resnet32x4_shufflev2", "kd_ls", 75.56, "LS"),
    (_C, "vgg13_mobilenetv2", "kd_ls", 68.61, "LS"),
    (_C, "resnet50_mobilenetv2", "kd_ls", 69.02, "LS"),
    # DKD + logit standardization (LS README, "DKD+Ours"; likewise per-pair settings)
    (_C, "resnet56_resnet20", "dkd_ls", 72.32, "LS"),
    (_C, "resnet110_resnet32", "dkd_ls", 74.29, "LS"),
    (_C, "resnet32x4_resnet8x4", "dkd_ls", 77.01, "LS"),
    (_C, "wrn_40_2_wrn_16_2", "dkd_ls", 76.39, "LS"),
    (_C, "wrn_40_2_wrn_40_1", "dkd_ls", 74.89, "LS"),
    (_C, "vgg13_vgg8", "dkd_ls", 74.81, "LS"),
    (_C, "resnet32x4_shufflev2", "dkd_ls", 77.37, "LS"),
    (_C, "vgg13_mobilenetv2", "dkd_ls", 69.98, "LS"),
    (_C, "resnet50_mobilenetv2", "dkd_ls", 70.45, "LS"),
    # MLKD on its own two-view recipe (LS README, the "MLKD" row: the MLKD paper's numbers)
    (_C, "resnet56_resnet20", "mlkd", 72.19, "LS"),
    (_C, "resnet110_resnet32", "mlkd", 74.11, "LS"),
    (_C, "resnet32x4_resnet8x4", "mlkd", 77.08, "LS"),
    (_C, "wrn_40_2_wrn_16_2", "mlkd", 76.63, "LS"),
    (_C, "wrn_40_2_wrn_40_1", "mlkd", 75.35, "LS"),
    (_C, "vgg13_vgg8", "mlkd", 75.18, "LS"),
    (_C, "resnet32x4_shufflev2", "mlkd", 78.44, "LS"),
    (_C, "vgg13_mobilenetv2", "mlkd", 70.57, "LS"),
    (_C, "resnet50_mobilenetv2", "mlkd", 71.04, "LS"),
    # ImageNet, ResNet34 -> ResNet18 (the ResNet50 pair's student here is MobileNet-V2, the
    # tables' MobileNet-V1: only the student alone is comparable)
    (_IN, "imagenet_resnet34_resnet18", "ce", 69.76, "torchvision"),
    (_IN, "imagenet_resnet34_resnet18", "kd", 71.03, "DKD"),
    (_IN, "imagenet_resnet34_resnet18", "dkd", 71.70, "DKD"),
    (_IN, "imagenet_resnet34_resnet18", "dist", 72.07, "DIST"),
    (_IN, "imagenet_resnet50_mobilenetv2", "ce", 71.88, "torchvision"),
])
# fmt: on
_INDEX = {(p.data, p.pair, p.method): p for p in PUBLISHED}


def published_top1(data: str, pair: str, method: str) -> Published | None:
    """The published number for ``method`` on ``pair`` of ``data`` (``None`` if none is)."""
    return _INDEX.get((data, pair, method))
