"""Tests for the model zoo (``cskd_lightning.models``).

The golden state-dict layouts below are transcribed from the reference sources
(RepDistiller ``models/{resnet,wrn,vgg}.py`` = mdistiller
``mdistiller/models/cifar/{resnet,wrn,vgg}.py``) so that the released CIFAR-100
teacher checkpoints (``ckpt_epoch_240.pth``) load with ``strict=True``.
Nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cskd_lightning.models import count_parameters, create_model, list_models, register_model
from cskd_lightning.models.imagenet import TORCHVISION_MODELS, resolve_weights

CIFAR_MODELS = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "ResNet18",
    "ResNet50",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
]
IMAGENET_MODELS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
SMALL_PAIRS = {"digits": 8, "fmnist": 28}  # prefix -> native input size

# Parameter counts for 100 classes (exact values measured; the references report
# them rounded to 0.01M, e.g. resnet8x4 1.23M, resnet32x4 7.43M, wrn_40_2 2.26M,
# vgg13 9.46M, ShuffleV2 1.36M in the CRD / DKD papers).
PARAM_COUNTS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "ResNet18": 11_220_132,
    "ResNet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
}
# Values quoted (in millions) in the reference docs / papers.
REFERENCE_MILLIONS = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.26,
    "vgg13": 9.46,
    "ShuffleV2": 1.36,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "MobileNetV2": 0.81,
    "ShuffleV1": 0.95,
    "ResNet50": 23.71,
}


def _meta_model(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: no memory, no init cost; shapes and names are real."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _input_for(name: str, batch: int = 2) -> tuple[torch.Tensor, dict]:
    if name in TORCHVISION_MODELS:
        return torch.randn(batch, 3, 64, 64), {}
    for prefix, size in SMALL_PAIRS.items():
        if name.startswith(prefix + "_"):
            return torch.randn(batch, 1, size, size), {"in_channels": 1}
    return torch.randn(batch, 3, 32, 32), {}


# --------------------------------------------------------------------------- registry


def test_all_required_names_registered() -> None:
    names = set(list_models())
    required = set(CIFAR_MODELS) | set(IMAGENET_MODELS)
    required |= {f"{p}_{r}" for p in SMALL_PAIRS for r in ("teacher", "student")}
    assert required <= names
    assert list_models() == sorted(names)


def test_unknown_name_lists_available_sorted() -> None:
    with pytest.raises(ValueError, match=r"Unknown model 'resnet9'\. Available: ") as exc:
        create_model("resnet9")
    msg = str(exc.value)
    assert msg.endswith(", ".join(sorted(list_models())))


def test_register_duplicate_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet8")(lambda **kw: nn.Identity())


def test_count_parameters_trainable_only() -> None:
    model = create_model("resnet8", num_classes=10)
    total = count_parameters(model)
    model.fc.requires_grad_(False)
    frozen = model.fc.weight.numel() + model.fc.bias.numel()
    assert count_parameters(model, trainable_only=True) == total - frozen
    assert count_parameters(model) == total


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_returns_logits(name: str) -> None:
    x, kwargs = _input_for(name)
    model = create_model(name, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_models_first_conv_uses_in_channels(name: str) -> None:
    model = _meta_model(name, num_classes=10, in_channels=1)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    assert first_conv.weight.shape[1] == 1


# One model per family (and per factory helper) runs a real 1-channel forward pass.
@pytest.mark.parametrize(
    "name",
    [
        "resnet8",
        "resnet8x4",
        "ResNet18",
        "wrn_16_1",
        "vgg8",
        "MobileNetV2",
        "ShuffleV1",
        "ShuffleV2",
    ],
)
def test_cifar_models_forward_one_channel(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)


def test_train_mode_backward_resnet8x4() -> None:
    model = create_model("resnet8x4", num_classes=5)
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("name", ["ResNet18", "vgg8"])
def test_adaptive_models_accept_64x64(name: str) -> None:
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts(name: str) -> None:
    n = count_parameters(_meta_model(name, num_classes=100))
    assert n == PARAM_COUNTS[name]
    if name in REFERENCE_MILLIONS:
        assert abs(n / 1e6 - REFERENCE_MILLIONS[name]) <= 0.01


# --------------------------------------------------------------------------- golden layouts


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def _ref_cifar_resnet(depth: int, filters: list[int], nc: int = 100) -> list:
    """Layout of RepDistiller ``ResNet(depth, filters, 'basicblock')``."""
    n = (depth - 2) // 6
    keys: list = [("conv1.weight", (filters[0], 3, 3, 3)), *_bn("bn1", filters[0])]
    inplanes = filters[0]
    for li, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2), strict=True), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            cin = inplanes if b == 0 else planes
            keys += [(f"{p}.conv1.weight", (planes, cin, 3, 3)), *_bn(f"{p}.bn1", planes)]
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes)]
            # _make_layer: downsample iff stride != 1 or inplanes != planes (first block only)
            if b == 0 and (stride != 1 or inplanes != planes):
                keys += [(f"{p}.downsample.0.weight", (planes, inplanes, 1, 1))]
                keys += _bn(f"{p}.downsample.1", planes)
        inplanes = planes
    keys += [("fc.weight", (nc, filters[3])), ("fc.bias", (nc,))]
    return keys


def _ref_wrn(depth: int, k: int, nc: int = 100) -> list:
    """Layout of RepDistiller ``WideResNet(depth, nc, widen_factor=k)``."""
    n = (depth - 4) // 6
    ch = [16, 16 * k, 32 * k, 64 * k]
    keys: list = [("conv1.weight", (16, 3, 3, 3))]
    for bi in range(1, 4):
        for i in range(n):
            cin = ch[bi - 1] if i == 0 else ch[bi]
            cout = ch[bi]
            p = f"block{bi}.layer.{i}"
            keys += [*_bn(f"{p}.bn1", cin), (f"{p}.conv1.weight", (cout, cin, 3, 3))]
            keys += [*_bn(f"{p}.bn2", cout), (f"{p}.conv2.weight", (cout, cout, 3, 3))]
            if cin != cout:
                keys += [(f"{p}.convShortcut.weight", (cout, cin, 1, 1))]
    keys += [*_bn("bn1", ch[3]), ("fc.weight", (nc, ch[3])), ("fc.bias", (nc,))]
    return keys


def _ref_vgg_bn(cfg: list[list[int]], nc: int = 100) -> list:
    """Layout of RepDistiller ``VGG(cfg, batch_norm=True)``."""
    keys: list = []
    cin = 3
    for bi, widths in enumerate(cfg):
        for j, v in enumerate(widths):
            p = f"block{bi}.{3 * j}"
            keys += [(f"{p}.weight", (v, cin, 3, 3)), (f"{p}.bias", (v,))]
            keys += _bn(f"block{bi}.{3 * j + 1}", v)
            cin = v
    keys += [("classifier.weight", (nc, 512)), ("classifier.bias", (nc,))]
    return keys


GOLDEN = {
    "resnet8x4": _ref_cifar_resnet(8, [32, 64, 128, 256]),
    "resnet32x4": _ref_cifar_resnet(32, [32, 64, 128, 256]),
    "resnet56": _ref_cifar_resnet(56, [16, 16, 32, 64]),
    "resnet110": _ref_cifar_resnet(110, [16, 16, 32, 64]),
    "wrn_40_2": _ref_wrn(40, 2),
    "wrn_16_2": _ref_wrn(16, 2),
    "vgg13": _ref_vgg_bn([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]),
    "vgg8": _ref_vgg_bn([[64], [128], [256], [512], [512]]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_state_dict_layout(name: str) -> None:
    sd = _meta_model(name, num_classes=100).state_dict()
    got = [(k, tuple(v.shape)) for k, v in sd.items()]
    assert got == GOLDEN[name]


# Hand-transcribed spot checks: (number of state-dict entries, first keys, last keys).
SPOT_CHECKS = {
    "resnet8x4": (
        62,
        ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean"],
        [
            "layer3.0.downsample.0.weight",
            "layer3.0.downsample.1.weight",
            "layer3.0.downsample.1.bias",
            "layer3.0.downsample.1.running_mean",
            "layer3.0.downsample.1.running_var",
            "layer3.0.downsample.1.num_batches_tracked",
            "fc.weight",
            "fc.bias",
        ],
    ),
    "wrn_40_2": (
        227,
        ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.bn1.bias"],
        [
            "block3.layer.5.conv2.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "fc.weight",
            "fc.bias",
        ],
    ),
    "vgg13": (
        72,
        ["block0.0.weight", "block0.0.bias", "block0.1.weight", "block0.1.bias"],
        [
            "block4.3.weight",
            "block4.3.bias",
            "block4.4.weight",
            "block4.4.bias",
            "block4.4.running_mean",
            "block4.4.running_var",
            "block4.4.num_batches_tracked",
            "classifier.weight",
            "classifier.bias",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(SPOT_CHECKS))
def test_state_dict_spot_checks(name: str) -> None:
    count, first, last = SPOT_CHECKS[name]
    keys = list(_meta_model(name, num_classes=100).state_dict())
    assert len(keys) == count
    assert keys[: len(first)] == first
    assert keys[-len(last) :] == last


def test_resnet_downsample_placement() -> None:
    # x4 variants: layer1 widens 32 -> 64, so its first block has a downsample.
    wide = _meta_model("resnet8x4")
    assert wide.layer1[0].downsample is not None
    narrow = _meta_model("resnet56")
    assert narrow.layer1[0].downsample is None
    assert narrow.layer2[0].downsample is not None
    assert all(b.downsample is None for b in narrow.layer2[1:])
    w32 = _meta_model("resnet32x4")
    assert w32.layer1[0].downsample is not None and w32.layer1[1].downsample is None


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_40_2", "vgg13"])
def test_strict_load_of_reference_shaped_checkpoint(name: str, tmp_path) -> None:
    """A checkpoint in the released format ({"model": state_dict, ...}) loads strictly."""
    ckpt = {
        "model": {k: torch.full(s, 0.5) for k, s in GOLDEN[name]},
        "epoch": 240,
    }
    # num_batches_tracked is an integer buffer in the reference too.
    for k in ckpt["model"]:
        if k.endswith("num_batches_tracked"):
            ckpt["model"][k] = torch.tensor(7)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(ckpt, path)
    model = create_model(name, num_classes=100)
    result = model.load_state_dict(torch.load(path)["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.all(model.state_dict()[GOLDEN[name][0][0]] == 0.5)


# --------------------------------------------------------------------------- small pairs


@pytest.mark.parametrize("prefix", sorted(SMALL_PAIRS))
def test_small_pairs(prefix: str) -> None:
    teacher = create_model(f"{prefix}_teacher", num_classes=10, in_channels=1)
    student = create_model(f"{prefix}_student", num_classes=10, in_channels=1)
    n_t, n_s = count_parameters(teacher), count_parameters(student)
    assert n_t >= 10 * n_s
    assert n_s <= 10_000
    assert n_t <= 300_000
    for model in (teacher.eval(), student.eval()):
        with torch.no_grad():
            for size in (8, SMALL_PAIRS[prefix], 32):
                assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_digits_student_size() -> None:
    n = count_parameters(create_model("digits_student", num_classes=10, in_channels=1))
    assert 800 <= n <= 1_500


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_rejects_other_channel_counts(name: str) -> None:
    with pytest.raises(ValueError, match="in_channels=3"):
        create_model(name, num_classes=10, in_channels=1)


def test_resolve_weights() -> None:
    from torchvision.models import ResNet18_Weights

    assert resolve_weights("resnet18", None) is None
    assert resolve_weights("resnet18", "IMAGENET1K_V1") is ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet18", "DEFAULT") is ResNet18_Weights.DEFAULT
    assert (
        resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1")
        is ResNet18_Weights.IMAGENET1K_V1
    )
    assert resolve_weights("resnet18", ResNet18_Weights.IMAGENET1K_V1) is (
        ResNet18_Weights.IMAGENET1K_V1
    )
    with pytest.raises(ValueError, match="Unknown weights 'IMAGENET9K'"):
        resolve_weights("resnet18", "IMAGENET9K")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create_model("resnet18", weights="nope")


def test_pretrained_weights_replace_head_without_download(monkeypatch) -> None:
    """Pretrained loading path, with torchvision's downloader stubbed out."""
    import torchvision
    from torchvision.models._api import WeightsEnum

    reference = torchvision.models.resnet18(num_classes=1000)
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append(self)
        return reference.state_dict()

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = create_model("resnet18", num_classes=10, weights="IMAGENET1K_V1")
    assert len(calls) == 1
    assert model.fc.out_features == 10
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    same = create_model("resnet18", num_classes=1000, weights="IMAGENET1K_V1").eval()
    assert torch.equal(same.fc.weight, reference.fc.weight)


class _Extra:
    """Any object beyond tensors: loading it needs full unpickling."""


def test_pretrained_names_its_own_argument_for_a_file_that_needs_full_unpickling(tmp_path):
    from cskd_lightning.checkpoints import CheckpointError, load_weights
    from cskd_lightning.models import Pretrained

    model = create_model("digits_student", num_classes=10, in_channels=1)
    path = tmp_path / "pickle.pth"
    torch.save({"state_dict": model.state_dict(), "extra": _Extra()}, path)
    with pytest.raises(CheckpointError, match=r"pass Pretrained\(trust_checkpoint=True\)\.$"):
        Pretrained("digits_student", path, num_classes=10, in_channels=1)
    with pytest.raises(
        CheckpointError, match=r"could run code\. If you trust the file, pass trust=True\.$"
    ):
        load_weights(model, path)
    assert Pretrained("digits_student", path, 10, 1, trust_checkpoint=True).num_classes == 10
