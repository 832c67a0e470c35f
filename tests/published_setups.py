"""The published CIFAR-100 and ImageNet setups (docs/method.md sections 5 and 6) as the tests
know them, written here from the docs, not read from the configs: what every setup composes to
(tests/unit/test_experiments.py) and the few-batch runs of some of them
(tests/integration/test_experiment_runs.py)."""

from __future__ import annotations

# docs/method.md section 5: the 11 CIFAR-100 pairs of the published code (teacher, student).
CIFAR_PAIRS = [
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
    ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"),
]
PAIR_MODELS = {f"{t}_{s}".lower(): (t, s) for t, s in CIFAR_PAIRS}
LIGHT_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")  # LR 0.01 in both protocols
# docs/method.md: protocol -> (student epochs, student LR, light student LR, views, loss class).
PROTOCOLS = {
    "standard": (240, 0.05, 0.01, 1, "CSKDLoss"),  # section 6
    "full": (480, 0.025, 0.01, 2, "CSKDFullLoss"),  # section 5
}
TEACHER_RECIPE = (240, 0.05)  # sections 5 and 6: the teacher is retrained, in both protocols
IMAGENET = {
    "imagenet_resnet34_resnet18": ("resnet34", "resnet18"),
    "imagenet_resnet50_mobilenetv2": ("resnet50", "mobilenet_v2"),
}
CIFAR_SETUPS = [(pair, protocol) for pair in PAIR_MODELS for protocol in PROTOCOLS]


def setup(pair: str, protocol: str) -> list[str]:
    """The documented command's overrides for one published CIFAR-100 setup."""
    return [f"experiment=cifar100_{protocol}", f"pair={pair}"]
