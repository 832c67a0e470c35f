"""The student after training: the ``student.pt`` artifact, ``load_student``, ``cskd-export``,
``cskd-eval`` on the artifact, and ``DistillationModule.load_from_checkpoint``'s teacher."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import FAST, compose_train, read_summary, run_cli
from hydra import compose, initialize_config_module

from cskd_lightning import CSKDLoss, DistillationModule, load_student
from cskd_lightning.app.eval import evaluate
from cskd_lightning.app.export import export
from cskd_lightning.app.train import train
from cskd_lightning.checkpoints import CheckpointError, load_weights
from cskd_lightning.data.base import stratified_split
from cskd_lightning.data.digits import TEST_FRACTION, TEST_SPLIT_SEED
from cskd_lightning.errors import InputError
from cskd_lightning.models import create_model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``cskd-train`` run on the digits (fast settings); its run directory."""
    tmp = tmp_path_factory.mktemp("export")
    train(compose_train(FAST, tmp))
    return tmp / "run"


def raw_digits_test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split as ``load_digits`` gives it: pixels 0..16, ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    _, test_idx = stratified_split(labels, math.ceil(TEST_FRACTION * len(labels)), TEST_SPLIT_SEED)
    images = torch.as_tensor(np.asarray(bunch.images)[test_idx]).unsqueeze(1)
    return images, labels[test_idx]


def compose_app(name: str, overrides: list[str]):
    with initialize_config_module(config_module="cskd_lightning.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


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


def test_cskd_export_onnx_matches_pytorch(run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (onnx extra)")
    out = tmp_path / "student.onnx"
    record = export(compose_app("export", [f"run_dir={run}", "format=onnx", f"output={out}"]))
    assert record["max_abs_diff"] <= 1e-4
    model, preprocess, _ = load_student(run / "student.pt")
    x = preprocess(raw_digits_test_set()[0])  # 360 images: another batch size than the check's
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)


def test_cskd_export_console_script_reports_input_errors(run: Path, tmp_path: Path) -> None:
    bad = run_cli(["cskd-export", f"run_dir={run}", "format=tflite"], cwd=tmp_path)
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "format=tflite" in lines[0] and "onnx" in lines[0]
    with pytest.raises(InputError, match="Checkpoint not found"):
        export(compose_app("export", [f"run_dir={tmp_path / 'nothing'}"]))


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
