"""A relation loss defined outside the package, as a user would (imported by the CLI test)."""

import torch

from graphkd import DistillLoss, register


@register("ext_gram")
class ExternalGram(DistillLoss):
    """MSE between the row-normalised Gram matrices of the batch (an SP-like relation loss)."""

    level = "batch"
    global_batch = True

    def forward(self, f_s, f_t):
        g_s = torch.nn.functional.normalize(f_s @ f_s.T, dim=1)
        g_t = torch.nn.functional.normalize(f_t @ f_t.T, dim=1)
        return (g_s - g_t).pow(2).mean()
