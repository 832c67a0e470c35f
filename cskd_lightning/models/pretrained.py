"""A registered model with its weights loaded from a file, as one ``nn.Module`` class.

``create_model`` and ``load_weights`` are functions, which a LightningCLI / jsonargparse YAML
cannot call in sequence; :class:`Pretrained` is a class, so a teacher can be given as::

    teacher:
      class_path: cskd_lightning.models.Pretrained
      init_args: {name: digits_teacher, path: teacher.ckpt, num_classes: 10, in_channels: 1}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .registry import create_model


class Pretrained(nn.Module):
    """``create_model(name, num_classes, in_channels, **model_kwargs)`` with the weights of
    ``path`` loaded strictly (:func:`cskd_lightning.checkpoints.load_weights`: a Lightning
    ``.ckpt``, a plain ``state_dict``, a reference-zoo file or a cached teacher; read with
    ``torch.load(weights_only=True)`` unless ``trust_checkpoint``).

    Args:
        name: a registered model name (``cskd_lightning.models.list_models()``).
        path: the weights file.
        num_classes: the classifier's outputs ``C``.
        in_channels: the input images' channels.
        trust_checkpoint: allow full unpickling of ``path`` (can run code).
        model_kwargs: further arguments of the model factory.

    Shapes: ``forward`` maps ``(B, in_channels, H, W)`` to what the model returns (logits
    ``(B, C)``). The model is ``self.model``; ``self.num_classes`` is ``C``.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        num_classes: int,
        in_channels: int = 3,
        trust_checkpoint: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from cskd_lightning.checkpoints import load_weights

        super().__init__()
        self.name = name
        self.path = str(path)
        self.num_classes = int(num_classes)
        self.model = create_model(
            name, num_classes=num_classes, in_channels=in_channels, **(model_kwargs or {})
        )
        load_weights(self.model, path, trust_checkpoint, "Pretrained(trust_checkpoint=True)")

    def forward(self, x: Tensor) -> Any:
        return self.model(x)
