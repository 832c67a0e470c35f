"""The feature-distillation contract: hooks on named submodules, the setup step that sizes a
loss's modules before the optimizer, features and sample indices passed to the loss, the
refusals; the method losses' own pieces (CRD's negatives and memory, ReviewKD's shapes and
warm-up, FitNet's regressor)."""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer
from torch import nn

from cskd_lightning import DistillationModule, distill
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.data.device import SampleBatch
from cskd_lightning.errors import InputError
from cskd_lightning.features import FeatureHooks
from cskd_lightning.losses import (
    ATLoss,
    CRDLoss,
    FeatureBatch,
    FitNetLoss,
    KDLoss,
    ReviewKDLoss,
    RKDLoss,
)
from cskd_lightning.losses.crd import contrast_loss
from cskd_lightning.models import create_model

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::UserWarning")]

DIGITS = {
    "teacher": {
        "feats": ["features.2", "features.5", "features.9"],
        "preact_feats": ["features.2", "features.5", "features.9"],
        "pooled_feat": ["classifier:input"],
    },
    "student": {
        "feats": ["features.2", "features.5", "features.8"],
        "preact_feats": ["features.2", "features.5", "features.8"],
        "pooled_feat": ["classifier:input"],
    },
}


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    return student, teacher


# --------------------------------------------------------------------------- hooks
def test_hooks_record_outputs_and_inputs_and_leave_the_model_hook_free() -> None:
    model = create_model("resnet8x4", num_classes=10).eval()
    hooks = FeatureHooks(
        model, {"feats": ["layer2"], "pre": ["layer3.0.preact"], "pool": ["fc:input"]}
    )
    x = torch.randn(2, 3, 32, 32)
    with hooks.capture() as feats:
        logits = model(x)
    # The same values recomputed by hand through the submodules.
    with torch.no_grad():
        h = model.relu(model.bn1(model.conv1(x)))
        l2 = model.layer2(model.layer1(h))
        l3 = model.layer3(l2)
        pooled = model.avgpool(l3).flatten(1)
    torch.testing.assert_close(feats["feats"][0], l2)
    torch.testing.assert_close(feats["pool"][0], pooled)
    torch.testing.assert_close(model.fc(feats["pool"][0]), logits)
    assert torch.equal(torch.relu(feats["pre"][0]), l3)  # pre-activation: ReLU gives the output
    assert (feats["pre"][0] < 0).any()
    assert all(not m._forward_hooks for m in model.modules())


def test_a_wrong_layer_name_is_refused_naming_the_close_ones() -> None:
    model = create_model("resnet8x4", num_classes=10)
    with pytest.raises(InputError, match=r"no submodule 'layer9'"):
        FeatureHooks(model, {"feats": ["layer9"]}, "student")
    with pytest.raises(InputError, match=r"layer1\.0"):
        FeatureHooks(model, {"feats": ["layer1.7"]}, "student")


def test_a_layer_that_does_not_run_is_refused() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = Model()
    hooks = FeatureHooks(model, {"feats": ["unused"]}, "teacher")
    with pytest.raises(InputError, match="did not run"):
        with hooks.capture():
            model(torch.randn(1, 2))


def test_the_module_refuses_a_missing_feature_role() -> None:
    student, teacher = _models()
    with pytest.raises(InputError, match=r"'preact_feats'.*features\.teacher"):
        DistillationModule(
            student,
            teacher,
            ReviewKDLoss(),
            features={"student": DIGITS["student"], "teacher": {"feats": ["features.2"]}},
        )


def test_logit_losses_ignore_features_and_keep_their_call() -> None:
    student, teacher = _models()
    module = DistillationModule(student, teacher, KDLoss(), features=DIGITS)
    assert module.feature_hooks is None
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    _, terms = module.compute_loss((x, y))
    assert set(terms) == {"loss", "ce", "kd"}


# --------------------------------------------------------------------------- setup and training
def test_fit_sizes_the_loss_before_the_optimizer_and_trains_it() -> None:
    student, teacher = _models()
    loss = FitNetLoss(hint_layer=2)
    module = DistillationModule(student, teacher, loss, features=DIGITS)
    assert not loss.is_prepared and not list(loss.parameters())
    trainer = quiet_trainer(max_steps=3, limit_val_batches=1)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert loss.is_prepared and loss.regressor is not None
    # student 8x8x8 map -> teacher 128x4x4 map: a stride-2 3x3 conv
    assert isinstance(loss.regressor.conv, nn.Conv2d) and loss.regressor.conv.stride == (2, 2)
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in loss.parameters()} <= optimized
    assert any(trainer.optimizers[0].state[p] for p in loss.parameters())  # it stepped
    assert "train/fitnet" in trainer.callback_metrics


def test_crd_gets_the_sample_indices_from_a_dataloader_datamodule() -> None:
    student, teacher = _models()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recording(CRDLoss):
        def forward(self, s, t, y, features):
            seen.append((features.index.clone(), y.clone()))
            return super().forward(s, t, y, features)

    loss = Recording(num_negatives=16)
    datamodule = DigitsDataModule(batch_size=32)
    module = DistillationModule(student, teacher, loss, features=DIGITS)
    quiet_trainer(max_epochs=1, limit_val_batches=1).fit(module, datamodule=datamodule)
    assert datamodule.with_indices and loss.num_samples == len(datamodule.train_set)
    indices = torch.cat([i for i, _ in seen])
    labels = torch.cat([y for _, y in seen])
    # Distinct samples of the training set (one epoch of the sampler's permutation, the last
    # partial batch dropped), and each label is that sample's.
    assert len(set(indices.tolist())) == len(indices) == 32 * len(seen)
    assert 0 <= int(indices.min()) and int(indices.max()) < len(datamodule.train_set)
    assert [datamodule.train_set[int(i)][1] for i in indices] == labels.tolist()


def test_the_teacher_logit_cache_is_refused_for_a_feature_loss() -> None:
    student, teacher = _models()
    module = DistillationModule(student, teacher, ATLoss(), features=DIGITS)
    module.logit_cache = object()
    with pytest.raises(InputError, match="teacher-logit cache"):
        quiet_trainer(max_steps=1).fit(module, datamodule=DigitsDataModule(batch_size=32))


def test_distill_api_takes_the_feature_layers() -> None:
    student, teacher = _models()
    _, metrics = distill(
        student,
        teacher,
        DigitsDataModule(batch_size=64),
        method="rkd",
        max_epochs=1,
        features=DIGITS,
        limit_train_batches=2,
        limit_val_batches=1,
        test=False,
    )
    assert "train/rkd" in metrics


# --------------------------------------------------------------------------- method pieces
def test_crd_negatives_never_repeat_the_positive_and_cover_the_others() -> None:
    loss = CRDLoss(num_negatives=2000, num_samples=7)
    loss.prepare({"pooled_feat": [torch.randn(2, 3)]}, {"pooled_feat": [torch.randn(2, 5)]})
    index = torch.tensor([0, 3, 6])
    rows = loss._negatives(index)
    assert torch.equal(rows[:, 0], index)
    for i, positive in enumerate(index.tolist()):
        assert set(rows[i, 1:].tolist()) == set(range(7)) - {positive}


def test_crd_memory_moves_towards_the_embeddings_of_the_batch() -> None:
    torch.manual_seed(0)
    loss = CRDLoss(feat_dim=4, num_negatives=3, num_samples=10, momentum=0.5)
    f_s, f_t = torch.randn(3, 6), torch.randn(3, 5)
    loss.prepare({"pooled_feat": [f_s]}, {"pooled_feat": [f_t]})
    before = loss.memory_s.clone()
    index = torch.tensor([1, 4, 8])
    features = FeatureBatch({"pooled_feat": [f_s]}, {"pooled_feat": [f_t]}, index)
    terms = loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), features)
    v = loss.embed_s(f_s).detach()
    expected = 0.5 * before[index] + 0.5 * v
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(loss.memory_s[index], expected)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(loss.memory_s[untouched], before[untouched])
    assert bool((loss.z_norm > 0).all()) and torch.isfinite(terms["crd"])


def test_contrast_loss_matches_the_nce_formula() -> None:
    scores = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.05, 0.4]], dtype=torch.float64)
    n, eps = 10, 1e-7
    noise = 2 / n
    expected = (
        -sum(
            torch.log(row[0] / (row[0] + noise + eps)).item()
            + sum(torch.log(noise / (v + noise + eps)).item() for v in row[1:])
            for row in scores
        )
        / 2
    )
    assert contrast_loss(scores, n).item() == pytest.approx(expected, rel=1e-12)


def test_reviewkd_sizes_its_fusion_from_the_real_shapes_and_warms_up() -> None:
    student, teacher = (
        create_model("resnet8x4", num_classes=10),
        create_model("resnet32x4", num_classes=10),
    )
    layers = {
        "student": {"feats": ["relu", "layer1", "layer2", "layer3"], "pooled_feat": ["fc:input"]},
        "teacher": {
            "preact_feats": ["relu", "layer1.4.preact", "layer2.4.preact", "layer3.4.preact"],
            "pooled_feat": ["fc:input"],
        },
    }
    loss = ReviewKDLoss(warmup_epochs=20)
    module = DistillationModule(student, teacher, loss, features=layers)
    module.prepare_feature_loss(torch.randn(2, 3, 32, 32))
    # mdistiller's resnet32x4 -> resnet8x4 settings, found from the shapes.
    assert loss.shapes == [32, 16, 8, 1] and loss.out_shapes == [32, 16, 8, 1]
    assert [abf.conv2[0].out_channels for abf in loss.abfs] == [64, 128, 256, 256]
    assert [abf.conv1[0].in_channels for abf in loss.abfs] == [64, 128, 256, 256]
    assert [abf.att_conv is not None for abf in loss.abfs] == [True, True, True, False]
    loss.set_progress(0, 0)
    assert loss.warmup_factor() == pytest.approx(1 / 20)
    loss.set_progress(25, 0)
    assert loss.warmup_factor() == 1.0


def test_rkd_term_is_the_functional_on_the_pooled_features() -> None:
    from cskd_lightning.losses.feature_functional import rkd_loss

    f_s, f_t = torch.randn(5, 4), torch.randn(5, 6)
    loss = RKDLoss()
    loss.prepare({}, {})
    features = FeatureBatch({"pooled_feat": [f_s]}, {"pooled_feat": [f_t]})
    y = torch.zeros(5, dtype=torch.long)
    terms = loss.forward_views([torch.zeros(5, 3)], [torch.zeros(5, 3)], y, features=features)
    assert terms["rkd"].item() == pytest.approx(rkd_loss(f_s, f_t).item())
    with pytest.raises(InputError, match="features="):
        loss.forward_views([torch.zeros(5, 3)], [torch.zeros(5, 3)], y)


def test_sample_batch_unpacks_like_a_pair() -> None:
    batch = SampleBatch(torch.zeros(2, 1), torch.zeros(2), torch.arange(2), torch.arange(2).numpy())
    x, y = batch
    assert x.shape == (2, 1) and batch.index.tolist() == [0, 1]


# --------------------------------------------------------------------------- configs
def _feature_case() -> tuple[FeatureBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shapes_s = [(6, 4, 16, 16), (6, 8, 16, 16), (6, 16, 8, 8), (6, 32, 4, 4)]
    shapes_t = [(6, 8, 16, 16), (6, 16, 16, 16), (6, 32, 8, 8), (6, 64, 4, 4)]
    feats_s = [torch.randn(*s, generator=g) for s in shapes_s]
    feats_t = [torch.randn(*s, generator=g) for s in shapes_t]
    features = FeatureBatch(
        {
            "feats": feats_s,
            "preact_feats": feats_s,
            "pooled_feat": [torch.randn(6, 32, generator=g)],
        },
        {
            "feats": feats_t,
            "preact_feats": feats_t,
            "pooled_feat": [torch.randn(6, 64, generator=g)],
        },
        torch.arange(6),
    )
    zs, zt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    return features, zs, zt, torch.randint(0, 5, (6,), generator=g)


@pytest.mark.parametrize("method", ["fitnet", "at", "rkd", "pkt", "sp", "crd", "reviewkd"])
def test_every_feature_config_has_mdistillers_settings(method: str, tmp_path) -> None:
    """``distill=<method>`` composed as cskd-train composes it: the loss is mdistiller's
    objective with its weights (numbers written here, from mdistiller/engine/cfg.py and
    configs/cifar100/reviewkd.yaml, not read from the configs)."""
    import hydra
    import torch.nn.functional as F
    from app_helpers import compose_train

    from cskd_lightning.losses import feature_functional as fn

    loss = hydra.utils.instantiate(compose_train([f"distill={method}"], tmp_path).distill.loss)
    features, zs, zt, y = _feature_case()
    loss.prepare(features.student, features.teacher, num_samples=6)
    terms = loss.forward_views([zs], [zt], y, features=features)
    ce = F.cross_entropy(zs, y)
    s, t = features.student, features.teacher
    expected = {
        "at": lambda: 1000.0 * fn.at_loss(s["feats"][1:], t["feats"][1:], 2.0),
        "rkd": lambda: fn.rkd_loss(s["pooled_feat"][0], t["pooled_feat"][0], False, 1e-12, 25, 50),
        "pkt": lambda: 30000.0 * fn.pkt_loss(s["pooled_feat"][0], t["pooled_feat"][0], 1e-7),
        "sp": lambda: 3000.0 * fn.sp_loss([s["feats"][-1]], [t["feats"][-1]]),
        "fitnet": lambda: 100.0 * F.mse_loss(loss.regressor(s["feats"][2]), t["feats"][2]),
        "crd": lambda: 0.8 * terms["crd"],
        "reviewkd": lambda: 5.0 * (1 / 20) * terms["reviewkd"],
    }[method]()
    assert terms["loss"].item() == pytest.approx((ce + expected).item(), rel=1e-5)
    if method == "crd":
        assert (loss.feat_dim, loss.num_negatives) == (128, 16384)
        assert (loss.temperature, loss.momentum) == (0.07, 0.5)
    if method == "reviewkd":
        assert (loss.warmup_epochs, loss.max_mid_channel, loss.student_preact) == (20, 512, False)


def test_load_from_checkpoint_loads_the_student_of_a_feature_run(tmp_path) -> None:
    student, teacher = _models()
    module = DistillationModule(student, teacher, FitNetLoss(), features=DIGITS)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    assert any(k.startswith("loss.regressor") for k in torch.load(path)["state_dict"])
    fresh_student, fresh_teacher = _models()
    fresh_teacher.load_state_dict(teacher.state_dict())
    with pytest.warns(UserWarning, match="not restored"):
        loaded = DistillationModule.load_from_checkpoint(
            path, student=fresh_student, teacher=fresh_teacher, loss=FitNetLoss(), features=DIGITS
        )
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.student.state_dict()[key], value)


def test_compile_models_is_refused_for_a_feature_loss() -> None:
    student, teacher = _models()
    with pytest.raises(InputError, match=r"compile_models=False\)"):
        DistillationModule(student, teacher, ATLoss(), features=DIGITS, compile_models=True)


@pytest.mark.parametrize(
    "pair",
    ["digits", "fashion_mnist", "resnet32x4_resnet8x4", "resnet56_resnet20", "resnet110_resnet32"],
)
def test_every_pair_feature_block_names_layers_that_run(pair: str, tmp_path) -> None:
    """Each pair config's ``features`` block resolves on its models; ``feats`` are stage maps
    (channels growing, side not growing), ``preact_feats`` give ``feats`` after a ReLU, and
    ``pooled_feat`` is the classifier's input."""
    import hydra
    from app_helpers import compose_train
    from omegaconf import OmegaConf

    data = {"digits": "digits", "fashion_mnist": "fashion_mnist"}.get(pair, "cifar100")
    cfg = compose_train([f"pair={pair}", f"data={data}"], tmp_path)
    block = OmegaConf.to_container(cfg.pair.features, resolve=True)
    side = {"digits": 8, "fashion_mnist": 28}.get(pair, 32)
    for role in ("student", "teacher"):
        model = hydra.utils.instantiate(cfg.pair[role].model).eval()
        hooks = FeatureHooks(model, block[role], role)
        x = torch.randn(2, cfg.data.in_channels, side, side)
        with torch.no_grad(), hooks.capture() as feats:
            logits = model(x)
        maps = feats["feats"]
        assert all(m.dim() == 4 for m in maps) and len(maps) >= 3
        assert [m.shape[1] for m in maps] == sorted(m.shape[1] for m in maps)
        assert [m.shape[2] for m in maps] == sorted((m.shape[2] for m in maps), reverse=True)
        for pre, post in zip(feats["preact_feats"], maps, strict=True):
            assert torch.equal(torch.relu(pre), post)
        (pooled,) = feats["pooled_feat"]
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        torch.testing.assert_close(classifier(pooled), logits)
