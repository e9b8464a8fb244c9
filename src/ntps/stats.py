"""Streaming sufficient statistics for NTPS, for every layer at once (docs/method.md section 1).

Perception side (per layer): masked mean-pooled features x_i and one-hot labels y_i give
``sum x x^T``, ``sum x y^T``, ``sum x`` and label counts. Autoregressive side: prefix sums
``s_t = h_1 + ... + h_t`` over a text's own non-padding tokens give ``sum_t s_t s_t^T`` and
``sum_t s_t h_{t+1}^T`` for ``t = 1..T-1``. Sums are float64 on the accumulator's device, so memory
is O(L d^2) whatever the number of texts, and two accumulators merge exactly by addition.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ntps.errors import DatasetError, NTPSError, NumericalError
from ntps.layout import (
    N_SHARDS_KEY,
    PACKED_SUFFIX,
    STATISTICS_KEY_RE,
    is_count_key,
    shard_prefix,
    statistics_key,
    statistics_prefix,
)

_F64 = torch.float64
_LAYER_SUMS = ("x_sum", "cxx_sum", "cxy_sum", "s0_sum", "s1_sum")
_COUNTS = ("n_examples", "n_pairs", "n_texts")
# float32 products are accumulated into float64 every this many rows: bounds the length of any
# float32 summation, which keeps the accumulated moments within ~1e-7 relative of float64.
_PRODUCT_CHUNK_ROWS = 512


def masked_mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, T, d) over positions where ``mask`` (B, T) is non-zero -> (B, d).

    Padding positions are ignored even if they hold NaN. Computes in float32 or wider.
    """
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, T, d) and mask (B, T), got {tuple(hidden.shape)} and {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    m = mask.to(hidden.device).bool()
    lengths = m.sum(1)
    if bool((lengths == 0).any()):
        rows = torch.nonzero(lengths == 0).flatten().tolist()
        raise DatasetError(f"batch rows {rows} have no non-padding tokens; drop empty texts first")
    h = torch.where(
        m[..., None], hidden.to(dtype), torch.zeros((), dtype=dtype, device=hidden.device)
    )
    return h.sum(1) / lengths[:, None].to(dtype)


#: The tensor fields of :class:`LayerMoments`.
_MOMENT_TENSORS = ("cxx", "cxy", "s0", "s1", "x_mean", "y_mean")


@dataclass(frozen=True)
class LayerMoments:
    """Moments of one layer, normalised as in the spec (float64).

    ``cxx = sum x x^T / N``, ``cxy = sum x y^T / N``, ``x_mean = sum x / N``, ``y_mean`` = class
    frequencies, with N = ``n_examples`` (labelled texts); ``s0``/``s1`` are the autoregressive sums
    divided by the number of texts that fed them (equal to N when every batch had labels).
    """

    cxx: Tensor  # (d, d)
    cxy: Tensor  # (d, c)
    s0: Tensor  # (d, d)
    s1: Tensor  # (d, d)
    x_mean: Tensor  # (d,)
    y_mean: Tensor  # (c,)
    n_examples: int
    n_pairs: int
    layer: int | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.cxx.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.cxy.shape[1])

    def to(self, device: torch.device | str) -> LayerMoments:
        """The same moments with every tensor on ``device``."""
        return dataclasses.replace(
            self, **{name: getattr(self, name).to(device) for name in _MOMENT_TENSORS}
        )

    @classmethod
    def from_sums(
        cls,
        sums: Mapping[str, Tensor],
        label_counts: Tensor,
        n_examples: int,
        n_pairs: int,
        n_texts: int,
        layer: int | None = None,
    ) -> LayerMoments:
        """Normalise one layer's raw sums (keys as in :data:`_LAYER_SUMS`)."""
        where = f"layer {layer}" if layer is not None else "layer"
        if n_examples <= 0:
            raise NumericalError(
                f"{where}: no labelled examples were accumulated, so Cxx/Cxy are undefined"
            )
        n = float(n_examples)
        n_ar = float(n_texts) if n_texts > 0 else 1.0  # no AR texts: sums are zero anyway
        return cls(
            cxx=sums["cxx_sum"].to(_F64) / n,
            cxy=sums["cxy_sum"].to(_F64) / n,
            s0=sums["s0_sum"].to(_F64) / n_ar,
            s1=sums["s1_sum"].to(_F64) / n_ar,
            x_mean=sums["x_sum"].to(_F64) / n,
            y_mean=label_counts.to(_F64) / n,
            n_examples=int(n_examples),
            n_pairs=int(n_pairs),
            layer=layer,
        )

    @classmethod
    def from_tensors(
        cls, tensors: Any, layer: int, *, device: torch.device | str | None = None
    ) -> LayerMoments:
        """Load ONE layer from :meth:`StatisticsAccumulator.to_tensors` output.

        ``tensors`` is a mapping of key -> tensor, or an open safetensors handle (anything with a
        ``get_tensor(key)`` method), so scoring can read one layer at a time::

            with safetensors.safe_open(path, "pt") as f:
                m = LayerMoments.from_tensors(f, 3)
        """
        get = _getter(tensors)
        sums = {}
        for name in _LAYER_SUMS:
            key = statistics_key(layer, name)
            try:
                sums[name] = get(key)
            except KeyError as exc:
                raise NTPSError(
                    f"statistics have no key {key!r}: layer {layer} was not stored"
                ) from exc
        counts = {}
        for name in _COUNTS:
            try:
                counts[name] = int(get(name).reshape(-1)[0])
            except KeyError:
                if name != "n_texts":
                    raise NTPSError(f"statistics have no key {name!r}") from None
        counts.setdefault("n_texts", counts["n_examples"])
        label_counts = get("label_counts")
        if device is not None:
            sums = {k: v.to(device) for k, v in sums.items()}
            label_counts = label_counts.to(device)
        return cls.from_sums(
            sums, label_counts, counts["n_examples"], counts["n_pairs"], counts["n_texts"], layer
        )


def _getter(tensors: Any):
    """``get(key)`` over a dict or an open safetensors handle: THE reader of stored statistics.

    A symmetric sum stored compactly (``<key>.triu``, see :func:`pack_statistics`) is unpacked to
    its full (d, d) matrix here, so every consumer reads full and compact files alike.
    """
    if hasattr(tensors, "get_tensor"):
        keys = set(tensors.keys())
        raw = tensors.get_tensor
    else:
        keys, raw = tensors, tensors.__getitem__

    def get(key: str) -> Tensor:
        if key in keys:
            return raw(key)
        if key + PACKED_SUFFIX in keys:
            return unpack_symmetric(raw(key + PACKED_SUFFIX))
        raise KeyError(key)

    return get


def layer_tensors(tensors: Any, layer: int) -> dict[str, Tensor]:
    """One hidden state's stored statistics and the counts shared by all, read into memory as
    stored (full or compact form; :func:`_getter` unpacks on reading): a layer read once from an
    open safetensors handle (or picked from a dict) for everything computed from it."""
    get = tensors.get_tensor if hasattr(tensors, "get_tensor") else tensors.__getitem__
    prefix = statistics_prefix(layer)
    return {key: get(key) for key in tensors.keys() if key.startswith(prefix) or is_count_key(key)}


# --- compact storage: the upper triangle of the symmetric sums ---------------------------------

# Cxx and S0 are symmetric: stored compactly, each keeps its upper triangle only (d(d+1)/2 of d^2
# values), under the key ``<name>.triu`` (ntps.layout.PACKED_SUFFIX).
SYMMETRIC_SUMS = ("cxx_sum", "s0_sum")


def _triu_size_to_d(n: int) -> int:
    d = math.isqrt(8 * n + 1) // 2
    if d * (d + 1) // 2 != n:
        raise NTPSError(f"a packed symmetric matrix has {n} values, not d(d+1)/2 for any d")
    return d


def pack_symmetric(matrix: Tensor) -> Tensor:
    """Upper triangle (row-major, diagonal included) of a symmetric (d, d) matrix -> (d(d+1)/2,).

    The matrix is symmetrised first ((A + A^T)/2, which is A itself for the exactly symmetric sums
    the accumulator writes), so unpacking returns exactly what scoring uses.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
    d = matrix.shape[0]
    rows, cols = torch.triu_indices(d, d, device=matrix.device)
    return ((matrix + matrix.T) * 0.5)[rows, cols].contiguous()


def unpack_symmetric(packed: Tensor) -> Tensor:
    """Inverse of :func:`pack_symmetric`: (d(d+1)/2,) -> the full symmetric (d, d) matrix."""
    d = _triu_size_to_d(int(packed.numel()))
    rows, cols = torch.triu_indices(d, d, device=packed.device)
    out = torch.zeros((d, d), dtype=packed.dtype, device=packed.device)
    out[rows, cols] = packed
    out[cols, rows] = packed
    return out


def pack_statistics(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Statistics tensors (``to_tensors`` or ``shards_to_tensors`` keys) with every Cxx and S0 sum
    replaced by its upper triangle (``<key>.triu``); other keys unchanged. Read back through the
    package's one reader (:func:`_getter`: ``LayerMoments.from_tensors``,
    ``StatisticsAccumulator.from_tensors``, :func:`jackknife_moments`, :func:`splice_statistics`).
    """
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key.rsplit(".", 1)[-1] in SYMMETRIC_SUMS:
            out[key + PACKED_SUFFIX] = pack_symmetric(value)
        else:
            out[key] = value
    return out


def is_packed(keys: Any) -> bool:
    """Whether stored statistics (their key set) use the compact form."""
    return any(str(key).endswith(PACKED_SUFFIX) for key in keys)


def stored_layers(keys: Any) -> list[int]:
    """Sorted layer indices present in a ``to_tensors`` key set (e.g. a safetensors handle's keys)."""
    found = {int(m.group(1)) for k in keys if (m := STATISTICS_KEY_RE.match(k))}
    return sorted(found)


class StatisticsAccumulator:
    """Float64 sums of the perception and autoregressive moments for all layers.

    ``product_dtype`` is the dtype of the per-batch GEMMs (float32 is about twice as fast on CPU and
    stays within 1e-6 relative of float64 once accumulated; pass torch.float64 for all-double).
    """

    def __init__(
        self,
        n_layers: int,
        hidden_size: int,
        n_classes: int,
        *,
        device: torch.device | str = "cpu",
        product_dtype: torch.dtype = torch.float32,
    ) -> None:
        if n_layers < 1 or hidden_size < 1 or n_classes < 1:
            raise ValueError(
                f"n_layers, hidden_size, n_classes must be >= 1, got {n_layers}, {hidden_size}, {n_classes}"
            )
        if product_dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"product_dtype must be torch.float32 or torch.float64, got {product_dtype}"
            )
        self.n_layers = n_layers
        self.hidden_size = hidden_size
        self.n_classes = n_classes
        self.device = torch.device(device)
        self.product_dtype = product_dtype
        L, d, c = n_layers, hidden_size, n_classes
        kw = {"dtype": _F64, "device": self.device}
        self.x_sum = torch.zeros(L, d, **kw)
        self.cxx_sum = torch.zeros(L, d, d, **kw)
        self.cxy_sum = torch.zeros(L, d, c, **kw)
        self.s0_sum = torch.zeros(L, d, d, **kw)
        self.s1_sum = torch.zeros(L, d, d, **kw)
        self.label_counts = torch.zeros(c, dtype=torch.int64, device=self.device)
        self.n_examples = 0  # labelled texts (perception side)
        self.n_pairs = 0  # (s_t, h_{t+1}) pairs (autoregressive side)
        self.n_texts = 0  # texts seen by the autoregressive side

    # ------------------------------------------------------------------ update
    def _as_layers(self, hidden_states: Tensor | Sequence[Tensor]) -> Sequence[Tensor]:
        if isinstance(hidden_states, Tensor):
            if hidden_states.ndim != 4:
                raise ValueError(
                    f"hidden_states tensor must be (L, B, T, d), got {tuple(hidden_states.shape)}"
                )
            layers: Sequence[Tensor] = hidden_states.unbind(0)
        else:
            layers = list(hidden_states)
        if len(layers) != self.n_layers:
            raise ValueError(f"expected {self.n_layers} layers of hidden states, got {len(layers)}")
        for h in layers:
            if h.ndim != 3 or h.shape[-1] != self.hidden_size:
                raise ValueError(
                    f"each layer must be (B, T, {self.hidden_size}), got {tuple(h.shape)}"
                )
        return layers

    @torch.no_grad()
    def update(
        self,
        hidden_states: Tensor | Sequence[Tensor],
        attention_mask: Tensor,
        labels: Tensor | None,
    ) -> Tensor:
        """Add one batch; returns the mean-pooled features (L, B, d) float32 in batch row order.

        ``hidden_states``: (L, B, T, d) or a sequence of L tensors (B, T, d); ``attention_mask``
        (B, T) of 0/1, left or right padded (any pattern: valid tokens are taken in order);
        ``labels`` (B,) integers in [0, n_classes), or None to skip the perception side.
        """
        layers = self._as_layers(hidden_states)
        B, T, d = layers[0].shape
        if tuple(attention_mask.shape) != (B, T):
            raise ValueError(
                f"attention_mask must be ({B}, {T}), got {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(self.device).bool()
        lengths = mask.sum(1)
        if bool((lengths == 0).any()):
            rows = torch.nonzero(lengths == 0).flatten().tolist()
            raise DatasetError(
                f"batch rows {rows} have no non-padding tokens; drop empty texts first"
            )
        onehot = self._onehot(labels, B) if labels is not None else None

        # Compact each row: its valid tokens first, in order. A stable sort of "is padding" does
        # this for left padding, right padding and anything in between, without a python loop.
        t_max = int(lengths.max())
        cmask = torch.arange(t_max, device=self.device)[None, :] < lengths[:, None]
        compact = bool(torch.equal(mask[:, :t_max], cmask)) and not bool(mask[:, t_max:].any())
        order = (
            None
            if compact
            else torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :t_max]
        )
        inv_len = 1.0 / lengths.to(_F64)[:, None]
        last_valid = lengths - 1  # compact layout: each row's last valid token
        rows = torch.arange(B, device=self.device)
        # Flat row indices (into (B * t_max, d)) of the pairs (s_t, h_{t+1}): t + 1 must be valid.
        # Gathering only those rows keeps padding out of the GEMMs instead of multiplying it by 0.
        pair_b, pair_t = cmask[:, 1:].nonzero(as_tuple=True)
        prefix_rows = pair_b * t_max + pair_t

        pooled = torch.empty(self.n_layers, B, d, dtype=torch.float32, device=self.device)
        for li, h in enumerate(layers):
            h = h.to(self.device)
            h = (
                h[:, :t_max]
                if order is None
                else torch.gather(h, 1, order[..., None].expand(B, t_max, d))
            )
            # Padding may hold garbage (even NaN in fp16 models): zero it before any arithmetic.
            # Elementwise work stays in the input dtype (exact); float64 is used only where values
            # are summed: ~10% less CPU time per update than all-float64 (docs/performance.md).
            h = torch.where(cmask[..., None], h, torch.zeros((), dtype=h.dtype, device=self.device))
            # float64 prefix sums (they grow with t); a row's pooled sum is its last prefix sum, so
            # one pass over h serves both the perception and the autoregressive side.
            prefix = h.cumsum(1, dtype=_F64)
            x = prefix[rows, last_valid]
            # A NaN/inf at a valid position makes its row's float64 sum non-finite (finite
            # float32/16 values cannot overflow float64), so checking the (B, d) sums is as strict
            # as checking all B*T*d elements, and much cheaper.
            if not bool(torch.isfinite(x).all()):
                raise NumericalError(
                    f"hidden states of layer {li} contain NaN or inf at non-padding positions; "
                    "fp16 activations overflow in many LLMs: load the model in bfloat16 or float32"
                )
            x = x * inv_len  # (B, d) masked mean pool
            pooled[li] = x.to(torch.float32)
            if onehot is not None:
                self.x_sum[li] += x.sum(0)
                self.cxx_sum[li].addmm_(x.T, x)
                self.cxy_sum[li].addmm_(x.T, onehot)
            if prefix_rows.numel():
                self._add_products(
                    li,
                    prefix.reshape(-1, d).index_select(0, prefix_rows),
                    h.reshape(-1, d).index_select(0, prefix_rows + 1),
                )
        if onehot is not None:
            self.n_examples += B
            self.label_counts += onehot.sum(0).to(torch.int64)
        self.n_texts += B
        self.n_pairs += int((lengths - 1).sum())
        return pooled

    def _onehot(self, labels: Tensor, batch: int) -> Tensor:
        labels = torch.as_tensor(labels, device=self.device)
        if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise DatasetError(
                f"labels must be ({batch},) integers, got {tuple(labels.shape)} {labels.dtype}"
            )
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.n_classes:
            raise DatasetError(
                f"labels must lie in 0..{self.n_classes - 1} (n_classes={self.n_classes}), got range {lo}..{hi}"
            )
        return torch.nn.functional.one_hot(labels.long(), self.n_classes).to(_F64)

    def _add_products(self, layer: int, s: Tensor, nxt: Tensor) -> None:
        """S0 += s^T s, S1 += s^T nxt; rows that are all zero (no pair) contribute nothing.

        ``s`` is float64; ``nxt`` is in the hidden states' dtype (cast per chunk, exactly)."""
        if self.product_dtype == _F64:
            self.s0_sum[layer].addmm_(s.T, s)
            self.s1_sum[layer].addmm_(s.T, nxt.to(_F64))
            return
        for start in range(0, s.shape[0], _PRODUCT_CHUNK_ROWS):
            sc = s[start : start + _PRODUCT_CHUNK_ROWS].to(self.product_dtype)
            nc = nxt[start : start + _PRODUCT_CHUNK_ROWS].to(self.product_dtype)
            self.s0_sum[layer] += sc.T @ sc
            self.s1_sum[layer] += sc.T @ nc

    # ------------------------------------------------------------------ combine / export
    def _check_compatible(self, other: StatisticsAccumulator) -> None:
        mine = (self.n_layers, self.hidden_size, self.n_classes)
        theirs = (other.n_layers, other.hidden_size, other.n_classes)
        if mine != theirs:
            raise ValueError(f"cannot merge accumulators of shape (L, d, c)={mine} and {theirs}")

    def merge(self, other: StatisticsAccumulator) -> StatisticsAccumulator:
        """Return a new accumulator holding the sums of both (exact: sums are additive)."""
        self._check_compatible(other)
        out = self.copy()
        out._add_(other)  # (0 + self) + other: the same sums as self + other, bit for bit
        return out

    __add__ = merge

    def copy(self) -> StatisticsAccumulator:
        """A new accumulator holding the same sums (independent tensors)."""
        out = StatisticsAccumulator(
            self.n_layers,
            self.hidden_size,
            self.n_classes,
            device=self.device,
            product_dtype=self.product_dtype,
        )
        out._add_(self)  # 0 + x = x exactly: the sums start at +0 and can never be -0
        return out

    def reset_(self) -> None:
        """Zero every sum and count in place (the tensors are reused, not reallocated)."""
        for name in (*_LAYER_SUMS, "label_counts"):
            getattr(self, name).zero_()
        for name in _COUNTS:
            setattr(self, name, 0)

    def _add_(self, other: StatisticsAccumulator) -> None:
        """Add ``other``'s sums into this accumulator in place (the numbers of :meth:`merge`)."""
        self._check_compatible(other)
        for name in (*_LAYER_SUMS, "label_counts"):
            getattr(self, name).add_(getattr(other, name).to(self.device))
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def symmetrize_(self) -> StatisticsAccumulator:
        """Replace Cxx and S0 by their symmetric parts (A + A^T)/2, in place, one layer at a time.

        Both are symmetric by definition; float GEMMs can leave them asymmetric in the last bit
        (Gemma-3-270M's Cxx, measured). Every score reads the symmetric part anyway
        (``eigen.symmetrize``); storing it makes the full and the compact form
        (:func:`pack_statistics`) hold the very same matrices. A no-op for symmetric sums.
        """
        for name in SYMMETRIC_SUMS:
            sums = getattr(self, name)
            for layer in range(self.n_layers):
                matrix = sums[layer]
                matrix.add_(matrix.T.clone()).mul_(0.5)
        return self

    def to_tensors(self, *, compact: bool = False) -> dict[str, Tensor]:
        """Safetensors-ready dict with per-layer keys (``layer{l}.cxx_sum`` ...) and global counts.

        Cxx and S0 are made exactly symmetric first (:meth:`symmetrize_`); ``compact``: stored as
        their upper triangles (:func:`pack_statistics`)."""
        if compact:
            return pack_statistics(self.to_tensors())
        self.symmetrize_()
        out: dict[str, Tensor] = {}
        for li in range(self.n_layers):
            for name in _LAYER_SUMS:
                out[statistics_key(li, name)] = getattr(self, name)[li].contiguous()
        out["label_counts"] = self.label_counts.clone()
        for name in _COUNTS:
            out[name] = torch.tensor([getattr(self, name)], dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, Tensor],
        *,
        device: torch.device | str | None = None,
        product_dtype: torch.dtype = torch.float32,
    ) -> StatisticsAccumulator:
        """Inverse of :meth:`to_tensors` (all layers are loaded; full or compact form)."""
        layers = stored_layers(tensors.keys())
        if not layers or layers != list(range(len(layers))):
            raise NTPSError(
                f"statistics must hold layers 0..L-1 under 'layer{{l}}.*' keys, found {layers}"
            )
        for name in ("label_counts", "n_examples", "n_pairs"):
            if name not in tensors:
                raise NTPSError(f"statistics have no key {name!r}")
        get = _getter(tensors)
        first = tensors[statistics_key(0, "cxy_sum")]
        d, c = first.shape
        dev = torch.device(device) if device is not None else first.device
        acc = cls(len(layers), d, c, device=dev, product_dtype=product_dtype)
        for name in _LAYER_SUMS:
            # Layer by layer into the accumulator's own tensor: with a lazy mapping (e.g. over a
            # safetensors handle) at most one layer is held beside it.
            target = getattr(acc, name)
            for li in layers:
                try:
                    value = get(statistics_key(li, name))
                except KeyError as exc:
                    raise NTPSError(f"statistics have no key {exc.args[0]!r}") from None
                if value.shape != target.shape[1:]:
                    raise NTPSError(
                        f"statistics key '*.{name}' has shape {tuple(value.shape)}, "
                        f"expected {tuple(target.shape[1:])}"
                    )
                target[li].copy_(value)
        acc.label_counts = tensors["label_counts"].to(dev, torch.int64).clone()
        acc.n_examples = int(tensors["n_examples"].reshape(-1)[0])
        acc.n_pairs = int(tensors["n_pairs"].reshape(-1)[0])
        acc.n_texts = (
            int(tensors["n_texts"].reshape(-1)[0]) if "n_texts" in tensors else acc.n_examples
        )
        return acc

    def layer_moments(self, layer: int) -> LayerMoments:
        """Normalised moments of one layer (see :class:`LayerMoments`)."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        sums = {name: getattr(self, name)[layer] for name in _LAYER_SUMS}
        return LayerMoments.from_sums(
            sums, self.label_counts, self.n_examples, self.n_pairs, self.n_texts, layer
        )


def splice_statistics(
    base: Mapping[str, Tensor], upper: StatisticsAccumulator, first_state: int
) -> dict[str, Tensor]:
    """Statistics whose hidden states ``first_state..`` come from ``upper`` and the rest from ``base``.

    ``base`` is a :meth:`StatisticsAccumulator.to_tensors` dict over states ``0..L``; ``upper``
    holds states ``first_state..L`` (its layer ``i`` is state ``first_state + i``) of the same
    texts. Used after LoRA on upper blocks: states below the first adapted block are unchanged, so
    their statistics are the base model's, exactly. Raises NTPSError if the two were not
    accumulated over the same texts, tokens and labels.
    """
    layers = _check_same_texts(base, upper, first_state)
    get = _getter(base)
    upper.symmetrize_()  # as every stored statistic (StatisticsAccumulator.to_tensors)
    out = {key: value for key, value in base.items() if is_count_key(key)}
    for layer in layers:
        for name in _LAYER_SUMS:
            key = statistics_key(layer, name)
            if layer < first_state:
                out[key] = get(key)
            else:
                out[key] = getattr(upper, name)[layer - first_state].cpu().contiguous()
    return out


def upper_statistics(
    base: Mapping[str, Tensor], upper: StatisticsAccumulator, first_state: int
) -> dict[str, Tensor]:
    """What :func:`splice_statistics` takes from ``upper``: its states under their own indices
    (``first_state..L``) and the counts, after the same checks. The states below ``first_state``
    are ``base``'s, so a reader that needs them reads ``base``; this is what the post-LoRA
    statistics file stores (those states' scores are the pre-LoRA scores)."""
    _check_same_texts(base, upper, first_state)
    upper.symmetrize_()
    out = {key: value for key, value in base.items() if is_count_key(key)}
    for i in range(upper.n_layers):
        for name in _LAYER_SUMS:
            out[statistics_key(first_state + i, name)] = getattr(upper, name)[i].cpu().contiguous()
    return out


def _check_same_texts(
    base: Mapping[str, Tensor], upper: StatisticsAccumulator, first_state: int
) -> list[int]:
    """The layers of ``base``; NTPSError unless ``upper`` holds its states ``first_state..`` of
    the same texts, tokens and labels."""
    layers = stored_layers(base.keys())
    n_states = len(layers)
    if first_state < 0 or first_state + upper.n_layers != n_states:
        raise NTPSError(
            f"cannot splice {upper.n_layers} states from state {first_state} into statistics "
            f"of {n_states} states"
        )
    for name in _COUNTS:
        mine = int(base[name].reshape(-1)[0]) if name in base else None
        if mine is not None and mine != getattr(upper, name):
            raise NTPSError(
                f"{name} differs: {mine} in the base statistics, {getattr(upper, name)}"
            )
    if not torch.equal(base["label_counts"].to(torch.int64).cpu(), upper.label_counts.cpu()):
        raise NTPSError("label counts differ between the base and the upper statistics")
    return layers


# --- jackknife shards -------------------------------------------------------------------------


def shard_assignment(n_texts: int, n_shards: int, seed: int) -> list[int]:
    """Shard of each of ``n_texts`` texts: a seeded random permutation dealt round-robin.

    Shard sizes differ by at most one; the same (n_texts, n_shards, seed) gives the same shards.
    """
    if n_shards < 2 or n_texts < n_shards:
        raise ValueError(f"need 2 <= n_shards <= n_texts, got {n_shards} shards of {n_texts} texts")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n_texts, generator=generator).tolist()
    shards = [0] * n_texts
    for position, text in enumerate(order):
        shards[text] = position % n_shards
    return shards


def merge_all(accumulators: Sequence[StatisticsAccumulator]) -> StatisticsAccumulator:
    """The sum of several accumulators over disjoint texts (exact: sums are additive)."""
    if not accumulators:
        raise ValueError("merge_all needs at least one accumulator")
    total = accumulators[0]
    for other in accumulators[1:]:
        total = total.merge(other)
    return total


# --- extraction shards (parts of one split, run as separate jobs) ------------------------------


def merge_parts(
    parts: Iterable[Mapping[int, StatisticsAccumulator]], n_jackknife: int
) -> tuple[StatisticsAccumulator, list[StatisticsAccumulator]]:
    """Statistics of a whole split from its extraction shards ("parts"), per jackknife shard.

    ``parts`` yields, for each part in order, a mapping jackknife shard ``j`` -> statistics of the
    part's texts in shard ``j`` (``j`` in ``0..n_jackknife-1``; only ``0`` when
    ``n_jackknife`` < 2; a part may leave out shards it fed no text). Returns ``(total, shards)``:
    ``shards[j]`` is the sum over parts of their shard-``j`` statistics, in part order, and
    ``total = merge_all(shards)`` as one extraction job computes it; the same numbers as one
    accumulation over all texts up to the order of float64 summation. ``shards`` is empty without
    jackknife. Parts are consumed (the first part's accumulator of a shard is added into); an
    iterator of parts loaded one at a time holds one part in memory beside the running sums.
    """
    n_slots = n_jackknife if n_jackknife >= 2 else 1
    running: dict[int, StatisticsAccumulator] = {}
    for number, part in enumerate(parts):
        for j, acc in sorted(part.items()):
            if not 0 <= j < n_slots:
                raise NTPSError(
                    f"extraction shard {number} holds statistics of jackknife shard {j}, "
                    f"expected 0..{n_slots - 1} (uncertainty.jackknife_shards = {n_jackknife})"
                )
            if j in running:
                running[j]._add_(acc)
            else:
                running[j] = acc
    missing = [j for j in range(n_slots) if j not in running]
    if missing:
        raise NTPSError(f"no extraction shard holds statistics of jackknife shard(s) {missing}")
    shards = [running[j] for j in range(n_slots)]
    if n_jackknife >= 2:
        return merge_all(shards), shards
    return shards[0], []


def check_partition(index_sets: Sequence[Sequence[int]], n: int, what: str) -> None:
    """Raise NTPSError unless ``index_sets`` (one per part) cover ``0..n-1`` exactly once.

    ``what`` names the split in the message (e.g. "train texts of llama/sst2").
    """
    seen = torch.zeros(n, dtype=torch.int64)
    for number, indices in enumerate(index_sets):
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise NTPSError(
                f"{what}: extraction shard {number} holds text positions outside 0..{n - 1}"
            )
        seen += torch.bincount(idx, minlength=n)
    twice = torch.nonzero(seen > 1).flatten().tolist()
    never = torch.nonzero(seen == 0).flatten().tolist()
    if twice or never:
        raise NTPSError(
            f"{what}: the extraction shards do not cover every text exactly once "
            f"({len(never)} missing, e.g. {never[:5]}; {len(twice)} repeated, e.g. {twice[:5]})"
        )


def shard_tensors(shard: StatisticsAccumulator) -> dict[str, Tensor]:
    """One jackknife shard as stored: :meth:`StatisticsAccumulator.to_tensors` with the layer sums
    in float32 (new tensors: the accumulator may be reset or freed afterwards)."""
    out = {}
    for key, value in shard.to_tensors().items():
        out[key] = value.to(torch.float32) if STATISTICS_KEY_RE.match(key) else value.clone()
    return out


def shards_to_tensors(
    shards: Sequence[StatisticsAccumulator | Mapping[str, Tensor]], *, compact: bool = False
) -> dict[str, Tensor]:
    """Safetensors-ready dict of K shards: ``shard{j}.layer{l}.{name}`` and counts.

    Each shard is an accumulator or its :func:`shard_tensors` (what the extraction keeps of a
    finished shard). Layer sums are stored in float32: a leave-one-shard-out replicate is
    ``total - shard_j`` with ``total`` in float64, so the rounding (u32 of one shard, ~u32 / K of
    the total) stays below the precision the scores assume for the statistics
    (``ntps.scores.STATISTICS_PRECISION``). ``compact``: Cxx and S0 as their upper triangles
    (:func:`pack_statistics`), packed one shard at a time.
    """
    out: dict[str, Tensor] = {N_SHARDS_KEY: torch.tensor([len(shards)], dtype=torch.int64)}
    for j, shard in enumerate(shards):
        tensors = shard if isinstance(shard, Mapping) else shard_tensors(shard)
        if compact:
            tensors = pack_statistics(tensors)
        for key, value in tensors.items():
            out[shard_prefix(j) + key] = value
    return out


def shard_count(shards: Any) -> int:
    """K, the number of jackknife shards in :func:`shards_to_tensors` keys (a dict or an open
    safetensors handle)."""
    return int(_getter(shards)(N_SHARDS_KEY).reshape(-1)[0])


def jackknife_replicates(total: Any, shards: Any, layer: int) -> Iterator[LayerMoments]:
    """Leave-one-shard-out moments of one layer, ``total - shard_j`` for j = 0..K-1, one at a time.

    ``total`` holds :meth:`StatisticsAccumulator.to_tensors` keys, ``shards`` the keys of
    :func:`shards_to_tensors`; either may be a dict or an open safetensors handle. A consumer that
    keeps only what it computes from each replicate holds one in memory, not K (K of them are K x
    the layer's statistics).
    """
    get_total, get_shard = _getter(total), _getter(shards)
    n_shards = shard_count(shards)
    sums = {name: get_total(statistics_key(layer, name)).to(_F64) for name in _LAYER_SUMS}
    counts = {name: int(get_total(name).reshape(-1)[0]) for name in _COUNTS}
    label_counts = get_total("label_counts").to(torch.int64)
    for j in range(n_shards):
        prefix = shard_prefix(j)
        rest = {
            name: sums[name] - get_shard(prefix + statistics_key(layer, name)).to(_F64)
            for name in _LAYER_SUMS
        }
        rest_counts = {
            name: counts[name] - int(get_shard(prefix + name).reshape(-1)[0]) for name in _COUNTS
        }
        yield LayerMoments.from_sums(
            rest,
            label_counts - get_shard(prefix + "label_counts").to(torch.int64),
            rest_counts["n_examples"],
            rest_counts["n_pairs"],
            rest_counts["n_texts"],
            layer,
        )


def jackknife_moments(total: Any, shards: Any, layer: int) -> list[LayerMoments]:
    """All K leave-one-shard-out moments of one layer at once (:func:`jackknife_replicates`)."""
    return list(jackknife_replicates(total, shards, layer))
