"""Training the LoRA classifier, evaluating it, the adapted model's statistics, saving it."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntps.blocks import upper_forward
from ntps.errors import DatasetError, NumericalError
from ntps.io import atomic_directory, save_tensors, write_json
from ntps.lora.checkpoint import Progress, restore_latest, run_key, save_checkpoint, seed_everything
from ntps.lora.classifier import LoRAClassifier, build_classifier, set_head
from ntps.lora.inputs import (
    StoredBlockInputs,
    TextInputs,
    check_labels,
    configure_split,
    sample_order,
)
from ntps.lora.settings import LoRASettings
from ntps.probes import classification_metrics
from ntps.stats import StatisticsAccumulator
from ntps.text import forward_kwargs, length_batches

HEAD_FILE = "head.safetensors"
META_FILE = "lora_classifier.json"


@dataclass
class LoRAResult:
    """Outcome of :func:`train_lora_classifier`; ``to_dict`` gives the JSON-ready summary."""

    classifier: LoRAClassifier
    settings: LoRASettings
    target_modules: list[str]
    loss_curve: list[float]  # mean training loss of each optimizer step
    steps_done: int
    resumed_from_step: int
    wall_time_s: float  # this call
    train_time_s_total: float  # summed over resumed runs
    trainable_params: int
    n_train: int
    n_train_truncated: int
    max_length: int
    head_init: str
    first_adapted_block: int | None  # where the two-part run splits the model; None = whole
    inputs_cached: bool
    train_inputs: TextInputs | None = field(default=None, repr=False)
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    test_predictions: list[int] = field(default_factory=list)
    test_logits: torch.Tensor | None = None
    initial_test_accuracy: float | None = None
    initial_test_predictions: list[int] = field(default_factory=list)
    n_test: int = 0
    n_test_truncated: int = 0

    def to_dict(self) -> dict[str, Any]:
        first, last = quarter_means(self.loss_curve)
        return {
            "settings": self.settings.to_dict(),
            "target_modules": self.target_modules,
            "head_init": self.head_init,
            "max_length": self.max_length,
            "first_adapted_block": self.first_adapted_block,
            "inputs_cached": self.inputs_cached,
            "loss_curve": self.loss_curve,
            "loss_first_quarter": first,
            "loss_last_quarter": last,
            "steps_done": self.steps_done,
            "resumed_from_step": self.resumed_from_step,
            "wall_time_s": self.wall_time_s,
            "train_time_s_total": self.train_time_s_total,
            "seconds_per_step": (self.train_time_s_total / self.steps_done)
            if self.steps_done
            else None,
            "trainable_params": self.trainable_params,
            "n_train": self.n_train,
            "n_train_truncated": self.n_train_truncated,
            "n_test": self.n_test,
            "n_test_truncated": self.n_test_truncated,
            "initial_test_accuracy": self.initial_test_accuracy,
            "initial_test_predictions": self.initial_test_predictions,
            "test_accuracy": self.test_accuracy,
            "test_macro_f1": self.test_macro_f1,
            "test_predictions": self.test_predictions,
        }


def quarter_means(curve: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean training loss over the first and the last quarter of the steps (None if < 4 steps)."""
    quarter = len(curve) // 4
    if quarter == 0:
        return None, None
    return float(np.mean(curve[:quarter])), float(np.mean(curve[-quarter:]))


# --------------------------------------------------------------------------------------------
# optimisation


def _make_optimizer(classifier: LoRAClassifier, settings: LoRASettings) -> torch.optim.Optimizer:
    adapter = [p for n, p in classifier.peft_model.named_parameters() if p.requires_grad]
    head = list(classifier.head.parameters())
    head_lr = settings.head_lr if settings.head_lr is not None else settings.learning_rate
    groups = [
        {"params": adapter, "lr": settings.learning_rate},
        {"params": head, "lr": head_lr},
    ]
    if settings.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups,
            lr=settings.learning_rate,
            relative_step=False,
            scale_parameter=False,
            warmup_init=False,
            weight_decay=settings.weight_decay,
        )
    return torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, settings: LoRASettings) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if settings.lr_schedule == "constant" else settings.lr_schedule
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=settings.num_warmup_steps(),
        num_training_steps=settings.max_steps,
    )


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when supported; CPU trains in the model's dtype (fp32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# training


def train_lora_classifier(
    base_model: nn.Module,
    tokenizer: Any,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    n_classes: int,
    settings: LoRASettings,
    *,
    max_length: int | None = None,
    initial_head: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    test_texts: Sequence[str] | None = None,
    test_labels: Sequence[int] | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], Any] = print,
    on_step: Callable[[int, float], Any] | None = None,
    prompt_format: str = "raw",
    stored_inputs: StoredBlockInputs | None = None,
    extraction_batching: Mapping[str, int] | None = None,
) -> LoRAResult:
    """Fine-tune LoRA adapters + head with cross-entropy; evaluate on the test split if given.

    Texts are cut to ``settings.max_length`` tokens, else ``max_length`` (the extraction's), else
    512. ``initial_head`` (weight (c, d), bias (c,)) starts the head from a fitted probe; the test
    split is then also evaluated before the first step (``initial_test_*``), which reproduces the
    probe's predictions when the texts are cut as in the extraction. When adapters sit on upper
    blocks only, the frozen lower blocks run once per text (:class:`TextInputs`).

    Each optimizer step averages ``grad_accum_steps`` micro-batches of ``batch_size`` texts taken
    from a seeded per-epoch permutation; gradients are clipped to ``max_grad_norm``. With
    ``checkpoint_dir`` and ``checkpoint_every > 0`` the run saves its full state periodically and at
    the end, and resumes from the latest checkpoint there (same result as an uninterrupted run).
    ``on_step(step, loss)`` is called after every optimizer step (e.g. for a time budget).
    ``extraction_batching`` (the extraction's ``batch_size``, ``jackknife_shards``,
    ``jackknife_seed``) runs the lower blocks in the extraction's batches, so that their outputs
    are the extraction's bit for bit; ``stored_inputs``, the extraction's copy of them, is then
    used instead of running them when it holds exactly what they would give here
    (:meth:`StoredBlockInputs.load`).
    """
    train_y, test_y = _checked_labels(train_texts, train_labels, test_texts, test_labels, n_classes)
    device = torch.device(device) if device is not None else next(base_model.parameters()).device
    start_time = time.perf_counter()
    limit = settings.max_length or max_length or 512

    # The order of everything that draws random numbers (adapter and head initialisation here,
    # dropout in the steps) is what makes a run reproducible: seed first, build, then train.
    seed_everything(settings.seed)
    base_model.to(device)
    classifier = build_classifier(base_model, n_classes, settings).to(device)
    classifier.prompt_format = prompt_format
    if initial_head is not None:
        set_head(classifier, *initial_head)
    targets = classifier.target_modules
    optimizer = _make_optimizer(classifier, settings)
    scheduler = _make_scheduler(optimizer, settings)
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    log(f"LoRA: targets {targets}, {trainable:,} trainable parameters, {settings.max_steps} steps")

    classifier.eval()
    train_inputs, test_inputs = _prepare_inputs(
        classifier, tokenizer, train_texts, test_texts, limit, device, settings.eval_batch_size,
        stored_inputs, log, extraction_batching,
    )  # fmt: skip
    ready = time.perf_counter() - start_time
    log(f"LoRA: {_describe_split(train_inputs)}; ready after {ready:.1f} s")
    initial_logits = None
    if test_inputs is not None and initial_head is not None:
        initial_logits = predict_inputs(classifier, test_inputs, settings.eval_batch_size)

    key = run_key(settings, limit, classifier, n_classes, train_texts, train_y)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = Progress()
    if ckpt_dir is not None:
        state = restore_latest(ckpt_dir, classifier, optimizer, scheduler, key)
        if state.restored_from is not None:
            log(
                f"LoRA: resumed from {state.restored_from} at step {state.step}/{settings.max_steps}"
            )
    resumed_from = state.step

    _train_steps(
        classifier, optimizer, scheduler, train_inputs, train_y, settings, device, state,
        checkpoint_dir=ckpt_dir, key=key, start_time=start_time, show_progress=progress,
        on_step=on_step,
    )  # fmt: skip
    train_time = time.perf_counter() - start_time

    result = LoRAResult(
        classifier=classifier,
        settings=settings,
        target_modules=targets,
        loss_curve=state.loss_curve,
        steps_done=state.step,
        resumed_from_step=resumed_from,
        wall_time_s=train_time,
        train_time_s_total=state.time_before + train_time,
        trainable_params=trainable,
        n_train=len(train_y),
        n_train_truncated=train_inputs.n_truncated,
        max_length=limit,
        head_init="probe" if initial_head is not None else "random",
        first_adapted_block=classifier.start,
        inputs_cached=train_inputs.cached is not None,
        train_inputs=train_inputs,
    )
    if test_inputs is not None and test_y is not None:
        _evaluate(result, test_inputs, test_y, n_classes, initial_logits)
        log(f"LoRA: test accuracy {result.test_accuracy:.4f}, macro-F1 {result.test_macro_f1:.4f}")
    result.wall_time_s = time.perf_counter() - start_time
    return result


def _checked_labels(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str] | None,
    test_labels: Sequence[int] | None,
    n_classes: int,
) -> tuple[list[int], list[int] | None]:
    """The train and test labels as ints, checked; DatasetError naming what is wrong."""
    if n_classes < 2:
        raise DatasetError(f"LoRA needs at least 2 classes, got n_classes={n_classes}")
    train_y = check_labels(train_texts, train_labels, n_classes, "train")
    if not train_y:
        raise DatasetError("LoRA train split is empty")
    test_y = None
    if test_texts is not None:
        if test_labels is None:
            raise DatasetError("LoRA: test_texts given without test_labels")
        test_y = check_labels(test_texts, test_labels, n_classes, "test")
    return train_y, test_y


def _prepare_inputs(
    classifier: LoRAClassifier,
    tokenizer: Any,
    train_texts: Sequence[str],
    test_texts: Sequence[str] | None,
    max_length: int,
    device: torch.device,
    batch_size: int,
    stored: StoredBlockInputs | None = None,
    log: Callable[[str], Any] = print,
    batching: Mapping[str, int] | None = None,
) -> tuple[TextInputs, TextInputs | None]:
    """Decide where the model splits in two (``classifier.start``), then prepare both splits:
    their block inputs computed in ``batching``'s batches, or read from ``stored`` when it holds
    exactly those (one line says why not)."""
    configure_split(classifier, tokenizer, train_texts, max_length, device)
    train_inputs = TextInputs(
        classifier, tokenizer, train_texts, max_length, device, batch_size, stored, "train",
        batching,
    )  # fmt: skip
    test_inputs = None
    if test_texts is not None:
        test_inputs = TextInputs(
            classifier, tokenizer, test_texts, max_length, device, batch_size, stored, "test",
            batching,
        )  # fmt: skip
    reasons = {
        split: inputs.not_stored
        for split, inputs in (("train", train_inputs), ("test", test_inputs))
        if inputs is not None and inputs.not_stored
    }
    if stored is not None and reasons:
        why = (
            next(iter(reasons.values()))
            if len(set(reasons.values())) == 1
            else "; ".join(f"{split}: {reason}" for split, reason in reasons.items())
        )
        log(f"LoRA: inputs of block {classifier.start} computed here, not read from {stored.path}: "
            f"{why}")  # fmt: skip
    return train_inputs, test_inputs


def _describe_split(inputs: TextInputs) -> str:
    start = inputs.classifier.start
    if start is None:
        return "the whole model runs at every step"
    kept = "recomputed per batch" if inputs.cached is None else f"kept in memory, {inputs.source}"
    return f"blocks {start}.. run at every step on the inputs of block {start} ({kept})"


def _train_steps(
    classifier: LoRAClassifier,
    optimizer: Any,
    scheduler: Any,
    inputs: TextInputs,
    labels: Sequence[int],
    settings: LoRASettings,
    device: torch.device,
    state: Progress,
    *,
    checkpoint_dir: Path | None,
    key: dict[str, Any],
    start_time: float,
    show_progress: bool,
    on_step: Callable[[int, float], Any] | None,
) -> None:
    """Optimizer steps from ``state.step`` up to ``settings.max_steps``, recorded in ``state``;
    a checkpoint every ``checkpoint_every`` steps and after the last one."""
    from tqdm.auto import tqdm

    classifier.train()
    micro_per_step = settings.grad_accum_steps * settings.batch_size
    bar = tqdm(
        total=settings.max_steps, initial=state.step, disable=not show_progress, desc="LoRA",
        unit="step",
    )  # fmt: skip
    running = None
    while state.step < settings.max_steps:
        order = sample_order(
            len(labels), settings.seed, state.step * micro_per_step, micro_per_step
        )
        step_loss = _optimizer_step(
            classifier,
            optimizer,
            scheduler,
            inputs,
            labels,
            order,
            settings,
            device,
            state.step + 1,
        )
        state.step += 1
        state.loss_curve.append(step_loss)
        running = step_loss if running is None else 0.9 * running + 0.1 * step_loss
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if (
            checkpoint_dir is not None
            and settings.checkpoint_every > 0
            and (state.step % settings.checkpoint_every == 0 or state.step == settings.max_steps)
        ):
            elapsed = state.time_before + time.perf_counter() - start_time
            save_checkpoint(
                checkpoint_dir,
                state.step,
                classifier,
                optimizer,
                scheduler,
                {"run_key": key, "loss_curve": state.loss_curve, "train_time_s": elapsed},
            )
        if on_step is not None:
            on_step(state.step, step_loss)
    bar.close()
    classifier.eval()


def _optimizer_step(
    classifier: LoRAClassifier,
    optimizer: Any,
    scheduler: Any,
    inputs: TextInputs,
    labels: Sequence[int],
    order: Sequence[int],
    settings: LoRASettings,
    device: torch.device,
    step_number: int,
) -> float:
    """One optimizer step on the texts ``order``: ``grad_accum_steps`` micro-batches of
    ``batch_size``, gradients clipped. Returns the step's mean loss."""
    optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    for m in range(settings.grad_accum_steps):
        idx = order[m * settings.batch_size : (m + 1) * settings.batch_size]
        batch, mask, positions = inputs.batch(idx)
        targets = torch.tensor([labels[i] for i in idx], dtype=torch.long, device=device)
        with _autocast(device):
            _, loss = classifier(batch, mask, positions, targets)
        (loss / settings.grad_accum_steps).backward()
        step_loss += float(loss.detach()) / settings.grad_accum_steps
    if not math.isfinite(step_loss):
        raise NumericalError(
            f"LoRA training loss is {step_loss} at step {step_number}; lower lora.learning_rate "
            f"(now {settings.learning_rate}) or check the data"
        )
    torch.nn.utils.clip_grad_norm_(
        [p for p in classifier.parameters() if p.requires_grad], settings.max_grad_norm
    )
    optimizer.step()
    scheduler.step()
    return step_loss


# --------------------------------------------------------------------------------------------
# evaluation


def _evaluate(
    result: LoRAResult,
    test_inputs: TextInputs,
    test_y: Sequence[int],
    n_classes: int,
    initial_logits: torch.Tensor | None,
) -> None:
    """Fill ``result``'s test fields: the trained classifier's, and the untrained one's
    (``initial_logits``, when the head started from a probe)."""
    logits = predict_inputs(result.classifier, test_inputs, result.settings.eval_batch_size)
    result.test_logits = logits
    result.test_predictions = logits.argmax(-1).tolist()
    result.test_accuracy, result.test_macro_f1 = classification_metrics(
        test_y, result.test_predictions, n_classes
    )
    if initial_logits is not None:
        result.initial_test_predictions = initial_logits.argmax(-1).tolist()
        result.initial_test_accuracy = classification_metrics(
            test_y, result.initial_test_predictions, n_classes
        )[0]
    result.n_test = len(test_y)
    result.n_test_truncated = test_inputs.n_truncated


@torch.no_grad()
def predict_inputs(classifier: LoRAClassifier, inputs: TextInputs, batch_size: int) -> torch.Tensor:
    """Logits (N, c) fp32 on CPU, in input order; batches sorted by length to limit padding."""
    was_training = classifier.training
    classifier.eval()
    out = torch.empty((len(inputs), classifier.n_classes), dtype=torch.float32)
    for chunk in length_batches([len(seq) for seq in inputs.ids], batch_size):
        batch = inputs.batch(chunk)
        with _autocast(inputs.device):
            logits, _ = classifier(*batch)
        out[torch.tensor(chunk)] = logits.float().cpu()
    classifier.train(was_training)
    return out


@torch.no_grad()
def post_lora_statistics(
    classifier: LoRAClassifier,
    inputs: TextInputs,
    labels: Sequence[int],
    batch_size: int,
) -> tuple[int, StatisticsAccumulator]:
    """NTPS statistics of the adapted model on ``inputs`` (the train split), for the hidden states
    adapters can change: ``(first_state, accumulator)`` with the accumulator's layer ``i`` being
    hidden state ``first_state + i``. States below ``first_state`` are those of the base model."""
    was_training = classifier.training
    classifier.eval()
    start = classifier.start
    first_state = 0 if start is None else start + 1
    label_tensor = torch.as_tensor(list(labels), dtype=torch.long)
    accumulator: StatisticsAccumulator | None = None
    for chunk in length_batches([len(seq) for seq in inputs.ids], batch_size):
        batch, mask, positions = inputs.batch(chunk)
        if start is None:
            out = classifier.peft_model(
                input_ids=batch, output_hidden_states=True,
                **forward_kwargs(classifier.peft_model, mask, positions),
            )  # fmt: skip
            states = list(out.hidden_states)
        else:
            _, states = upper_forward(
                classifier.peft_model, batch, mask, positions, start, keep_states=True
            )
        if accumulator is None:
            accumulator = StatisticsAccumulator(
                len(states), states[0].shape[-1], classifier.n_classes, device=mask.device
            )
        accumulator.update(states, mask, label_tensor[chunk].to(mask.device))
    classifier.train(was_training)
    if accumulator is None:
        raise DatasetError("post-LoRA statistics: no training texts")
    return first_state, accumulator


# --------------------------------------------------------------------------------------------
# saving


def save_lora(
    result_or_model: LoRAResult | LoRAClassifier, path_dir: str | os.PathLike[str]
) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (peft) and ``head.safetensors``
    (+ a small JSON) into ``path_dir``, atomically (temp folder renamed into place)."""
    classifier = (
        result_or_model.classifier if isinstance(result_or_model, LoRAResult) else result_or_model
    )
    final = Path(path_dir)
    with atomic_directory(final) as tmp:
        classifier.peft_model.save_pretrained(str(tmp))
        save_tensors(
            tmp / HEAD_FILE,
            {"weight": classifier.head.weight, "bias": classifier.head.bias},
            {"n_classes": str(classifier.n_classes)},
        )
        meta: dict[str, Any] = {
            "n_classes": classifier.n_classes,
            "pooling": "masked mean of hidden_states[-1]",
        }
        if isinstance(result_or_model, LoRAResult):
            meta["settings"] = result_or_model.settings.to_dict()
            meta["target_modules"] = result_or_model.target_modules
        write_json(tmp / META_FILE, meta)
    return final
