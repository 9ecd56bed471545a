"""The per-store model of a transform codec (``tc<bits>``): a decorrelating transform per layer,
keys and values apart, a quantization step per component, and one frequency model per class of
components — measured once, on K/V memory of calibration passages, and kept in the store's
manifest (KVTC, arXiv 2511.01815).

Fitting, for each layer and for keys (before the rotary embedding, as :class:`KVSlots` holds
them) and values apart:

1. the mean and the principal components (a KLT: eigenvectors of the covariance over every
   calibration position, strongest first) of the layer's ``kv_heads * head_dim`` channels;
2. one quantization step for every component of the layer: a shared scale times the layer's
   spread (the root mean variance of its channels), keys' steps :attr:`TransformSettings.key_step`
   times the values'. With entropy coding, one step for every component of a group is what
   reverse water-filling asks for; a component whose spread is below
   :attr:`TransformSettings.drop_below` steps is not stored at all (decoded as its mean);
3. the shared scale found by bisection so that the coded calibration memory takes
   ``bits`` bits per element (every key and value element, stored or dropped);
4. components grouped into classes by their spread in steps (half-octave bins), one
   histogram of quantized symbols per class: the frequency model the entropy coder
   (:mod:`constriction`'s ANS coder) codes them under.

Everything is rounded as it is stored (float16 transforms and steps), so the codec that fitted
the model and the one that reads it from a manifest code identically.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from memrag.memory.calibration import checksum, float16_exact
from memrag.memory.kv import KVSlots
from memrag.memory.sensitivity import AttentionSensitivity

#: Version of the calibration's text form (and of the coded chunks' layout).
FORMAT_VERSION = 1
#: Prefix of a transform calibration's text form.
TEXT_PREFIX = "tc"
#: Half-octave classes of ``spread / step``: class ``c`` holds components whose ratio rounds to
#: ``2 ** ((c + CLASS_OFFSET) / 2)``.
CLASS_OFFSET = -4
MAX_CLASSES = 28
#: Positions the steps, frequency tables and rate are measured on (evenly spaced).
SAMPLE_POSITIONS = 4096
#: Smallest alphabet radius of a class's frequency model.
MIN_RADIUS = 4
#: Largest alphabet radius (symbols beyond it are clipped to it).
MAX_RADIUS = 2047


@dataclass(frozen=True)
class TransformSettings:
    """How a transform codec's model is fitted (recorded with it).

    Attributes:
        bits: Mean bits per key/value element the calibration memory is coded in.
        key_step: Keys' quantization steps against the values' (below 1: keys finer). With
            the attention weighting, 2 (keys' logit error against the values' relative output
            error) kept answers closest to ``int8``'s (docs/RESULTS.md, "Transform codec").
        drop_below: A component whose spread is below this many steps is not stored.
        entropy: How symbols become bytes: ``"ans"`` or ``"zstd"``
            (:mod:`memrag.memory.entropy`).
        weighting: How steps differ between layers and components: ``"attention"`` (by what
            an error moves in the decoder: :mod:`memrag.memory.sensitivity`; keys in logit
            units, values relative to the layer's output) or ``"spread"`` (one step per layer,
            a fixed share of its spread).
    """

    bits: float = 2.0
    key_step: float = 2.0
    drop_below: float = 0.3
    entropy: str = "ans"
    weighting: str = "attention"

    def __post_init__(self) -> None:
        if not (0.05 <= self.bits <= 12.0) or not math.isfinite(self.bits):
            raise ValueError(f"transform codec bits per element must lie in [0.05, 12], got {self.bits}")
        if not self.key_step > 0:
            raise ValueError(f"key_step must be positive, got {self.key_step}")
        if not self.drop_below >= 0:
            raise ValueError(f"drop_below must be at least 0, got {self.drop_below}")
        if self.weighting not in ("attention", "spread"):
            raise ValueError(f"weighting must be attention or spread, got {self.weighting!r}")
        if self.entropy not in ("ans", "zstd"):
            raise ValueError(f"entropy coder must be ans or zstd, got {self.entropy!r}")


@dataclass(frozen=True)
class TransformModel:
    """A fitted transform codec model for one decoder shape.

    Attributes:
        settings: What it was fitted for.
        means: ``(2, layers, channels)`` float32 (float16-exact): keys' then values' means.
        bases: ``(2, layers, channels, channels)`` float32 (float16-exact): column ``i`` of
            ``bases[p, l]`` is the ``i``-th principal direction.
        steps: ``(2, layers, channels)`` float32 (float16-exact) quantization step of each
            component; ``inf`` where the component is not stored.
        classes: ``(2, layers, channels)`` int64 frequency-model class of each component
            (``-1``: not stored).
        tables: ``(classes, 2 * MAX_RADIUS + 1)`` float64 symbol counts of each class, centred
            (symbol ``s`` at ``s + MAX_RADIUS``).
        radii: ``(classes,)`` int64 alphabet radius of each class.
    """

    settings: TransformSettings
    means: torch.Tensor
    bases: torch.Tensor
    steps: torch.Tensor
    classes: torch.Tensor
    tables: np.ndarray
    radii: np.ndarray
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def layers(self) -> int:
        """Decoder layers."""
        return int(self.means.shape[1])

    @property
    def channels(self) -> int:
        """Channels of a layer's keys (or values): ``kv_heads * head_dim``."""
        return int(self.means.shape[2])

    def class_indices(self) -> list[np.ndarray]:
        """For each class, the flat component indices (into ``2 * layers * channels``) it codes."""
        if "indices" not in self._cache:
            flat = self.classes.reshape(-1).numpy()
            self._cache["indices"] = [
                np.flatnonzero(flat == c).astype(np.int64) for c in range(len(self.radii))
            ]
        return self._cache["indices"]

    def entropy_coder(self) -> Any:
        """The :class:`~memrag.memory.entropy.EntropyCoder` of :attr:`settings` (built once)."""
        if "coder" not in self._cache:
            from memrag.memory.entropy import ENTROPY_CODERS

            coder = ENTROPY_CODERS[self.settings.entropy]
            self._cache["coder"] = coder(self.entropy_models(), self.radii)
        return self._cache["coder"]

    def entropy_models(self) -> list[object]:
        """One :mod:`constriction` categorical model per class (built once)."""
        if "models" not in self._cache:
            import constriction

            models = []
            for table, radius in zip(self.tables, self.radii):
                counts = table[MAX_RADIUS - radius : MAX_RADIUS + radius + 1]
                models.append(
                    constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
                )
            self._cache["models"] = models
        return self._cache["models"]

    def synthesis(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What decoding needs, built once: ``(steps, gather, bases)``.

        * ``steps``: ``(S,)`` the stored components' steps, in class order (the order their
          symbols are decoded in: class 0's components, then class 1's ...);
        * ``gather``: ``(2 * layers, width)`` for each (part, layer) group, the class-order
          position of each of its stored components (``S`` for padding: a zero);
        * ``bases``: ``(2 * layers, width, channels)`` those components' basis rows (zero rows
          for padding), so one batched product gives every group's channels.
        """
        if "synthesis" not in self._cache:
            order = np.concatenate(self.class_indices()) if self.class_indices() else np.zeros(0, np.int64)
            flat_steps = self.steps.reshape(-1)
            steps = flat_steps[torch.from_numpy(order)].float()
            position = torch.full((flat_steps.numel(),), len(order), dtype=torch.long)
            position[torch.from_numpy(order)] = torch.arange(len(order))
            groups = 2 * self.layers
            kept = [torch.nonzero(self.classes.reshape(groups, -1)[g] >= 0).flatten() for g in range(groups)]
            width = max(1, max(len(k) for k in kept))
            gather = torch.full((groups, width), len(order), dtype=torch.long)
            bases = torch.zeros((groups, width, self.channels))
            flat_bases = self.bases.reshape(groups, self.channels, self.channels)
            for g, index in enumerate(kept):
                gather[g, : len(index)] = position.reshape(groups, -1)[g, index]
                bases[g, : len(index)] = flat_bases[g][:, index].T
            self._cache["synthesis"] = (steps, gather, bases.contiguous())
        return self._cache["synthesis"]

    def to_text(self) -> str:
        """The model as ``"tc<version>:<sha256 prefix>:<base64 safetensors>"`` (for a manifest)."""
        from safetensors.torch import save

        tensors = {
            "means": self.means.to(torch.float16),
            "bases": self.bases.to(torch.float16),
            "steps": self.steps.to(torch.float16),
            "classes": self.classes.to(torch.int8),
            "tables": torch.from_numpy(self.tables.astype(np.float32)),
            "radii": torch.from_numpy(self.radii.astype(np.int32)),
        }
        raw = save(tensors, metadata={"settings": json.dumps(asdict(self.settings), sort_keys=True)})
        payload = base64.b64encode(raw).decode("ascii")
        return f"{TEXT_PREFIX}{FORMAT_VERSION}:{checksum(raw)}:{payload}"

    @classmethod
    def from_text(cls, text: str) -> TransformModel:
        """Parses :meth:`to_text`'s form.

        Raises:
            ValueError: malformed, a different version, bytes that do not match their checksum,
                or tensors whose shapes or values do not fit together (naming which).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            version, digest, payload = text.split(":", 2)
            raw = base64.b64decode(payload.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as err:
            raise ValueError(f"transform codec calibration is malformed ({err})") from None
        if version != f"{TEXT_PREFIX}{FORMAT_VERSION}":
            raise ValueError(
                f"transform codec calibration is version {version!r}, this memrag reads "
                f"{TEXT_PREFIX}{FORMAT_VERSION}"
            )
        if checksum(raw) != digest:
            raise ValueError(
                "transform codec calibration does not match its checksum (damaged or edited)"
            )
        try:
            tensors = load(raw)
            metadata = _safetensors_metadata(raw)
            settings = TransformSettings(**json.loads(metadata["settings"]))
        except (SafetensorError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"transform codec calibration does not load ({err})") from None
        return cls.checked(
            settings=settings,
            means=tensors["means"].float(),
            bases=tensors["bases"].float(),
            steps=tensors["steps"].float(),
            classes=tensors["classes"].long(),
            tables=tensors["tables"].double().numpy(),
            radii=tensors["radii"].long().numpy(),
        )

    @classmethod
    def checked(cls, **fields: object) -> TransformModel:
        """A model from its fields, after checking that they fit together.

        Raises:
            ValueError: naming the field that does not fit.
        """
        model = cls(**fields)  # type: ignore[arg-type]
        two, layers, channels = model.means.shape
        if two != 2 or tuple(model.bases.shape) != (2, layers, channels, channels):
            raise ValueError("transform codec calibration: bases do not match means")
        if tuple(model.steps.shape) != (2, layers, channels) or model.classes.shape != model.steps.shape:
            raise ValueError("transform codec calibration: steps or classes do not match means")
        count = len(model.radii)
        if model.tables.shape != (count, 2 * MAX_RADIUS + 1):
            raise ValueError("transform codec calibration: frequency tables do not match radii")
        if bool(((model.classes < -1) | (model.classes >= count)).any()):
            raise ValueError("transform codec calibration: a component names no frequency table")
        stored = model.classes >= 0
        if not bool(torch.isfinite(model.steps[stored]).all()) or not bool((model.steps[stored] > 0).all()):
            raise ValueError("transform codec calibration: steps are not finite and positive")
        for name in ("means", "bases"):
            if not bool(torch.isfinite(getattr(model, name)).all()):
                raise ValueError(f"transform codec calibration: {name} are not finite")
        if (model.radii < 1).any() or (model.radii > MAX_RADIUS).any():
            raise ValueError("transform codec calibration: alphabet radii out of range")
        if not np.isfinite(model.tables).all() or (model.tables < 0).any():
            raise ValueError("transform codec calibration: frequency tables are not counts")
        for table, radius in zip(model.tables, model.radii):
            if table[MAX_RADIUS - radius : MAX_RADIUS + radius + 1].min() <= 0:
                raise ValueError("transform codec calibration: a symbol has no probability")
        return model


@functools.lru_cache(maxsize=4)
def transform_model_from_text(text: str) -> TransformModel:
    """:meth:`TransformModel.from_text`, parsed and checked once per distinct text."""
    return TransformModel.from_text(text)


def stacked_parts(memory: KVSlots) -> torch.Tensor:
    """``(n, 2, layers, channels)`` float32: a chunk's keys and values side by side."""
    count, layers = memory.keys.shape[0], memory.keys.shape[1]
    keys = memory.keys.detach().to("cpu", torch.float32).reshape(count, layers, -1)
    values = memory.values.detach().to("cpu", torch.float32).reshape(count, layers, -1)
    return torch.stack([keys, values], dim=1)


def coefficients(model: TransformModel, stacked: torch.Tensor) -> torch.Tensor:
    """``stacked`` (``(n, 2, layers, channels)``) in the model's principal directions."""
    return torch.einsum("nplc,plcd->npld", stacked - model.means, model.bases)


def quantize(model: TransformModel, coefficients_: torch.Tensor) -> torch.Tensor:
    """Integer symbols (int64, ``(n, 2, layers, channels)``; ``0`` for components not stored),
    each clipped to its class's alphabet."""
    symbols = torch.round(coefficients_ / model.steps)
    symbols = torch.nan_to_num(symbols, nan=0.0, posinf=0.0, neginf=0.0)
    radius = torch.from_numpy(model.radii).to(torch.float32)
    limit = torch.where(model.classes >= 0, radius[model.classes.clamp(min=0)], torch.zeros(()))
    return torch.maximum(torch.minimum(symbols, limit), -limit).long()


def fit_transform_model(
    memories: Sequence[KVSlots],
    settings: TransformSettings = TransformSettings(),
    sensitivity: AttentionSensitivity | None = None,
) -> TransformModel:
    """Fits a transform codec's model to ``memories`` (see the module docstring).

    Args:
        memories: Float K/V memory of calibration text.
        settings: What to fit.
        sensitivity: The decoder's sensitivity to key and value errors (required by the
            ``"attention"`` weighting).

    Raises:
        ValueError: no positions, or fewer positions than twice a layer's channels (too few to
            measure the transform).
    """
    if not memories or not sum(m.num_slots for m in memories):
        raise ValueError("calibrating a transform codec needs K/V memory with at least one position")
    positions = sum(m.num_slots for m in memories)
    first = stacked_parts(memories[0])
    _, _, layers, channels = first.shape
    if positions < 2 * channels:
        raise ValueError(
            f"calibrating a transform codec needs at least {2 * channels} positions (twice a "
            f"layer's {channels} channels), got {positions}"
        )
    total = torch.zeros((2, layers, channels), dtype=torch.float64)
    products = torch.zeros((2, layers, channels, channels), dtype=torch.float64)
    for memory in memories:
        part = stacked_parts(memory).double()
        total += part.sum(dim=0)
        products += torch.einsum("nplc,npld->plcd", part, part)
    means = total / positions
    covariance = products / positions - torch.einsum("plc,pld->plcd", means, means)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    order = torch.argsort(eigenvalues, dim=-1, descending=True)
    vectors = torch.gather(vectors, -1, order.unsqueeze(-2).expand_as(vectors))
    # Deterministic signs: each direction's largest entry positive.
    largest = torch.gather(vectors, -2, vectors.abs().argmax(dim=-2, keepdim=True))
    vectors = vectors * torch.sign(largest)
    means_f = float16_exact(means)
    bases = float16_exact(vectors)
    # Steps, tables and the rate are measured on evenly spaced positions (bounded memory).
    sample = torch.cat([stacked_parts(m) for m in memories])
    sample = sample[torch.linspace(0, positions - 1, min(positions, SAMPLE_POSITIONS)).long()]
    coeffs = torch.einsum("nplc,plcd->npld", sample - means_f, bases)
    spread = coeffs.std(dim=0, unbiased=False).clamp(min=1e-12)  # (2, layers, channels)
    part_weight = torch.tensor([settings.key_step, 1.0]).reshape(2, 1, 1)
    if settings.weighting == "attention":
        if sensitivity is None:
            raise ValueError("the attention weighting needs the decoder's measured sensitivity")
        weights = torch.stack([sensitivity.weights(p, bases[p].double()) for p in range(2)])
        unit = (weights.rsqrt().float() * part_weight).clamp(max=1e6)
    else:
        layer_spread = spread.pow(2).mean(dim=-1, keepdim=True).sqrt()  # (2, layers, 1)
        unit = layer_spread * part_weight
    elements = coeffs.shape[0] * 2 * layers * channels

    def fitted(scale: float) -> tuple[TransformModel, float]:
        steps = float16_exact(unit * scale).expand_as(spread).clone()
        stored = spread >= settings.drop_below * steps
        ratio = (spread / steps).clamp(min=1e-12)
        classes = (torch.round(2 * torch.log2(ratio)) - CLASS_OFFSET).clamp(0, MAX_CLASSES - 1).long()
        classes = torch.where(stored, classes, torch.full_like(classes, -1))
        steps = torch.where(stored, steps, torch.full_like(steps, math.inf))
        symbols = torch.round(coeffs / steps).nan_to_num(0.0, posinf=0.0, neginf=0.0).int()
        tables, radii = _frequency_tables(symbols, classes)
        model = TransformModel.checked(
            settings=settings,
            means=means_f,
            bases=bases,
            steps=steps,
            classes=classes,
            tables=tables,
            radii=radii,
        )
        return model, _coded_bits(model, quantize(model, coeffs)) / elements

    low, high = math.log(1e-5), math.log(1e5)
    best: tuple[TransformModel, float] | None = None
    for _ in range(20):
        middle = (low + high) / 2
        model, bits = fitted(math.exp(middle))
        if bits > settings.bits:
            low = middle
        else:
            high = middle
            best = (model, bits)
    if best is None:
        best = fitted(math.exp(high))
    return best[0]


def _frequency_tables(symbols: torch.Tensor, classes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per class: counts of its calibration symbols (plus one for every symbol of its alphabet)
    and its alphabet radius."""
    flat_symbols = symbols.reshape(symbols.shape[0], -1)
    flat_classes = classes.reshape(-1)
    used = int(flat_classes.max()) + 1 if bool((flat_classes >= 0).any()) else 0
    tables = np.zeros((used, 2 * MAX_RADIUS + 1), dtype=np.float64)
    radii = np.full((used,), MIN_RADIUS, dtype=np.int64)
    for c in range(used):
        members = torch.nonzero(flat_classes == c).flatten()
        if not len(members):
            tables[c, MAX_RADIUS - MIN_RADIUS : MAX_RADIUS + MIN_RADIUS + 1] = 1.0
            continue
        values = flat_symbols[:, members].reshape(-1)
        peak = int(values.abs().max())
        radius = int(min(MAX_RADIUS, max(MIN_RADIUS, math.ceil(1.5 * peak) + 1)))
        counts = torch.bincount(values.clamp(-radius, radius) + MAX_RADIUS, minlength=2 * MAX_RADIUS + 1)
        table = counts.double().numpy()
        table[MAX_RADIUS - radius : MAX_RADIUS + radius + 1] += 1.0
        tables[c], radii[c] = table, radius
    return tables, radii


def _coded_bits(model: TransformModel, symbols: torch.Tensor) -> float:
    """Bits ``symbols`` take under the model's frequency tables (the entropy coder's rate)."""
    flat = symbols.reshape(symbols.shape[0], -1)
    total = 0.0
    for c, index in enumerate(model.class_indices()):
        if not len(index):
            continue
        radius = int(model.radii[c])
        table = model.tables[c, MAX_RADIUS - radius : MAX_RADIUS + radius + 1]
        log_p = np.log2(table / table.sum())
        values = flat[:, torch.from_numpy(index)].reshape(-1).numpy() + radius
        total -= float(log_p[values].sum())
    return total


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    header_length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + header_length]).get("__metadata__", {})


