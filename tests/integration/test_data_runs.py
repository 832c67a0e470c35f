"""The datamodules under real Lightning fits and real processes: two-view batches through 1
and 2 (DDP) processes, the DataLoader stream's per-sample views across batch sizes, worker
processes and ranks, resuming at an epoch end, and a CNN trained on the real Fashion-MNIST."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from helpers import needs_fmnist, process_view, quiet_trainer
from torch import nn
from torch.utils.data import DataLoader

from cskd_lightning.data import DigitsDataModule, FashionMNISTDataModule
from cskd_lightning.data.loading import EpochSampler, tuple_collate
from cskd_lightning.models import create_model


class _TwoViewProbe(L.LightningModule):
    """Linear model on digits that checks the per-process two-view batches it receives."""

    def __init__(self, per_process_batch: int, distributed: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.per_process_batch = per_process_batch
        self.distributed = distributed

    def training_step(self, batch, _):
        assert isinstance(batch, tuple) and isinstance(batch[0], tuple)
        (xw, xs), y = batch
        assert xw.shape == xs.shape == (self.per_process_batch, 1, 8, 8)
        assert y.shape == (self.per_process_batch,) and y.dtype == torch.int64
        # the datamodule's own sampler, kept by Lightning under DDP (not swapped for its
        # DistributedSampler), one shard per process
        sampler = self.trainer.train_dataloader.sampler
        assert isinstance(sampler, EpochSampler)
        assert sampler.num_replicas == (2 if self.distributed else 1)
        assert sampler.rank == self.trainer.global_rank
        return nn.functional.cross_entropy(self.lin(xw.flatten(1)), y)

    def validation_step(self, batch, _):
        x, y = batch  # single view
        assert x.ndim == 4 and x.shape[0] <= 50

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _probe_trainer(**kwargs) -> L.Trainer:
    return quiet_trainer(max_steps=3, limit_val_batches=2, **kwargs)


def test_two_view_batches_through_lightning():
    dm = DigitsDataModule(batch_size=64, eval_batch_size=50, two_view=True)
    _probe_trainer().fit(_TwoViewProbe(64, distributed=False), datamodule=dm)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_two_processes_get_half_batches():
    dm = DigitsDataModule(batch_size=64, eval_batch_size=100, two_view=True)
    # fork: the children leave through os._exit, so no C++ static teardown can abort them
    trainer = _probe_trainer(devices=2, strategy="ddp_fork")
    # the probe's assertions run in the spawned processes; failures propagate to fit()
    trainer.fit(_TwoViewProbe(32, distributed=True), datamodule=dm)


def _views_by_sample(loader, epoch: int) -> dict[int, tuple]:
    """``{i: (weak, strong, label)}`` of the training samples a two-view loader yields in
    ``epoch``, matched to their indices through the loader's sampler (its order)."""
    loader.sampler.set_epoch(epoch)
    keys = list(loader.sampler)
    views = [(xw[j], xs[j], int(y[j])) for (xw, xs), y in loader for j in range(len(y))]
    assert all(e == epoch for e, _ in keys[: len(views)])
    return {i: v for (_, i), v in zip(keys, views, strict=False)}


def _digits_stream(batch_size: int, num_workers: int = 0, **kwargs) -> DigitsDataModule:
    # val_split=0: the training set does not depend on the seed (a held-out split would).
    return DigitsDataModule(
        batch_size=batch_size,
        num_workers=num_workers,
        val_split=0,
        augment=True,
        two_view=True,
        **kwargs,
    )


def test_training_views_of_a_sample_ignore_batch_size_workers_order_and_rank():
    """The DataLoader path: the views of training sample i in epoch e (random crop; RandAugment
    and Cutout for the strong one) depend only on (seed, e, i)."""
    one = _views_by_sample(_digits_stream(16).train_dataloader(), epoch=2)
    workers = _views_by_sample(_digits_stream(64, num_workers=2).train_dataloader(), epoch=2)
    ranks = {}
    for rank in (0, 1):  # two processes: other shards, in another order
        dm = _digits_stream(64)
        dm.trainer = process_view(rank, world=2)
        ranks.update(_views_by_sample(dm.train_dataloader(), epoch=2))
    dm = _digits_stream(64)
    dm.setup("fit")
    backwards = [(2, i) for i in reversed(range(len(dm.train_set)))]
    reverse = DataLoader(
        dm.train_set, batch_size=50, sampler=backwards, num_workers=2, collate_fn=tuple_collate
    )
    (xw, xs), y = next(iter(reverse))
    reversed_views = {i: (xw[j], xs[j], int(y[j])) for j, (_, i) in enumerate(backwards[:50])}
    # (each loader drops its last partial batch: most samples are in all three)
    assert len(set(one) & set(workers) & set(ranks)) > 0.95 * len(dm.train_set)
    for other in (workers, ranks, reversed_views):
        for i in set(one) & set(other):
            assert torch.equal(one[i][0], other[i][0]) and torch.equal(one[i][1], other[i][1]), i
            assert one[i][2] == other[i][2]
    # ...and the views are random: another epoch or another seed changes most of them.
    for other in (
        _views_by_sample(_digits_stream(64).train_dataloader(), epoch=3),
        _views_by_sample(_digits_stream(64, seed=1).train_dataloader(), epoch=2),
    ):
        changed = [not torch.equal(one[i][1], other[i][1]) for i in set(one) & set(other)]
        assert np.mean(changed) > 0.9


def _fit(
    root, epochs: int, ckpt=None, callbacks=(), dropout: float = 0.0, num_workers: int = 0
) -> nn.Module:
    """A few CE epochs of the digits student on the two-view DataLoader stream (the weak view)."""
    from cskd_lightning import CELoss, DistillationModule

    torch.manual_seed(0)
    student = create_model("digits_student", num_classes=10, in_channels=1, dropout=dropout)
    trainer = quiet_trainer(
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=0,
        deterministic=True,
        default_root_dir=root,
        callbacks=list(callbacks),
    )
    module = DistillationModule(student, None, CELoss())
    trainer.fit(module, datamodule=_digits_stream(64, num_workers), ckpt_path=ckpt)
    if ckpt is None:
        trainer.save_checkpoint(root / "end.ckpt")
    return student


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in a.state_dict().items())


def test_resume_at_an_epoch_end_needs_no_data_state(tmp_path):
    # Worker processes load (and prefetch) before Lightning's first set_epoch: the resumed
    # loader must start at the restored epoch by itself.
    straight = _fit(tmp_path / "a", epochs=3, num_workers=2)
    _fit(tmp_path / "b", epochs=1, num_workers=2)
    checkpoint = torch.load(tmp_path / "b" / "end.ckpt", weights_only=True)
    assert not [key for key in checkpoint if "DataModule" in key]  # nothing of the stream
    # A checkpoint of an older version holds the loader's state under the class name:
    # Lightning hands it to load_state_dict, which ignores it.
    checkpoint["DigitsDataModule"] = {"train_loader": {"format": 1, "sampler_epoch": 7}}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    for path in ("end.ckpt", "../old.ckpt"):
        resumed = _fit(tmp_path / "b", 3, str(tmp_path / "b" / path), num_workers=2)
        assert _same_weights(straight, resumed), path


def test_epoch_seed_makes_dropout_resume_exactly(tmp_path):
    """Dropout draws from the global generator, whose state no checkpoint holds: a resumed run
    repeats the uninterrupted one's dropout only when EpochSeed reseeds it every epoch."""
    from cskd_lightning.callbacks import EpochSeed

    for seeded in (True, False):
        callbacks = [EpochSeed(0)] if seeded else []
        root = tmp_path / str(seeded)
        straight = _fit(root / "a", 3, callbacks=callbacks, dropout=0.5)
        _fit(root / "b", 1, callbacks=callbacks, dropout=0.5)
        resumed = _fit(root / "b", 3, str(root / "b" / "end.ckpt"), callbacks, dropout=0.5)
        assert _same_weights(straight, resumed) == seeded


@needs_fmnist
@pytest.mark.long
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no")
def test_fmnist_lightning_training_beats_chance():
    class TinyCNN(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(32 * 7 * 7, 10),
            )

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def test_step(self, batch, _):
            x, y = batch
            acc = (self.net(x).argmax(1) == y).float().mean()
            self.log("test_acc", acc, batch_size=len(y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    L.seed_everything(0, verbose=False)
    dm = FashionMNISTDataModule(batch_size=128, eval_batch_size=500)
    trainer = quiet_trainer(max_steps=150, limit_val_batches=0)
    model = TinyCNN()
    trainer.fit(model, datamodule=dm)
    assert dm.per_process_batch_size == 128
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert result["test_acc"] > 0.6, result
