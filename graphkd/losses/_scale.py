r"""Exact power-of-two rescaling of features for the scale-invariant losses.

SP, AT, PKT, GKD, GSP (cosine kernels) and MHGD normalise rows (or maps) before comparing
them, so their value does not depend on the features' scale. Computed naively it does: a row
norm squares the entries, which overflows float32 at ``|x| ~ 1e19`` (``~1e10`` for SP's
``F F^T`` rows), the norm becomes ``inf`` and every relation silently becomes 0 (issue 11
follow-up: SP and AT returned exactly 0 at ``1e12``; PKT, GKD, GSP and MHGD at ``1e30``).

:func:`rescale_pow2` divides a tensor by ``2**e`` with ``2**(e-1) <= max|x| < 2**e``, a power
of two, which is exact in binary floating point: the mantissas, hence every rounding of the
computation after it, are unchanged, and the gradient is exactly the chain rule's. It only
rescales when ``max|x| >= 2**above`` (default ``2**16``), so features of ordinary size are used
as given and their losses and gradients are bit-for-bit the old ones (the factor is exactly
1). The factor is computed on the device (``torch.frexp``, no host synchronisation) and is a
constant for autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RESCALE_ABOVE", "rescale_pow2"]

#: Features whose largest ``|x|`` is below ``2**RESCALE_ABOVE`` are left unscaled.
RESCALE_ABOVE = 16


def rescale_pow2(x: Tensor, *, above: int = RESCALE_ABOVE) -> Tensor:
    r"""``x / 2**e`` with ``e = floor(log2 max|x|) + 1`` when ``max|x| >= 2**above``, else ``x``.

    After rescaling the largest ``|x|`` lies in ``[0.5, 1)``. Only for computations that are
    invariant to a positive scale of ``x`` (row / map normalisations): they then give the
    same value as on ``x``, without overflowing. One reduction and a few scalar ops on the
    device, no host synchronisation; ``x * 1`` (bit-identical values and gradients) below the
    threshold.

    Args:
        x: a floating tensor (finite).
        above: rescale only when ``max|x| >= 2**above``.

    Example:
        >>> rescale_pow2(torch.tensor([3e30, -1e30])).abs().max() < 1
        tensor(True)
    """
    with torch.no_grad():
        m = x.detach().abs().amax() if x.numel() else x.new_zeros(())
        mant, e = torch.frexp(m)  # m = mant * 2**e, mant in [0.5, 1) (0 for m == 0)
        # mant / m is exactly 2**-e (a correctly rounded quotient that is representable)
        factor = torch.where(e > above, mant / m, torch.ones_like(m))
    return x * factor
