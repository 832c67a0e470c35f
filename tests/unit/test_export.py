"""The student after training: the ``student.pt`` artifact, ``load_student``, ``cskd-export``
(TorchScript; ONNX and the console script: tests/integration/test_export_runs.py), ``cskd-eval``
on the artifact, and ``DistillationModule.load_from_checkpoint``'s teacher."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from app_helpers import compose_app, read_summary
from helpers import raw_digits_test_set

from cskd_lightning import CSKDLoss, DistillationModule, load_student
from cskd_lightning.app.eval import evaluate
from cskd_lightning.app.export import export
from cskd_lightning.checkpoints import CheckpointError, load_weights
from cskd_lightning.errors import InputError
from cskd_lightning.models import create_model


@pytest.fixture
def run(digits_run: Path) -> Path:
    """The real digits run these tests read (one per session: tests/conftest.py)."""
    return digits_run


# --------------------------------------------------------------------------- the artifact
def test_student_pt_describes_itself(run: Path) -> None:
    artifact = torch.load(run / "student.pt", weights_only=True)  # plain values only
    summary = read_summary(run)
    assert artifact["format"] == "cskd-lightning/student"
    assert artifact["model"] == {
        "target": None,
        "kwargs": {"name": "digits_student", "num_classes": 10, "in_channels": 1},
    }
    assert artifact["num_classes"] == 10 and artifact["input_shape"] == [1, 8, 8]
    assert artifact["class_names"] == [str(d) for d in range(10)]
    pre = artifact["preprocessing"]
    assert pre["scale"] == 16.0 and len(pre["mean"]) == len(pre["std"]) == 1
    assert artifact["run"]["method"] == summary["method"] == "cskd_cswt"
    assert artifact["run"]["seed"] == summary["seed"]
    assert artifact["run"]["test_acc"] == summary["student"]["test_acc"]
    # The weights are those of the tested (best) checkpoint.
    best = torch.load(run / summary["student"]["best_checkpoint"], weights_only=True)
    for key, value in artifact["state_dict"].items():
        assert torch.equal(value, best["state_dict"][f"student.{key}"]), key


def test_load_student_reproduces_the_test_accuracy_from_raw_images(run: Path) -> None:
    model, preprocess, info = load_student(run / "student.pt")
    assert not model.training
    images, labels = raw_digits_test_set()
    assert len(labels) == 360 and float(images.max()) == 16.0  # really raw pixels
    with torch.no_grad():
        accuracy = float((model(preprocess(images)).argmax(-1) == labels).float().mean())
    assert accuracy == pytest.approx(read_summary(run)["student"]["test_acc"], abs=1e-6)
    assert info["run"]["test_acc"] == pytest.approx(accuracy, abs=1e-6)
    # The normalisation is the point: without it the model sees other inputs.
    assert not torch.allclose(model(preprocess(images[:8])), model(images[:8].float()))
    with pytest.raises(CheckpointError, match=r"\(\.\.\., 1, H, W\)"):
        preprocess(images[:, 0])  # the channel dimension is missing


def test_cskd_eval_reads_the_artifact_and_old_bare_state_dicts(run: Path, tmp_path: Path) -> None:
    expected = read_summary(run)["student"]["test_acc"]
    metrics = evaluate(compose_app("eval", [f"run_dir={run}", f"ckpt_path={run / 'student.pt'}"]))
    assert metrics["test/acc"] == pytest.approx(expected, abs=1e-6)
    # A student.pt from before the artifact: the weights alone.
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(run / "student.pt", weights_only=True)["state_dict"], bare)
    metrics = evaluate(compose_app("eval", [f"run_dir={run}", f"ckpt_path={bare}"]))
    assert metrics["test/acc"] == pytest.approx(expected, abs=1e-6)
    # load_student says what such a file lacks and how to load it anyway.
    with pytest.raises(CheckpointError, match="bare state_dict.*load_weights"):
        load_student(bare)
    model = load_weights(create_model("digits_student", num_classes=10, in_channels=1), bare)
    assert model.state_dict().keys() == load_student(run / "student.pt").model.state_dict().keys()


# --------------------------------------------------------------------------- cskd-export
def test_cskd_export_torchscript_matches_pytorch(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "student.ts"
    record = export(compose_app("export", [f"run_dir={run}", f"output={out}"]))
    assert record["format"] == "torchscript" and record["max_abs_diff"] <= 1e-4
    model, preprocess, _ = load_student(run / "student.pt")
    scripted = torch.jit.load(str(out))
    images, labels = raw_digits_test_set()
    x = preprocess(images)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    assert (out.parent / "export.json").is_file()


# --------------------------------------------------------------------------- load_from_checkpoint
def test_load_from_checkpoint_never_gives_a_silently_random_teacher(run: Path) -> None:
    summary = read_summary(run)
    ckpt = run / summary["student"]["best_checkpoint"]
    student = create_model("digits_student", num_classes=10, in_channels=1)
    with pytest.raises(InputError, match="teacher=.*load_weights"):
        DistillationModule.load_from_checkpoint(ckpt, student=student, loss=CSKDLoss())
    random_teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    with pytest.warns(UserWarning, match="not the one this checkpoint was trained with"):
        DistillationModule.load_from_checkpoint(
            ckpt, student=student, teacher=random_teacher, loss=CSKDLoss()
        )
    trained = create_model("digits_teacher", num_classes=10, in_channels=1)
    load_weights(trained, summary["teacher"]["source"])  # the cached teacher of this run
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not the one this checkpoint.*")
        module = DistillationModule.load_from_checkpoint(
            ckpt, student=student, teacher=trained, loss=CSKDLoss()
        )
    assert torch.equal(
        module.student.state_dict()["classifier.weight"],
        load_student(run / "student.pt").model.state_dict()["classifier.weight"],
    )


def test_the_device_pipeline_records_the_same_preprocessing() -> None:
    from cskd_lightning.data import DeviceDataModule, DigitsDataModule
    from cskd_lightning.export import class_names_of, input_shape_of, preprocessing_of

    regular, device = DigitsDataModule(), DeviceDataModule(DigitsDataModule())
    regular.setup("fit")
    device.setup("fit")
    assert preprocessing_of(device) == preprocessing_of(regular)
    assert preprocessing_of(regular)["mean"] == [regular.mean[0]]
    assert class_names_of(device) == class_names_of(regular)
    assert input_shape_of(device) == [1, 8, 8]


def test_a_model_named_by_its_dotted_path_is_imported_or_refused_in_one_line() -> None:
    from cskd_lightning.export import build_model

    kwargs = {"num_classes": 10, "in_channels": 1}
    target = "cskd_lightning.models.small.digits_student"
    torch.manual_seed(0)
    built = build_model({"target": target, "kwargs": kwargs})
    torch.manual_seed(0)
    expected = create_model("digits_student", **kwargs)
    assert type(built) is type(expected)
    for (name, value), (other, reference) in zip(
        built.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert name == other and torch.equal(value, reference), name
    for bad, reason in [
        ("no_such_package.make_model", "No module named 'no_such_package'"),
        ("cskd_lightning.models.small.no_such_factory", "no attribute 'no_such_factory'"),
        ("no_dots", "Empty module name"),
    ]:
        with pytest.raises(CheckpointError) as info:
            build_model({"target": bad, "kwargs": kwargs})
        message = str(info.value)
        assert message.startswith(f"The student's model factory {bad!r} cannot be imported (")
        assert reason in message and "\n" not in message
        assert message.endswith("Install or put on PYTHONPATH the package that defines it.")


def test_a_file_naming_a_callable_that_is_not_a_model_is_refused_unless_trusted(tmp_path) -> None:
    """The artifact is read with ``weights_only=True``, but its ``model.target`` is imported and
    called: a file naming ``os.system`` with its own arguments must not get it called."""
    from cskd_lightning.export import build_model

    marker = tmp_path / "pwned"
    hostile = {"target": "os.system", "kwargs": {"command": f"touch {marker}"}}
    with pytest.raises(CheckpointError) as info:
        build_model(hostile)
    message = str(info.value)
    assert "'os.system' is neither an nn.Module class nor a model" in message
    assert "pass trust=True" in message and "\n" not in message
    assert not marker.exists()
    # A user's own factory function runs when the file is trusted; a class always runs.
    spec = {"target": "torchvision.models.resnet18", "kwargs": {"num_classes": 10}}
    with pytest.raises(CheckpointError, match="neither an nn.Module class"):
        build_model(spec)
    assert isinstance(build_model(spec, trust=True), torch.nn.Module)
    linear = build_model(
        {"target": "torch.nn.Linear", "kwargs": {"in_features": 3, "out_features": 2}}
    )
    assert isinstance(linear, torch.nn.Linear)
