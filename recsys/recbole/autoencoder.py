"""RecBole's autoencoder recommenders (MultiDAE, MultiVAE, CDAE, RecVAE) as teacher and student,
and the Pan et al. 2019 method (``aekd``): the teacher's reconstruction of each batch user's
whole item row is the soft target of the student's reconstruction.

RecBole's autoencoders are ``ModelType.GENERAL`` models that read a user's whole interaction row
(``get_rating_matrix``) and train on batches of *users* (RecBole's ``UserDataLoader``, chosen by
model name in ``recbole.data.utils.get_dataloader``). :data:`AUTOENCODERS` is the table, keyed by
model class name, of what the plugin needs to know about each:

* ``logits``: ``(model, users, rating_matrix) -> [B, n_items]`` pre-activation reconstruction
  (what the model's own likelihood is computed on; dropout / sampling follow ``model.training``);
* ``form``: the soft-target divergence matching the model's likelihood (``"softmax"``:
  multinomial; ``"bce"``: Bernoulli);
* ``student``: whether it can be a student here (RecVAE trains with RecBole's alternating
  ``RecVAETrainer``, whose ``calculate_loss`` takes an ``encoder_flag``: teacher only);
* ``config``: RecBole settings its training needs (``train_neg_sample_args: None``: a user batch
  has no sampled negatives, as in RecBole's own test configs for these models).

A distillation run with an autoencoder student (:func:`autoencoder_path`, selected in
:data:`recsys.recbole.runner.STUDENT_PATHS`) trains the wrapper on RecBole's ``UserDataLoader``
(one row per user and epoch) instead of the per-interaction loader.

Memory: the ``aekd`` loss holds ``batch_users x n_items`` scores for the student and the teacher
(``train_batch_size`` users per batch; ml-100k: 2,048 x 1,683 floats = 14 MB). The teacher side
is computed in user chunks of ``softlabel_chunk_size``; for very large catalogues lower
``train_batch_size``.

Example:
    >>> from recsys.recbole import run_distillation
    >>> run_distillation(teacher="MultiVAE", student="MultiDAE", method="aekd",
    ...                  student_config={"mlp_hidden_size": [100]})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from recsys.losses.aekd import AEKD, AEKD_FORMS
from recsys.recbole.context import DistillContext
from recsys.recbole.methods import _LossAdapter, register

__all__ = ["AutoEncoderSpec", "AUTOENCODERS", "reconstruction_logits", "autoencoder_config",
           "autoencoder_path", "prepare_user_data", "AEKDAdapter"]


@dataclass(frozen=True)
class AutoEncoderSpec:
    """What the plugin needs to know about one autoencoder (see the module docstring)."""

    logits: Callable[[nn.Module, Tensor, Tensor], Tensor]
    form: str = "softmax"
    student: bool = True
    config: dict[str, Any] = field(default_factory=lambda: {"train_neg_sample_args": None})


#: model class name -> :class:`AutoEncoderSpec`
AUTOENCODERS: dict[str, AutoEncoderSpec] = {
    "MultiDAE": AutoEncoderSpec(lambda m, u, r: m.forward(r)),
    "MultiVAE": AutoEncoderSpec(lambda m, u, r: m.forward(r)[0]),
    "CDAE": AutoEncoderSpec(lambda m, u, r: m.forward(r, u), form="bce"),
    "RecVAE": AutoEncoderSpec(lambda m, u, r: m.forward(r, m.dropout_prob)[0], student=False),
}


def reconstruction_logits(ctx: DistillContext, model: nn.Module, users: Tensor) -> Tensor:
    """``[len(users), n_items]`` reconstruction logits of an autoencoder (:data:`AUTOENCODERS`),
    or the full-sort scores of any other model (``DistillContext.full_scores``). Gradients and
    dropout follow the caller (``torch.no_grad`` / ``model.training``)."""
    spec = AUTOENCODERS.get(type(model).__name__)
    if spec is None:
        return ctx.full_scores(model, users)
    return spec.logits(model, users, model.get_rating_matrix(users))


def autoencoder_config(student: str, student_config: dict[str, Any],
                       config_dict: dict[str, Any]) -> dict[str, Any]:
    """``config_dict`` plus the student's :attr:`AutoEncoderSpec.config` (user settings win).

    Raises:
        ValueError: a teacher-only autoencoder (RecVAE) as student.
    """
    spec = AUTOENCODERS[student]
    if not spec.student:
        ok = ", ".join(n for n, s in AUTOENCODERS.items() if s.student)
        raise ValueError(f"{student} trains with RecBole's alternating trainer (encoder and "
                         "decoder steps, calculate_loss(encoder_flag)): use it as a teacher; "
                         f"students may be {ok} or any general recommender")
    return {**spec.config, **config_dict}


@contextlib.contextmanager
def _model_name(config: Any, name: str) -> Iterator[None]:
    """``config["model"] = name`` for the duration (RecBole picks data loaders by it)."""
    saved = config["model"]
    config["model"] = name
    try:
        yield
    finally:
        config["model"] = saved


def prepare_user_data(config: Any) -> tuple[Any, Any, Any]:
    """:func:`recsys.recbole.runner.prepare_data` with the student's own RecBole data loaders:
    ``UserDataLoader`` (every user once per epoch, shuffled) for an autoencoder student."""
    from recsys.recbole.runner import prepare_data

    with _model_name(config, str(config["student"])):
        return prepare_data(config)


def autoencoder_path() -> Any:
    """The :class:`~recsys.recbole.runner.DistillPath` of autoencoder students: the general
    methods and wrapper, user-row batches (:func:`prepare_user_data`) and
    :func:`autoencoder_config`."""
    from recsys.recbole.methods import METHODS
    from recsys.recbole.model import distill_model_class
    from recsys.recbole.runner import DistillPath, general_teacher_types

    return DistillPath(METHODS, distill_model_class, general_teacher_types(),
                       config_hook=autoencoder_config, prepare=prepare_user_data)


@register("aekd")
class AEKDAdapter(_LossAdapter):
    """Pan et al. 2019: the student's reconstruction of each batch user's row fits the
    teacher's (:func:`~recsys.losses.aekd.aekd_loss` over every item but RecBole's padding item
    0). ``form="auto"`` (default) takes the student's likelihood from :data:`AUTOENCODERS`
    (``"softmax"`` for MultiDAE / MultiVAE and non-autoencoder students, ``"bce"`` for CDAE).
    Works with any teacher and student that score all items (an autoencoder student gets
    user-row batches; a BPR student gets its usual per-interaction batches, whose unique users
    are distilled).
    """

    loss_cls = AEKD
    extra_defaults = {"form": "auto"}

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        params = dict(params)
        if params.get("form", "auto") == "auto":
            spec = AUTOENCODERS.get(type(ctx.student).__name__)
            params["form"] = spec.form if spec is not None else "softmax"
        if params["form"] not in AEKD_FORMS:
            raise ValueError(f"aekd form must be 'auto' or one of {AEKD_FORMS}, got "
                             f"{params['form']!r}")
        super().__init__(ctx, params)

    @torch.no_grad()
    def teacher_logits(self, users: Tensor) -> Tensor:
        """``[B, n_items]`` the frozen teacher's reconstruction, in user chunks."""
        cfg = self.ctx.config
        chunk = int((cfg["softlabel_chunk_size"] if cfg is not None else None) or 1024)
        return torch.cat([reconstruction_logits(self.ctx, self.ctx.teacher, users[s:s + chunk])
                          for s in range(0, users.numel(), chunk)])

    def forward(self, interaction: Any) -> Tensor:
        users = self.ctx.batch_users(interaction)
        student = reconstruction_logits(self.ctx, self.ctx.student, users)
        teacher = self.teacher_logits(users)
        return self.loss(student[:, 1:], teacher[:, 1:])
