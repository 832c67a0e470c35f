"""Counter-based random numbers per sample: the draws of sample ``i`` in epoch ``e`` are a pure
function of ``(seed, e, i, stream, k)``, computed on the device by batched integer hashing.

A ``torch.Generator`` hands out numbers in call order, so what sample ``i`` gets depends on
where it falls in the batch, on the batch size and on the process that draws it. Here every
number is a hash instead (a counter-based generator in the spirit of Philox / Random123):

    key        = h(h(h(seed_lo) ^ seed_hi) ^ e)                      (host, Python ints)
    sample_i   = h(h(i ^ key))                                       (device, (B,))
    bits(i, s, k) = h((h(sample_i ^ h(key ^ h(s + phi))) + k * phi) mod 2^32)   (device, (B, K))

with ``h`` the 32-bit ``lowbias32`` finaliser (``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15;
x *= 0x846ca68b; x ^= x >> 16``) and ``phi = 0x9e3779b9``. Values are kept in ``int64``
tensors below ``2^32``; the 32-bit products are split in 16-bit halves so that no ``int64``
product overflows (the same integers on every device and backend). ``s`` is a *stream* (one
per use: the weak crop, the strong crop, the RandAugment choices, the cutout box) and ``k``
the draw within the stream. Nothing is sent to or read from the host: the batch's augmentation
stays a few batched tensor ops with no host sync.

Then the augmentation of a sample is the same whatever the batch size, the sample order or the
number of processes, which a teacher-logit cache needs (:mod:`cskd_lightning.logit_cache`):
the logits stored for ``(e, i)`` are exactly those of the view the student sees.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SampleRandom", "hash32", "hash32_int", "sample_seed"]

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
_M1, _M2 = 0x7FEB352D, 0x846CA68B


def hash32_int(x: int) -> int:
    """``lowbias32`` of a Python int (taken mod ``2^32``); the host twin of :func:`hash32`."""
    x &= MASK32
    x ^= x >> 16
    x = (x * _M1) & MASK32
    x ^= x >> 15
    x = (x * _M2) & MASK32
    x ^= x >> 16
    return x


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2^32`` for ``int64`` ``x`` in ``[0, 2^32)``, with no ``int64`` overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def hash32(x: Tensor) -> Tensor:
    """``lowbias32`` elementwise on an ``int64`` tensor of values in ``[0, 2^32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def epoch_key(seed: int, epoch: int) -> int:
    """The 32-bit key of ``(seed, epoch)`` (any Python ints; ``seed`` taken mod ``2^64``)."""
    seed &= (1 << 64) - 1
    return hash32_int(hash32_int(hash32_int(seed & MASK32) ^ (seed >> 32)) ^ (epoch & MASK32))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed that depends only on ``(seed, epoch, index)``: the seed of sample
    ``index``'s augmentation in ``epoch`` on the DataLoader path
    (:class:`~cskd_lightning.data.base.SubsetWithTransform`).

    ``a = h(h(index ^ key))`` (the per-sample hash of :class:`SampleRandom`, ``key =
    epoch_key(seed, epoch)``) and ``b = h(a ^ h(key ^ phi))``; the seed is ``a * 2^32 + b``.
    """
    key = epoch_key(seed, epoch)
    a = hash32_int(hash32_int((int(index) & MASK32) ^ key))
    return (a << 32) | hash32_int(a ^ hash32_int(key ^ GOLDEN))


class SampleRandom:
    """The random numbers of a batch of samples, by sample index.

    Args:
        seed: the augmentation seed.
        epoch: the epoch.
        index: ``int64`` ``(B,)`` sample indices (on the device the numbers are wanted on);
            each must be in ``[0, 2^32)``.

    ``bits(stream, k)`` -> ``int64`` ``(B, k)`` in ``[0, 2^32)``; ``uniform`` -> ``float32``
    ``(B, k)`` in ``[0, 1)`` (24-bit resolution); ``randint(low, high, stream, k)`` -> ``int64``
    ``(B, k)`` in ``[low, high)`` (``floor(bits * (high - low) / 2^32)``, bias below
    ``(high - low) / 2^32``). Row ``b`` depends only on ``(seed, epoch, index[b], stream, k)``.
    """

    def __init__(self, seed: int, epoch: int, index: Tensor) -> None:
        self.seed, self.epoch = int(seed), int(epoch)
        self.index = index
        self.key = epoch_key(self.seed, self.epoch)
        self._sample: Tensor | None = None
        self._drawn: dict[tuple, Tensor] = {}
        self._rows_of: tuple[SampleRandom, slice] | None = None

    def rows(self, part: slice, index: Tensor | None = None) -> SampleRandom:
        """The numbers of the samples ``index[part]``, cut from this object's.

        Each kind of draw (``bits``/``uniform``/``randint`` of a stream and count) is computed
        once for all of this object's samples, at the first ask, and every ``rows`` object
        takes its slice of it: an epoch's loader draws all its numbers at the epoch's first
        batch, and a batch costs one slice per draw. The numbers are the same as a
        ``SampleRandom`` of ``index[part]`` alone (each row depends on its sample only).
        ``index``: ``self.index[part]`` if the caller has it already.
        """
        if self._rows_of is not None:
            raise ValueError("rows() of a rows() object: take the rows of the whole set")
        child = SampleRandom(self.seed, self.epoch, self.index[part] if index is None else index)
        child._rows_of = (self, part)
        return child

    def _draw(self, kind: str, *args: int) -> Tensor | None:
        """A ``rows`` object's slice of its source's draw (``None`` for a source itself)."""
        if self._rows_of is None:
            return None
        source, part = self._rows_of
        key = (kind, *args)
        full = source._drawn.get(key)
        if full is None:
            full = source._drawn[key] = getattr(source, kind)(*args)
        return full[part]

    @classmethod
    def from_generator(cls, generator: torch.Generator, batch: int) -> SampleRandom:
        """Numbers for samples ``0..batch-1`` under a seed drawn from ``generator`` (the
        kernels of :mod:`cskd_lightning.data.batch_augment` accept a plain generator this way; one
        host read of the drawn seed)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        index = torch.arange(batch, device=generator.device)
        return cls(seed, 0, index)

    @property
    def batch(self) -> int:
        return int(self.index.shape[0])

    @property
    def device(self) -> torch.device:
        return self.index.device

    def _per_sample(self) -> Tensor:
        if self._sample is None:
            self._sample = hash32(hash32((self.index.to(torch.int64) & MASK32) ^ self.key))
        return self._sample

    def bits(self, stream: int, count: int = 1) -> Tensor:
        """``int64`` ``(B, count)``: uniform 32-bit integers of ``stream``."""
        drawn = self._draw("bits", stream, count)
        if drawn is not None:
            return drawn
        stream_key = hash32_int(self.key ^ hash32_int(stream + GOLDEN))
        mixed = hash32(self._per_sample() ^ stream_key)  # (B,)
        counter = torch.arange(count, device=self.device, dtype=torch.int64) * GOLDEN
        return hash32((mixed[:, None] + counter[None, :]) & MASK32)

    def uniform(self, stream: int, count: int = 1) -> Tensor:
        """``float32`` ``(B, count)`` in ``[0, 1)``."""
        drawn = self._draw("uniform", stream, count)
        if drawn is not None:
            return drawn
        return (self.bits(stream, count) >> 8).to(torch.float32) * (1.0 / (1 << 24))

    def randint(self, low: int, high: int, stream: int, count: int = 1) -> Tensor:
        """``int64`` ``(B, count)`` in ``[low, high)``."""
        drawn = self._draw("randint", low, high, stream, count)
        if drawn is not None:
            return drawn
        span = int(high) - int(low)
        if not 0 < span < 2**31:
            raise ValueError(f"need 0 < high - low < 2^31, got [{low}, {high})")
        return low + ((self.bits(stream, count) * span) >> 32)
