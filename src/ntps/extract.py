"""One batched, length-bucketed forward pass giving pooled features (and train statistics).

Texts become token ids, padded batches and pooled features through :mod:`ntps.text`, the path the
LoRA stage shares. Texts are sorted by length and batched so each batch is padded only to its own
longest text.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ntps.errors import NumericalError
from ntps.stats import StatisticsAccumulator, merge_all, shard_assignment, shard_tensors
from ntps.text import (
    context_length,
    forward_kwargs,
    length_batches,
    masked_mean_pool,
    pad_batch,
    pad_token_id,
    tokenize_all,
)

LOG = logging.getLogger(__name__)


@dataclass
class ExtractionResult:
    """Pooled features ``(n_layers + 1, N, d)`` float32 in input order, plus run counters."""

    pooled: torch.Tensor
    statistics: StatisticsAccumulator | None
    n_texts: int
    n_tokens: int
    n_truncated: int
    n_batches: int
    max_length: int
    seconds: float
    #: With ``n_shards``: each jackknife shard as stored (:func:`ntps.stats.shard_tensors`;
    #: ``statistics`` is their sum). For one part of a split (``part``): one accumulator per
    #: jackknife shard (one without jackknife), those the part never fed left empty, and
    #: ``statistics`` None.
    shards: list[StatisticsAccumulator] | list[dict[str, torch.Tensor]] | None = None
    #: Positions in ``texts`` of the rows of ``pooled`` (ascending); None: every text, in order.
    indices: list[int] | None = None
    #: The part's batches ``[first, last)`` of the split's ``n_batches_total`` planned batches.
    batch_range: tuple[int, int] | None = None
    n_batches_total: int | None = None
    #: Texts in the whole split (``n_texts`` when the result is the whole split).
    n_texts_split: int | None = None
    #: With ``keep_state``: hidden state ``keep_state`` of every real token (n_tokens, d), texts in
    #: input order, in the dtype the model produced, and its offsets (N + 1,) int64 (text i is
    #: rows ``offsets[i]:offsets[i+1]``); None when not asked or above ``keep_state_max_bytes``.
    block_states: torch.Tensor | None = None
    block_offsets: torch.Tensor | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-able counters for extract.json."""
        n_layers_plus_one, _, hidden = self.pooled.shape
        return {
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "n_truncated": self.n_truncated,
            "n_batches": self.n_batches,
            "max_length": self.max_length,
            "n_layers": n_layers_plus_one - 1,
            "hidden_size": hidden,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
        }


def _model_label(model: torch.nn.Module) -> str:
    """A name for messages: the folder or hub id the model was loaded from, else its class."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)


def _strip_head(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack of a *ForCausalLM (its LM head is never needed); other models as given."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel) and model.base_model is not model:
        return model.base_model
    return model


def extract_features(
    base_model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | None,
    n_classes: int,
    *,
    batch_size: int,
    max_length: int,
    accumulate_statistics: bool,
    device: str | torch.device = "cpu",
    progress: bool = True,
    product_dtype: torch.dtype = torch.float32,
    name: str | None = None,
    prompt_format: str = "raw",
    n_shards: int = 0,
    shard_seed: int = 0,
    part: tuple[int, int] = (0, 1),
    keep_state: int | None = None,
    keep_state_max_bytes: int | None = None,
) -> ExtractionResult:
    """Mean-pooled hidden states of every layer (0 = embeddings) for ``texts``.

    With ``accumulate_statistics`` (the train split) the NTPS sufficient statistics are streamed
    into a StatisticsAccumulator on the way; ``labels`` are then required. Only the pooled
    features are kept, so memory is O(N d L) plus one batch of hidden states.

    ``n_shards`` >= 2 also keeps the statistics of that many disjoint random shards of the texts
    (:func:`ntps.stats.shard_assignment` with ``shard_seed``) for the jackknife; batches are then
    formed within shards, in shard order, so one float64 shard accumulator is live at a time:
    a finished shard is added into the total (in shard order, as :func:`ntps.stats.merge_all`
    sums them) and kept in its stored float32 form (memory: the total, one shard, and n_shards
    times half the statistics).

    ``part = (index, count)`` with count > 1 runs only the index-th of ``count`` contiguous,
    cost-balanced ranges of the split's batch plan (:func:`plan_batches`, the same batches as the
    whole run): ``pooled`` then holds the part's texts (positions ``indices``), ``shards`` its
    per-jackknife-shard statistics (merged across parts by :func:`ntps.stats.merge_parts`), and
    ``n_truncated`` still counts the whole split (every part tokenises every text).

    ``keep_state`` (whole splits only) also keeps hidden state ``keep_state`` of every real token
    (``block_states``, ``block_offsets``): the inputs of LoRA's first adapted block, which the LoRA
    job then need not recompute; not kept when they would exceed ``keep_state_max_bytes``.
    """
    name = name or _model_label(base_model)
    if accumulate_statistics and labels is None:
        raise ValueError(f"{name}: accumulate_statistics=True needs labels")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{name}: {len(texts)} texts but {len(labels)} labels")
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"{name}: batch_size and max_length must be >= 1")
    device = torch.device(device)
    base_model = _strip_head(base_model)
    context = context_length(base_model)
    limit = min(max_length, context) if context else max_length

    token_ids, n_truncated = tokenize_all(tokenizer, texts, limit, prompt_format)
    if n_truncated:
        LOG.warning(
            "%s: %d of %d texts are longer than %d tokens (min of max_length %d and the model "
            "context %s) and were truncated to their first %d tokens",
            name, n_truncated, len(texts), limit, max_length, context, limit,
        )  # fmt: skip
    lengths = [len(seq) for seq in token_ids]
    if min(lengths, default=1) == 0:
        empty = lengths.index(0)
        raise ValueError(f"{name}: text #{empty} tokenises to no tokens; drop empty texts first")
    sharded = accumulate_statistics and n_shards >= 2
    shard_of = shard_assignment(len(texts), n_shards, shard_seed) if sharded else None
    batches, batch_shard = plan_batches(lengths, batch_size, shard_of)
    n_batches_total = len(batches)
    index, n_parts = part
    if not 0 <= index < n_parts:
        raise ValueError(f"{name}: part {index} of {n_parts} does not exist")
    if n_parts == 1:
        first, last = 0, len(batches)
    else:
        # The job checks that a split has enough batches before it loads the model
        # (ntps.stages.extract); balanced_ranges refuses more parts than batches.
        first, last = balanced_ranges(batch_costs(batches, lengths), n_parts)[index]
    batches, batch_shard = batches[first:last], batch_shard[first:last]
    indices = sorted(i for batch in batches for i in batch)
    # Row of each text in this part's features (the identity when the part is the whole split).
    row_of = {i: row for row, i in enumerate(indices)}
    # Layer count and width come from the first batch's outputs, not config attribute names,
    # which differ between architectures (e.g. OpenELM's num_transformer_layers/model_dim).
    features: torch.Tensor | None = None
    accumulators: list[StatisticsAccumulator] = []
    # Whole split with jackknife shards: the shards' batches are contiguous, in shard order.
    streamed = sharded and n_parts == 1
    finished: list[dict[str, torch.Tensor]] = []  # stored form of each finished shard
    total: StatisticsAccumulator | None = None
    live = 0  # the shard the live accumulator holds

    def finish_live() -> None:
        nonlocal total, live
        acc = accumulators[0]
        # Normal tensors (as the accumulators'), so the total can be added into after the loop.
        with torch.inference_mode(False):
            if total is None:
                total = acc.copy()
            else:
                total._add_(acc)  # before shard_tensors symmetrizes the shard: merge_all's sums
            finished.append(shard_tensors(acc))
            acc.reset_()
        live += 1

    if keep_state is not None and n_parts != 1:
        raise ValueError(f"{name}: keep_state needs the whole split, not part {index} of {n_parts}")
    offsets = [0, *itertools.accumulate(lengths)]  # text i: tokens offsets[i]:offsets[i+1]
    kept: torch.Tensor | None = None
    label_tensor = torch.as_tensor(list(labels), dtype=torch.long) if labels is not None else None
    pad_id = pad_token_id(tokenizer)

    start = time.perf_counter()
    bar = tqdm(
        total=len(texts), desc=f"extract {name}", unit="text", file=sys.stderr,
        disable=not progress, dynamic_ncols=True,
    )  # fmt: skip
    with torch.inference_mode():
        for batch, shard in zip(batches, batch_shard, strict=True):
            input_ids, mask, positions = pad_batch([token_ids[i] for i in batch], pad_id, device)
            out = base_model(
                input_ids=input_ids, output_hidden_states=True,
                **forward_kwargs(base_model, mask, positions),
            )  # fmt: skip
            hidden = out.hidden_states
            if features is None:
                n_states, hidden_size = len(hidden), hidden[0].shape[-1]
                # Normal (not inference-mode) tensors, so callers may modify or keep updating
                # them after this function returns.
                with torch.inference_mode(False):
                    features = torch.empty(n_states, len(indices), hidden_size, dtype=torch.float32)
                    if accumulate_statistics:
                        accumulators = [
                            StatisticsAccumulator(
                                n_states,
                                hidden_size,
                                n_classes,
                                device=device,
                                product_dtype=product_dtype,
                            )
                            for _ in range(n_shards if sharded and not streamed else 1)
                        ]
                    state = hidden[keep_state] if keep_state is not None else None
                    if state is not None and (
                        keep_state_max_bytes is None
                        or offsets[-1] * hidden_size * state.element_size() <= keep_state_max_bytes
                    ):
                        kept = torch.empty(offsets[-1], hidden_size, dtype=state.dtype)
            if accumulators:
                while streamed and live < shard:
                    finish_live()
                try:
                    pooled = accumulators[0 if streamed else shard].update(
                        hidden, mask, label_tensor[batch].to(device)
                    )
                except NumericalError as exc:  # the accumulator does not know the model's name
                    raise NumericalError(f"{name}: {exc}") from exc
            else:
                pooled = torch.stack([masked_mean_pool(h, mask) for h in hidden])
            features[:, [row_of[i] for i in batch]] = pooled.float().cpu()
            if kept is not None:
                for row, i in enumerate(batch):
                    kept[offsets[i] : offsets[i + 1]] = hidden[keep_state][row, : lengths[i]]
            del out, hidden, pooled
            bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    if features is None:
        raise ValueError(f"{name}: no texts to extract features from")

    whole = n_parts == 1
    shards: list[Any] | None = None
    if streamed:
        while live < n_shards:
            finish_live()
        accumulator, shards = total, finished
    elif accumulators and whole:
        accumulator = merge_all(accumulators)
    else:
        # A part's statistics are merged with the other parts' per jackknife shard, not here.
        accumulator = None
        shards = accumulators or None
    if not accumulators:
        # The accumulator checks finiteness itself; without it, check the pooled features.
        finite = torch.isfinite(features).flatten(1).all(dim=1)
        if not bool(finite.all()):
            layer = int((~finite).nonzero()[0])
            raise NumericalError(
                f"{name}: non-finite pooled hidden states at layer {layer}; load the model in "
                f"bfloat16 or float32 (`dtype:` of the model entry; float16 activations overflow "
                f"in many LLMs) or use a shorter max_length"
            )
    return ExtractionResult(
        pooled=features,
        statistics=accumulator,
        n_texts=len(indices),
        n_tokens=int(sum(lengths[i] for i in indices)),
        n_truncated=int(n_truncated),
        n_batches=len(batches),
        max_length=limit,
        seconds=seconds,
        shards=shards,
        indices=None if whole else indices,
        batch_range=None if whole else (first, last),
        n_batches_total=n_batches_total,
        n_texts_split=len(texts),
        block_states=kept,
        block_offsets=torch.tensor(offsets, dtype=torch.int64) if kept is not None else None,
    )


def plan_batches(
    lengths: Sequence[int], batch_size: int, shard_of: Sequence[int] | None = None
) -> tuple[list[list[int]], list[int]]:
    """The batches of a split and the jackknife shard each batch feeds.

    ``lengths`` (N,) token counts; ``shard_of`` (N,) jackknife shard of each text, or None. Batches
    are length-sorted (:func:`ntps.text.length_batches`) within each jackknife shard, shards in
    order, so every batch feeds one shard accumulator; without shards, over all texts (shard 0).
    The plan depends only on the lengths, so every extraction shard of a split computes the same
    one and takes its own range of it.
    """
    if shard_of is None:
        batches = length_batches(lengths, batch_size)
        return batches, [0] * len(batches)
    n_shards = max(shard_of) + 1
    members: list[list[int]] = [[] for _ in range(n_shards)]
    for i, j in enumerate(shard_of):
        members[j].append(i)
    batches, batch_shard = [], []
    for j, idx in enumerate(members):
        for local in length_batches([lengths[i] for i in idx], batch_size):
            batches.append([idx[i] for i in local])
            batch_shard.append(j)
    return batches, batch_shard


def batch_costs(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[int]:
    """Padded tokens of each batch (rows x its longest text): the work of its forward pass."""
    return [len(batch) * max(lengths[i] for i in batch) for batch in batches]


def balanced_ranges(costs: Sequence[float], n_parts: int) -> list[tuple[int, int]]:
    """Split ``len(costs)`` items into ``n_parts`` contiguous non-empty ranges ``[first, last)``
    of about equal total cost: each boundary is the one closest to its share of the total.

    ``n_parts`` must lie in ``1..len(costs)``. Deterministic, so every extraction shard job of a
    split computes the same ranges.
    """
    n = len(costs)
    if not 1 <= n_parts <= n:
        raise ValueError(f"cannot split {n} batches into {n_parts} non-empty parts")
    cumulative = [0.0]
    for cost in costs:
        cumulative.append(cumulative[-1] + float(cost))
    total = cumulative[-1]
    bounds = [0]
    for part in range(1, n_parts):
        target = total * part / n_parts
        lo, hi = bounds[-1] + 1, n - (n_parts - part)  # leave >= 1 item per remaining part
        best = min(range(lo, hi + 1), key=lambda b: (abs(cumulative[b] - target), b))
        bounds.append(best)
    bounds.append(n)
    return list(itertools.pairwise(bounds))
