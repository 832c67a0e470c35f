"""The trained student as a self-describing file, and back to a ready model.

``cskd-train`` writes ``student.pt`` with :func:`save_student`: one ``torch.save`` dict of plain
values (readable with ``torch.load(weights_only=True)``)::

    {
      "format": "cskd-lightning/student", "format_version": 1,
      "state_dict": {name: Tensor, ...},          # the student's weights
      "model": {"target": None | "pkg.module.factory", "kwargs": {"name": ..., ...}},
      "num_classes": C,
      "input_shape": [C_in, H, W],                # what the model takes, per image
      "preprocessing": {"mean": [...], "std": [...], "scale": s} | None,
      "class_names": [str, ...] | None,
      "run": {"method": ..., "seed": ..., "test_acc": ..., ...},
    }

``model.target`` ``None`` means :func:`~cskd_lightning.models.create_model` (``kwargs`` then
hold ``name``, ``num_classes``, ``in_channels`` and any extra factory options); otherwise the
dotted path of the callable that built the model, imported by name when the file is loaded
(as Hydra's ``_target_`` is).

Preprocessing maps a *raw* image as the dataset provides it (``uint8`` pixels ``0..255`` for
Fashion-MNIST and CIFAR, ``sklearn.datasets.load_digits`` pixels ``0..16`` for the digits) to
the model's input, per channel: ``x -> (x / scale - mean) / std``.

:func:`load_student` turns the file back into ``(model, preprocess, info)``; :func:`export_model`
writes the model as TorchScript or ONNX and :func:`check_export` compares the exported model's
logits with PyTorch's (``cskd-export`` does both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from cskd_lightning.checkpoints import (
    CheckpointError,
    _is_state_dict,
    describe_mismatch,
    read_checkpoint,
)
from cskd_lightning.dotted_path import IMPORT_ERRORS, import_object
from cskd_lightning.files import save_atomically

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LoadedStudent",
    "Preprocess",
    "EXPORT_FORMATS",
    "build_model",
    "check_export",
    "class_names_of",
    "example_batch",
    "export_model",
    "input_shape_of",
    "load_student",
    "preprocessing_of",
    "run_exported",
    "save_student",
    "student_artifact",
]

FORMAT = "cskd-lightning/student"
FORMAT_VERSION = 1
CREATE_MODEL = "cskd_lightning.models.create_model"
_HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


# --------------------------------------------------------------------------- preprocessing
class Preprocess:
    """Raw images ``(..., C, H, W)`` (tensor, NumPy array or a PIL image) -> the model's
    ``float32`` input: ``(x / scale - mean) / std`` per channel (dimension ``-3``).

    A recorded ``eval_geometry`` (ImageNet's resize and centre crop) is not applied: resize
    and crop the images to ``input_shape`` first, as that entry says.

    ``mean`` / ``std`` of ``None`` (a datamodule that did not say how it normalises) make it
    the identity on ``float32``: the caller must then normalise as the training data did.
    """

    def __init__(
        self,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        scale: float = 1.0,
    ) -> None:
        self.known = mean is not None and std is not None
        self.mean = torch.tensor(list(mean or [0.0]), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std or [1.0]), dtype=torch.float32).view(-1, 1, 1)
        self.scale = float(scale)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> Preprocess:
        """From the artifact's ``preprocessing`` entry (``None``: unknown, the identity)."""
        if not spec:
            return cls(None, None)
        return cls(spec["mean"], spec["std"], float(spec.get("scale", 1.0)))

    def __call__(self, images: Any) -> Tensor:
        if not isinstance(images, (Tensor,)) and hasattr(images, "mode"):  # a PIL image
            from torchvision.transforms.functional import pil_to_tensor

            images = pil_to_tensor(images)
        x = torch.as_tensor(images).to(torch.float32)
        if not self.known:
            return x
        if x.dim() < 3 or x.shape[-3] != self.mean.shape[0]:
            raise CheckpointError(
                f"Expected raw images (..., {self.mean.shape[0]}, H, W), got shape "
                f"{tuple(x.shape)}: add the channel dimension (e.g. images.unsqueeze(1))."
            )
        if self.scale != 1.0:
            x = x / self.scale
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __repr__(self) -> str:
        if not self.known:
            return f"{type(self).__name__}(unknown: identity)"
        return (
            f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, "
            f"std={self.std.flatten().tolist()}, scale={self.scale})"
        )


def _normalizer(datamodule: Any) -> Any:
    source = getattr(datamodule, "source", None)  # a DeviceDataModule wraps the regular one
    if source is not None and hasattr(source, "normalization"):
        datamodule = source
    make = getattr(datamodule, "normalization", None)
    if make is None:
        return None, datamodule
    try:
        norm = make()
    except (NotImplementedError, TypeError):
        return None, datamodule
    return getattr(norm, "norm", norm), datamodule


def preprocessing_of(datamodule: Any) -> dict[str, Any] | None:
    """How ``datamodule`` maps a raw image to the model's input: ``{"mean", "std", "scale"}``.

    A datamodule may say so itself with an ``input_preprocessing()`` method returning that
    dict. Otherwise it is read from the package's datamodules' normaliser
    (:class:`~cskd_lightning.data.transforms.ToFloatNormalize`), with the scale multiplied by
    the datamodule's ``raw_scale`` (the factor its loader divides the raw pixels by first, e.g.
    16 for the digits). ``None`` when it cannot be told; call after ``setup`` (the digits
    compute their mean and std there).
    """
    own = getattr(datamodule, "input_preprocessing", None)
    if callable(own):
        return own()
    norm, holder = _normalizer(datamodule)
    if norm is None or not all(hasattr(norm, a) for a in ("mean", "std", "scale")):
        return None
    spec = {
        "mean": [float(v) for v in torch.as_tensor(norm.mean).flatten()],
        "std": [float(v) for v in torch.as_tensor(norm.std).flatten()],
        "scale": float(norm.scale) * float(getattr(holder, "raw_scale", 1.0)),
    }
    geometry = getattr(holder, "eval_geometry", lambda: None)()
    if geometry is not None:  # e.g. ImageNet's resize + centre crop: recorded, not applied
        spec["eval_geometry"] = repr(geometry)
    return spec


def class_names_of(datamodule: Any) -> list[str] | None:
    """The datamodule's class names (``classes``), or ``None`` when it has none."""
    for dm in (datamodule, getattr(datamodule, "source", None)):
        names = getattr(dm, "classes", None)
        if names:
            return [str(n) for n in names]
    return None


def input_shape_of(datamodule: Any) -> list[int] | None:
    """``[C, H, W]`` from the datamodule's ``in_channels`` and ``image_shape`` (or square
    ``image_size``), else ``None``."""
    channels = getattr(datamodule, "in_channels", 0)
    side = getattr(datamodule, "image_shape", None) or getattr(datamodule, "image_size", 0)
    if not channels or not side:
        return None
    if isinstance(side, (tuple, list)):
        return [int(channels), *map(int, side)]
    return [int(channels), int(side), int(side)]


# --------------------------------------------------------------------------- the artifact
def _plain(value: Any) -> Any:
    """``value`` as plain dicts / lists / str / numbers (what ``weights_only`` loads)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def model_spec(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"target", "kwargs"}`` from a model's (resolved) config, e.g. ``pair.student.model``:
    ``target`` is ``None`` for :func:`~cskd_lightning.models.create_model`."""
    target = model_config.get("_target_")
    kwargs = {k: v for k, v in model_config.items() if k not in _HYDRA_KEYS}
    return {
        "target": None if target in (None, CREATE_MODEL) else str(target),
        "kwargs": _plain(kwargs),
    }


def student_artifact(
    student: nn.Module,
    model: Mapping[str, Any],
    num_classes: int,
    datamodule: Any = None,
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``student.pt`` dict (see the module docstring) for ``student``.

    Args:
        student: the trained model (its ``state_dict`` is copied to the CPU).
        model: the model's config (``{"_target_": ..., "name": ..., ...}``) or a
            :func:`model_spec`.
        num_classes: the class count.
        datamodule: where the input shape, preprocessing and class names come from.
        run: what produced it (method, seed, test accuracy, ...).
    """
    spec = dict(model) if "kwargs" in model else model_spec(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
        "model": _plain(spec),
        "num_classes": int(num_classes),
        "input_shape": input_shape_of(datamodule) if datamodule is not None else None,
        "preprocessing": preprocessing_of(datamodule) if datamodule is not None else None,
        "class_names": class_names_of(datamodule) if datamodule is not None else None,
        "run": _plain(dict(run or {})),
    }


def save_student(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`student_artifact` ``(*args, **kwargs)`` to ``path``; return ``path``."""
    path = Path(path)
    save_atomically(student_artifact(*args, **kwargs), path)
    return path


def build_model(spec: Mapping[str, Any], trust: bool = False) -> nn.Module:
    """An untrained model from the artifact's ``model`` entry. A ``target`` is imported with
    :func:`~cskd_lightning.dotted_path.import_object`, whose error fits in the one line of a
    :class:`CheckpointError`. Unless ``trust``, the target must
    be an ``nn.Module`` class or a factory of the model zoo: a file that names any other
    callable (``subprocess.run``, ...) would run it, so it is refused."""
    kwargs = dict(spec.get("kwargs", {}))
    if spec.get("target") is None:
        from cskd_lightning.models import create_model

        if kwargs.get("weights") is not None:  # pretrained init: the file's weights replace it
            kwargs["weights"] = None

        return create_model(**kwargs)
    target = str(spec["target"])
    try:
        factory = import_object(target)
    except IMPORT_ERRORS as err:
        raise CheckpointError(
            f"The student's model factory {target!r} cannot be imported ({err}). Install or put "
            "on PYTHONPATH the package that defines it."
        ) from None
    if not trust and not _is_model_constructor(factory):
        raise CheckpointError(
            f"The student's model factory {target!r} is neither an nn.Module class nor a model "
            "of cskd_lightning.models, so it was not called: a file can name any function. If "
            "you trust the file, pass trust=True."
        )
    return factory(**kwargs)


def _is_model_constructor(factory: Any) -> bool:
    """An ``nn.Module`` subclass, or a factory registered in the model zoo."""
    if isinstance(factory, type):
        return issubclass(factory, nn.Module)
    from cskd_lightning.models import get_model_factory, list_models

    return any(get_model_factory(name) is factory for name in list_models())


class LoadedStudent(NamedTuple):
    """What :func:`load_student` returns; unpacks as ``model, preprocess, info = ...``."""

    model: nn.Module
    """The student, weights loaded, in eval mode: ``(B, C_in, H, W)`` -> logits ``(B, C)``."""
    preprocess: Preprocess
    """Raw images -> the model's input."""
    info: dict[str, Any]
    """Everything else in the file (``model``, ``num_classes``, ``input_shape``,
    ``preprocessing``, ``class_names``, ``run``)."""

    @torch.no_grad()
    def predict(self, images: Any) -> Tensor:
        """Class indices ``(B,)`` for raw images ``(B, C_in, H, W)``."""
        out = self.model(self.preprocess(images))
        return (out[0] if isinstance(out, (tuple, list)) else out).argmax(dim=-1)


def load_student(
    path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> LoadedStudent:
    """Read a ``student.pt`` written by ``cskd-train`` (with ``weights_only=True``).

    Returns ``(model, preprocess, info)``: the model rebuilt from its recorded constructor
    arguments with the weights loaded strictly, in eval mode on ``map_location``; the
    :class:`Preprocess` from raw images to its input; the rest of the file's record.

    ``trust``: let the file name any model factory, not only an ``nn.Module`` class or a
    model of the zoo (:func:`build_model`); calling it runs code the file chooses.

    Raises:
        CheckpointError: a file that is not a student artifact (e.g. the bare ``state_dict`` of
            an older run: rebuild the model with ``create_model`` and read it with
            :func:`~cskd_lightning.checkpoints.load_weights`), or weights that do not fit.
    """
    obj = read_checkpoint(path, trust_flag="trust=True")
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        what = "a bare state_dict" if _is_state_dict(obj) else "not a student artifact"
        raise CheckpointError(
            f"{path} is {what}: it does not say which model it is or how to preprocess its "
            "inputs (a student.pt written before the student artifact). Rebuild the model "
            "with cskd_lightning.models.create_model(<name>, num_classes=..., in_channels=...) "
            "and load it with cskd_lightning.checkpoints.load_weights(model, path)."
        )
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is a student artifact of format version {obj['format_version']}, newer than "
            f"this cskd-lightning reads ({FORMAT_VERSION}): upgrade cskd-lightning."
        )
    model = build_model(obj["model"], trust=trust)
    state = obj["state_dict"]
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(
            f"The weights in {path} do not fit the model it names ({obj['model']}):\n  {problems}"
        )
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    return LoadedStudent(model, Preprocess.from_dict(obj.get("preprocessing")), info)


# --------------------------------------------------------------------------- TorchScript, ONNX
EXPORT_FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}
"""The formats :func:`export_model` writes, and their file suffixes."""


class _Logits(nn.Module):
    """``model``'s logits alone (models may return ``(logits, features)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def example_batch(input_shape: Sequence[int], batch_size: int = 8, seed: int = 0) -> Tensor:
    """A reproducible batch ``(batch_size, *input_shape)`` of standard-normal model inputs (what
    normalised images look like)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(batch_size), *map(int, input_shape), generator=g)


def _onnx_modules() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (the torch.onnx exporter needs it)
    except ImportError as err:
        raise CheckpointError(
            f"ONNX export needs the onnx extra ({err.name} is not installed): "
            "pip install 'cskd-lightning[onnx]'."
        ) from None


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    input_shape: Sequence[int],
    opset: int | None = None,
) -> Path:
    """Write ``model`` (eval mode, on the CPU) to ``path`` as ``fmt`` (``"torchscript"``: a
    traced ``torch.jit`` module, read with ``torch.jit.load``; ``"onnx"``: input ``"input"``
    ``(B, *input_shape)`` with a dynamic batch axis, output ``"logits"`` ``(B, C)``)."""
    if fmt not in EXPORT_FORMATS:
        raise CheckpointError(
            f"Unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}.",
            key="format",
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Logits(model).cpu().eval()
    x = example_batch(input_shape, batch_size=2)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapped, x)
            traced.save(str(path))
        else:
            _onnx_modules()
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                wrapped,
                (x,),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    return path


def run_exported(path: str | Path, fmt: str, x: Tensor) -> Tensor:
    """The logits of the exported model in ``path`` on ``x`` (ONNX through onnxruntime)."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path), map_location="cpu")(x)
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(
            "Checking an ONNX export needs onnxruntime: pip install 'cskd-lightning[onnx]'."
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def check_export(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    input_shape: Sequence[int],
    batch_size: int = 8,
    atol: float = 1e-4,
) -> float:
    """Compare the exported model's logits with ``model``'s on a batch of
    :func:`example_batch` inputs (another batch size than the export's); return the largest
    absolute difference. Raises :class:`CheckpointError` above ``atol * (1 + max |logit|)``."""
    x = example_batch(input_shape, batch_size, seed=1)
    with torch.no_grad():
        expected = _Logits(model).cpu().eval()(x)
    got = run_exported(path, fmt, x)
    if got.shape != expected.shape:
        raise CheckpointError(
            f"The {fmt} export {path} gives logits {tuple(got.shape)}, the model "
            f"{tuple(expected.shape)}."
        )
    diff = float((got - expected).abs().max())
    bound = atol * (1.0 + float(expected.abs().max()))
    if not diff <= bound:
        raise CheckpointError(
            f"The {fmt} export {path} differs from the PyTorch model by up to {diff:.3g} on a "
            f"batch of {batch_size} (allowed {bound:.3g}): the model uses an operation the "
            "exporter does not translate faithfully."
        )
    return diff
