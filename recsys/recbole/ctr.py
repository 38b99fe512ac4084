r"""CTR distillation with RecBole's context-aware models (FM, DeepFM, WideDeep, DCN, xDeepFM,
AutoInt, ...): three methods of the survey's Table 7, as RecBole models.

Each method is a RecBole model class (``ModelType.CONTEXT``, pointwise labels) registered by
name in :data:`CTR_METHODS`; it holds the real RecBole networks, returns its training loss from
``calculate_loss`` and serves the *student* from ``predict`` (RecBole's evaluator then reports
AUC / LogLoss of the student). ``serve`` switches ``predict`` to another network of the model
(:attr:`CTRDistillModel.servable`: the booster, the teacher, the ensemble) to evaluate it on the
same data. Losses are :mod:`recsys.losses.ctr`.

========================  ==========================================================================
name                      training loss (per batch; ``s`` student logit, ``y`` label)
========================  ==========================================================================
``none``                  the student's own RecBole loss (optionally on a subset of the fields)
``rocket``                Rocket Launching (Zhou et al., AAAI 2018): ``L_light + L_booster +
                          hint_weight * mean (s - sg(z))^2``; booster ``z`` and light net share
                          their feature-embedding tables; ``sg``: the hint's gradient is blocked
                          from the booster (it still reaches the shared embeddings through ``s``)
``pfd``                   Privileged Features Distillation (Xu et al., NeurIPS 2020), offline: a
                          frozen teacher trained on every field, the student without the
                          ``privileged_fields``: ``(1 - w) L_student + w * BCE(sigmoid(t/T), s/T)``
``pfd_sync``              PFD, synchronous: the teacher trained alongside, ``L_teacher +
                          (1 - w) L_student + w * BCE(sigmoid(sg(t)/T), s/T)``
``ensemble_kd``           Ensembled CTR teachers (Zhu et al., CIKM 2020): frozen heterogeneous
                          teachers ``z_k``, per-sample gate ``a(x) = softmax(W h(x) + b)``
                          (``ensemble="gated"``; ``"uniform"``: ``a = 1/K``), ensemble logit
                          ``z = sum_k a_k z_k``: ``L_gate = BCE(y, z)`` (gate only) +
                          ``L_student + soft_weight * BCE(sigmoid(sg(z)/T), s/T) +
                          hint_weight * sum_k sg(a_k) mean (R_k e_S - e_k)^2``
========================  ==========================================================================

Privileged features (PFD, documented choice for MovieLens): ``privileged_fields`` defaults to
``["user_id", "zip_code"]`` -- the user's *identity* (its id embedding, i.e. its personal
history, and the zip code, which on ml-100k nearly identifies a user: 795 codes for 943 users).
A serving system facing logged-out / anonymous traffic, or not allowed to use per-user
identifiers at serving time, has only the coarse profile (age, gender, occupation) and the item
fields; the teacher sees everything during training. The student's network is built on a view of
the dataset without those fields (so it has no embedding for them) and is called with an
interaction holding only its own fields (:func:`restrict`), so it cannot read them.

Hint of ``ensemble_kd`` (adapted): the paper's hint matches an intermediate layer of the teacher
and of the student through a regressor. The teachers here are heterogeneous RecBole models with
no common hidden layer, so the hint is taken at the one layer every context-aware model has: its
field embeddings ``e = concat_embed_input_fields(x)`` flattened (``[B, F * d]``), one trainable
regressor ``R_k`` per teacher, weighted by the (detached) gate.

Example:
    >>> from recsys.recbole import run_distillation
    >>> res = run_distillation(teacher="DCN", student="WideDeep", method="rocket",
    ...                        dataset="ml-100k")  # doctest: +SKIP
    >>> res["test_result"]["auc"], res["served"]["booster"]["auc"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType
from torch import Tensor, nn

from graphkd.registry import Registry
from recsys.losses.ctr import logit_hint, soft_label_bce
from recsys.recbole.zoo import build_recbole_model, load_model

__all__ = ["CTR_METHODS", "register_ctr", "ctr_method_class", "CTRDistillModel", "CTRAlone",
           "RocketLaunching", "PFDOffline", "PFDSync", "EnsembleKD", "TeacherGate",
           "FieldView", "restrict", "loss_and_logits", "share_embeddings", "field_embeddings",
           "EMBEDDING_TABLES", "DEFAULT_PRIVILEGED"]

#: name -> CTR distillation model class
CTR_METHODS: Registry[type[CTRDistillModel]] = Registry("CTR distillation method")
register_ctr = CTR_METHODS.register

#: the feature-embedding tables of RecBole's ``ContextRecommender`` (shared by ``rocket``)
EMBEDDING_TABLES = ("token_embedding_table", "token_seq_embedding_table",
                    "float_embedding_table", "float_seq_embedding_table")
#: the field lists those tables are built for (must be equal to share them)
_FIELD_LISTS = ("token_field_names", "token_seq_field_names", "float_field_names",
                "float_seq_field_names")

#: PFD's default privileged fields on MovieLens (see the module docstring)
DEFAULT_PRIVILEGED = ("user_id", "zip_code")


def ctr_method_class(name: str) -> type[CTRDistillModel]:
    """The registered CTR method class ``name`` (error lists the valid names)."""
    return CTR_METHODS.get(name)


# ============================================================================ helpers
class FieldView:
    """A read-only view of a RecBole ``Dataset`` that hides some fields from ``fields()``.

    A context-aware model built on the view has no embedding for the hidden fields (RecBole's
    ``ContextRecommender`` and ``FMFirstOrderLinear`` list their inputs with
    ``dataset.fields(...)``); everything else is the dataset's.

    Args:
        dataset: the training dataset.
        hidden: field names to hide (each must be a field of ``dataset``).

    Raises:
        ValueError: a hidden name is not a field of the dataset (one line naming it and the
            loaded fields).

    Example:
        >>> view = FieldView(train_data.dataset, ["user_id", "zip_code"])  # doctest: +SKIP
        >>> "user_id" in view.fields()  # doctest: +SKIP
        False
    """

    def __init__(self, dataset: Any, hidden: Iterable[str]) -> None:
        self._dataset = dataset
        self.hidden = frozenset(hidden)
        unknown = sorted(self.hidden - set(dataset.fields()))
        if unknown:
            raise ValueError(f"privileged/hidden field(s) {unknown} are not fields of dataset "
                             f"{dataset.dataset_name!r} (loaded: {sorted(dataset.fields())}); "
                             "load them with load_col or choose others")

    def fields(self, ftype: Any = None, source: Any = None) -> list[str]:
        return [f for f in self._dataset.fields(ftype, source) if f not in self.hidden]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)


def restrict(interaction: Any, keep: Iterable[str]) -> Interaction:
    """A new ``Interaction`` with only the fields in ``keep`` (those present)."""
    data = interaction.interaction
    return Interaction({k: data[k] for k in keep if k in data})


def loss_and_logits(model: nn.Module, interaction: Any) -> tuple[Tensor, Tensor]:
    """``(own loss, logits [B])`` of a RecBole context-aware model in one forward pass.

    The loss is the model's own ``calculate_loss`` (its BCE plus any regularisation it adds, e.g.
    DCN's and xDeepFM's L2 terms); the logits are what its ``forward`` returned inside it
    (captured by a per-instance wrapper, so the network runs once).
    """
    captured: list[Tensor] = []
    forward = model.forward

    def capture(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        captured.append(out)
        return out

    own = vars(model).get("forward")  # an instance attribute set by someone else: kept
    model.forward = capture  # instance attribute: shadows the class's forward
    try:
        loss = model.calculate_loss(interaction)
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own
    if isinstance(loss, tuple):
        loss = sum(loss)
    logits = captured[0] if captured else model(interaction)
    return loss, logits.reshape(-1)


def field_embeddings(model: nn.Module, interaction: Any) -> Tensor:
    """``[B, F * d]`` the model's field embeddings (``concat_embed_input_fields``), flattened."""
    emb = model.concat_embed_input_fields(interaction)
    return emb.reshape(emb.shape[0], -1)


def share_embeddings(source: nn.Module, target: nn.Module, *, first_order: bool = False,
                     names: tuple[str, str] = ("booster", "light net")) -> list[str]:
    """Make ``target`` use ``source``'s feature-embedding tables (the same modules).

    Args:
        source, target: RecBole context-aware models built on the same fields.
        first_order: also share ``first_order_linear`` (the per-feature bias "embedding").
        names: how the two are called in errors.

    Returns:
        The names of the shared submodules.

    Raises:
        ValueError: different ``embedding_size`` or field lists (one line saying which).
    """
    a, b = type(source).__name__, type(target).__name__
    if getattr(source, "embedding_size", None) != getattr(target, "embedding_size", None):
        raise ValueError(
            f"the {names[0]} {a} (embedding_size {getattr(source, 'embedding_size', None)}) "
            f"and the {names[1]} {b} (embedding_size {getattr(target, 'embedding_size', None)})"
            " cannot share their embedding layers: give both the same embedding_size "
            "(teacher_config / student_config)")
    for lst in _FIELD_LISTS:
        if list(getattr(source, lst, [])) != list(getattr(target, lst, [])):
            raise ValueError(f"the {names[0]} {a} and the {names[1]} {b} embed different fields "
                             f"({lst}: {getattr(source, lst, [])} vs {getattr(target, lst, [])})"
                             ": build both on the same dataset fields to share embeddings")
    parts = [p for p in EMBEDDING_TABLES if hasattr(source, p) and hasattr(target, p)]
    if first_order:
        parts.append("first_order_linear")
    if not parts:
        raise ValueError(f"{a} and {b} have no feature-embedding tables to share "
                         f"(expected RecBole ContextRecommender tables {EMBEDDING_TABLES})")
    for p in parts:
        setattr(target, p, getattr(source, p))
    return parts


def _plain_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


# ============================================================================ base class
class CTRDistillModel(AbstractRecommender):
    """Base of the CTR methods: a RecBole context-aware model wrapping real RecBole networks.

    Config keys: ``student`` (RecBole context-aware model name), ``student_config`` (its
    hyperparameters), ``teacher`` (model name(s) trained jointly: ``rocket``, ``pfd_sync``),
    ``teacher_config``, ``teacher_checkpoint`` (state file(s) of pretrained teachers: ``pfd``,
    ``ensemble_kd``), ``distill_params`` (the method's :attr:`defaults`).

    Args:
        config: the experiment's RecBole ``Config``.
        dataset: the training dataset.
        teachers: pretrained teachers to use instead of ``teacher_checkpoint`` (frozen).

    Attributes:
        student: the served network.
        serve: which network ``predict`` scores with (a key of :attr:`servable`).
    """

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    name: ClassVar[str] = ""
    #: hyperparameters (``distill_params``) and their defaults
    defaults: ClassVar[dict[str, Any]] = {}
    #: whether the method reads frozen pretrained teachers (``teacher_checkpoint``)
    pretrained_teachers: ClassVar[bool] = False
    #: whether it trains a teacher of its own (``teacher`` names it)
    joint_teacher: ClassVar[bool] = False
    #: how many pretrained teachers it takes: (min, max)
    teacher_count: ClassVar[tuple[int, int]] = (0, 0)

    def __init__(self, config: Any, dataset: Any,
                 teachers: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.LABEL = config["LABEL_FIELD"]
        self.device = config["device"]
        params = dict(config["distill_params"] or {})
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for CTR method "
                             f"{self.name!r}; valid: {sorted(self.defaults)}")
        self.params = {**self.defaults, **params}
        self.config = config
        self.dataset_fields = list(dataset.fields())
        self.serve = "student"
        self._frozen: tuple[nn.Module, ...] = ()
        if self.pretrained_teachers:
            self._frozen = tuple(self._load_teachers(config, dataset, teachers))

    # ------------------------------------------------------------------ building blocks
    def build(self, name: str, dataset: Any, overrides: dict[str, Any] | None,
              hidden: Iterable[str] = ()) -> tuple[nn.Module, list[str]]:
        """A RecBole model ``name`` on ``dataset`` without the ``hidden`` fields; returns it and
        the fields it reads (its inputs are restricted to them)."""
        hidden = list(hidden)
        view = FieldView(dataset, hidden) if hidden else dataset
        model = build_recbole_model(name, self.config, view, dict(overrides or {}))
        return model, [*view.fields(), self.LABEL]

    def _load_teachers(self, config: Any, dataset: Any,
                       teachers: list[nn.Module] | None) -> list[nn.Module]:
        if teachers is None:
            paths = _plain_list(config["teacher_checkpoint"])
            if not paths:
                raise ValueError(f"CTR method {self.name!r} needs pretrained teacher(s): pass "
                                 "teacher=<model name(s)> (trained first) or "
                                 "teacher_checkpoint=<state file(s)>")
            teachers = [load_model(p, config, dataset)[0] for p in paths]
        lo, hi = self.teacher_count
        if not lo <= len(teachers) <= hi:
            raise ValueError(f"CTR method {self.name!r} takes {lo}..{hi} pretrained teachers, "
                             f"got {len(teachers)}")
        for t in teachers:
            t.to(self.device)
            t.eval()
            t.requires_grad_(False)
        return list(teachers)

    @property
    def teachers(self) -> tuple[nn.Module, ...]:
        """The frozen pretrained teachers (not in ``state_dict()`` / ``parameters()``)."""
        return self._frozen

    def train(self, mode: bool = True) -> CTRDistillModel:
        super().train(mode)
        for t in self._frozen:
            t.eval()
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> CTRDistillModel:
        super()._apply(fn, *args, **kwargs)
        for t in getattr(self, "_frozen", ()):
            t._apply(fn, *args, **kwargs)
        return self

    # ------------------------------------------------------------------ serving
    @property
    def servable(self) -> dict[str, Callable[[Any], Tensor]]:
        """name -> ``interaction -> logits [B]`` of each network this model can serve."""
        return {"student": self.student_logits}

    def student_logits(self, interaction: Any) -> Tensor:
        return self.student(restrict(interaction, self.student_fields)).reshape(-1)

    def predict(self, interaction: Any) -> Tensor:
        try:
            fn = self.servable[self.serve]
        except KeyError:
            raise ValueError(f"{self.name}: cannot serve {self.serve!r}; servable: "
                             f"{sorted(self.servable)}") from None
        return torch.sigmoid(fn(interaction))

    def calculate_loss(self, interaction: Any) -> Tensor | tuple[Tensor, ...]:
        raise NotImplementedError

    def checkpoint_extras(self) -> dict[str, Any]:
        """Entries added to the trainer's checkpoint."""
        from recsys.recbole.zoo import _plain

        return {"student": str(self.config["student"]), "distill_method": self.name,
                "student_config": _plain(dict(self.config["student_config"] or {})),
                "distill_params": _plain(self.params)}

    def _student(self, config: Any, dataset: Any, hidden: Iterable[str] = ()) -> None:
        name = config["student"]
        if not name:
            raise ValueError("config['student'] is not set: name the student RecBole "
                             "context-aware model, e.g. student='WideDeep'")
        self.student, self.student_fields = self.build(name, dataset, config["student_config"],
                                                       hidden)

    def _own(self, interaction: Any) -> tuple[Tensor, Tensor]:
        return loss_and_logits(self.student, restrict(interaction, self.student_fields))


def _joint_teacher_name(config: Any, method: str) -> str:
    names = _plain_list(config["teacher"])
    if len(names) != 1:
        raise ValueError(f"CTR method {method!r} trains one teacher alongside the student: "
                         f"pass teacher=<one RecBole context-aware model name>, got {names}")
    return names[0]


# ============================================================================ methods
@register_ctr("none")
class CTRAlone(CTRDistillModel):
    """The student alone, trained on its own RecBole loss.

    ``exclude_fields`` hides fields from it (the 'student without PFD' baseline)."""

    defaults: ClassVar[dict[str, Any]] = {"exclude_fields": []}

    def __init__(self, config: Any, dataset: Any, teachers: list[nn.Module] | None = None) -> None:
        super().__init__(config, dataset, teachers)
        self._student(config, dataset, _plain_list(self.params["exclude_fields"]))

    def calculate_loss(self, interaction: Any) -> Tensor:
        return self._own(interaction)[0]


@register_ctr("rocket")
class RocketLaunching(CTRDistillModel):
    r"""Rocket Launching (Zhou et al., AAAI 2018): booster + light net trained together.

    ``L = L_light + L_booster + hint_weight * mean_b (l_b - sg(z_b))^2``: each net's own CTR
    loss, the light net's logit ``l`` pulled to the booster's ``z`` with the booster's side
    detached (gradient block). The light net uses the booster's feature-embedding tables
    (:func:`share_embeddings`; ``share_first_order`` also shares the first-order weights).
    """

    joint_teacher = True
    defaults: ClassVar[dict[str, Any]] = {"hint_weight": 1.0, "share_first_order": False}

    def __init__(self, config: Any, dataset: Any, teachers: list[nn.Module] | None = None) -> None:
        super().__init__(config, dataset, teachers)
        name = _joint_teacher_name(config, self.name)
        self.booster, self.booster_fields = self.build(name, dataset, config["teacher_config"])
        self._student(config, dataset)
        self.shared = share_embeddings(self.booster, self.student,
                                       first_order=bool(self.params["share_first_order"]))
        self.hint_weight = float(self.params["hint_weight"])

    @property
    def servable(self) -> dict[str, Callable[[Any], Tensor]]:
        return {"student": self.student_logits, "booster": self.booster_logits}

    def booster_logits(self, interaction: Any) -> Tensor:
        return self.booster(restrict(interaction, self.booster_fields)).reshape(-1)

    def calculate_loss(self, interaction: Any) -> tuple[Tensor, Tensor, Tensor]:
        light_loss, light = self._own(interaction)
        boost_loss, boost = loss_and_logits(self.booster,
                                            restrict(interaction, self.booster_fields))
        return light_loss, boost_loss, self.hint_weight * logit_hint(light, boost)


class _PFD(CTRDistillModel):
    defaults: ClassVar[dict[str, Any]] = {"soft_weight": 0.5, "temperature": 1.0,
                                          "privileged_fields": list(DEFAULT_PRIVILEGED)}

    def _setup(self, config: Any, dataset: Any) -> None:
        self.privileged = _plain_list(self.params["privileged_fields"])
        if not self.privileged:
            raise ValueError(f"{self.name}: privileged_fields is empty: name the fields only "
                             "the teacher may see, e.g. ['user_id', 'zip_code']")
        self._student(config, dataset, self.privileged)
        w = float(self.params["soft_weight"])
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"{self.name}: soft_weight must be in [0, 1] (the paper's lambda "
                             f"in (1 - lambda) L(y, s) + lambda L(t, s)), got {w}")
        self.soft_weight = w
        self.temperature = float(self.params["temperature"])

    def student_terms(self, interaction: Any, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        own, s = self._own(interaction)
        soft = soft_label_bce(s, teacher_logits, temperature=self.temperature)
        return (1.0 - self.soft_weight) * own, self.soft_weight * soft


@register_ctr("pfd")
class PFDOffline(_PFD):
    """PFD offline (Xu et al., NeurIPS 2020): a frozen teacher with privileged features.

    The teacher was trained beforehand on every field; the student, without
    ``privileged_fields``, minimises
    ``(1 - soft_weight) L(y, s) + soft_weight * BCE(sigmoid(t / T), s / T)``."""

    pretrained_teachers = True
    teacher_count = (1, 1)

    def __init__(self, config: Any, dataset: Any, teachers: list[nn.Module] | None = None) -> None:
        super().__init__(config, dataset, teachers)
        self._setup(config, dataset)

    @property
    def servable(self) -> dict[str, Callable[[Any], Tensor]]:
        return {"student": self.student_logits, "teacher": self.teacher_logits}

    def teacher_logits(self, interaction: Any) -> Tensor:
        with torch.no_grad():
            return self.teachers[0](interaction).reshape(-1)

    def calculate_loss(self, interaction: Any) -> tuple[Tensor, Tensor]:
        return self.student_terms(interaction, self.teacher_logits(interaction))


@register_ctr("pfd_sync")
class PFDSync(_PFD):
    """PFD synchronous (Xu et al., NeurIPS 2020): teacher and student trained together.

    The teacher (every field) learns from its own loss; the student's soft labels are the
    teacher's current logits, detached:
    ``L_teacher + (1 - soft_weight) L(y, s) + soft_weight * BCE(sigmoid(sg(t) / T), s / T)``."""

    joint_teacher = True

    def __init__(self, config: Any, dataset: Any, teachers: list[nn.Module] | None = None) -> None:
        super().__init__(config, dataset, teachers)
        name = _joint_teacher_name(config, self.name)
        self.teacher, _ = self.build(name, dataset, config["teacher_config"])
        self._setup(config, dataset)

    @property
    def servable(self) -> dict[str, Callable[[Any], Tensor]]:
        return {"student": self.student_logits,
                "teacher": lambda inter: self.teacher(inter).reshape(-1)}

    def calculate_loss(self, interaction: Any) -> tuple[Tensor, Tensor, Tensor]:
        t_loss, t = loss_and_logits(self.teacher, interaction)
        own, soft = self.student_terms(interaction, t.detach())
        return t_loss, own, soft


class TeacherGate(nn.Module):
    r"""Per-sample ensemble weights ``a(x) = softmax(W h(x) + b)`` over ``K`` teachers.

    Args:
        in_dim: width of the gate's input ``h(x)``.
        num_teachers: ``K``.

    Shapes:
        ``forward(h [B, in_dim]) -> [B, K]``, each row on the simplex (sums to 1).
    """

    def __init__(self, in_dim: int, num_teachers: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_teachers)
        nn.init.zeros_(self.linear.weight)  # starts as the uniform average
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: Tensor) -> Tensor:
        return torch.softmax(self.linear(h), dim=-1)


@register_ctr("ensemble_kd")
class EnsembleKD(CTRDistillModel):
    r"""Ensembled CTR teachers (Zhu et al., CIKM 2020) distilled into one student.

    Frozen pretrained teachers give logits ``z_k`` and field embeddings ``e_k``; the gate reads
    ``h(x) = [e_1, ..., e_K, z_1, ..., z_K]`` (all detached) and gives per-sample weights
    ``a_k(x)`` (``ensemble="uniform"``: ``1/K``). Loss:
    ``BCE(y, sum_k a_k z_k)`` (trains the gate only) ``+ L(y, s)
    + soft_weight * BCE(sigmoid(sg(z)/T), s/T) + hint_weight * sum_k sg(a_k) mean_j
    (R_k e_S - e_k)_j^2`` with a trainable linear regressor ``R_k`` per teacher.
    """

    pretrained_teachers = True
    teacher_count = (1, 16)
    defaults: ClassVar[dict[str, Any]] = {"ensemble": "gated", "soft_weight": 1.0,
                                          "temperature": 1.0, "hint_weight": 0.1}
    ENSEMBLES = ("gated", "uniform")

    def __init__(self, config: Any, dataset: Any, teachers: list[nn.Module] | None = None) -> None:
        super().__init__(config, dataset, teachers)
        self._student(config, dataset)
        mode = str(self.params["ensemble"])
        if mode not in self.ENSEMBLES:
            raise ValueError(f"ensemble_kd: ensemble must be one of {self.ENSEMBLES}, got {mode!r}")
        self.mode = mode
        self.soft_weight = float(self.params["soft_weight"])
        self.hint_weight = float(self.params["hint_weight"])
        self.temperature = float(self.params["temperature"])
        dims = [t.num_feature_field * t.embedding_size for t in self.teachers]
        s_dim = self.student.num_feature_field * self.student.embedding_size
        k = len(self.teachers)
        self.gate = TeacherGate(sum(dims) + k, k)
        self.regressors = nn.ModuleList(nn.Linear(s_dim, d) for d in dims)

    @property
    def servable(self) -> dict[str, Callable[[Any], Tensor]]:
        out = {"student": self.student_logits, "ensemble": lambda i: self.ensemble(i)[0]}
        for k in range(len(self.teachers)):
            out[f"teacher{k}"] = (lambda i, k=k: self.teacher_outputs(i)[0][:, k])
        return out

    def teacher_outputs(self, interaction: Any) -> tuple[Tensor, list[Tensor]]:
        """``(logits [B, K], [e_k [B, F d_k]])`` of the frozen teachers."""
        with torch.no_grad():
            logits = torch.stack([t(interaction).reshape(-1) for t in self.teachers], dim=1)
            embs = [field_embeddings(t, interaction) for t in self.teachers]
        return logits, embs

    def weights(self, logits: Tensor, embs: list[Tensor]) -> Tensor:
        """``[B, K]`` ensemble weights (rows sum to 1)."""
        if self.mode == "uniform":
            return torch.full_like(logits, 1.0 / logits.shape[1])
        return self.gate(torch.cat([*embs, logits], dim=1))

    def ensemble(self, interaction: Any) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """``(ensemble logit [B], weights [B, K], teacher logits [B, K], teacher embeddings)``."""
        logits, embs = self.teacher_outputs(interaction)
        a = self.weights(logits, embs)
        return (a * logits).sum(1), a, logits, embs

    def calculate_loss(self, interaction: Any) -> tuple[Tensor, ...]:
        z, a, _, embs = self.ensemble(interaction)
        label = interaction[self.LABEL].float()
        gate_loss = nn.functional.binary_cross_entropy_with_logits(z, label)
        own, s = self._own(interaction)
        soft = soft_label_bce(s, z.detach(), temperature=self.temperature)
        e_s = field_embeddings(self.student, restrict(interaction, self.student_fields))
        w = a.detach()
        hint = sum((w[:, k] * (r(e_s) - e_k).pow(2).mean(1)).mean()
                   for k, (r, e_k) in enumerate(zip(self.regressors, embs)))
        return gate_loss, own, self.soft_weight * soft, self.hint_weight * hint
