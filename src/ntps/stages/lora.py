"""Job body of the LoRA stage (rules/lora.smk): fine-tune LoRA adapters and a linear head on one
pair, save them, and write the adapted model's train-split statistics for post-LoRA NTPS (scored
by :mod:`ntps.stages.score`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ntps.datasets import load_prepared
from ntps.io import load_tensor_metadata, load_tensors, provenance, read_json, save_tensors
from ntps.layout import (
    FIRST_RECOMPUTED_STATE_KEY,
    HEAD_BIAS_KEY,
    HEAD_TEST_PREDICTIONS_KEY,
    HEAD_WEIGHT_KEY,
)
from ntps.lora import (
    LoRASettings,
    StoredBlockInputs,
    post_lora_statistics,
    save_lora,
    train_lora_classifier,
)
from ntps.models import load_for_inference, resolve_device
from ntps.stats import is_packed, pack_statistics, upper_statistics
from ntps.text import check_prompt_format

LOG = logging.getLogger("ntps")


def train_lora_pair(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    device_spec: str,
    max_length: int,
    out_adapter_dir: str | Path,
    checkpoint_dir: str | Path | None,
    stats_path: str | Path,
    out_stats: str | Path,
    probe_head_path: str | Path | None = None,
    progress: bool = True,
    prompt_format: str = "raw",
    model_name: str | None = None,
    model_record_path: str | Path | None = None,
    block_inputs_path: str | Path | None = None,
    extraction_batching: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Fine-tune LoRA adapters + a linear head on one dataset, save them, and write the adapted
    model's train-split statistics (post-LoRA NTPS); return the metrics.

    ``stats_path`` holds the pre-LoRA statistics: hidden states below the first adapted block are
    unchanged by LoRA and are copied from there; the others are accumulated from the adapted model.
    ``probe_head_path`` (the probe stage's last-layer head) starts the head when
    ``settings.head_init`` is "probe". ``max_length`` is the extraction's, used unless the LoRA
    settings give their own. ``model_record_path`` (the acquisition record) gives the model's load
    options (remote code), as for the extraction. The frozen lower blocks run in the
    extraction's batches (``extraction_batching``: its batch size and jackknife shards), so their
    outputs are the extraction's bit for bit; ``block_inputs_path`` (the extraction's
    block_inputs.safetensors) gives them when it holds exactly those this job would compute, and
    training and the post-LoRA statistics then read them.
    """
    lora_settings = LoRASettings.from_dict(dict(settings))
    # The same fingerprint check as the extraction: LoRA must train on the texts that were scored.
    prepared = load_prepared(table_path, dataset_record_path)
    table = prepared.frame
    n_classes = len(prepared.label_names)
    initial_head, probe_predictions = None, None
    if lora_settings.head_init == "probe":
        if probe_head_path is None:
            raise ValueError("lora.head_init is 'probe' but no probe head was given")
        head = load_tensors(probe_head_path)
        initial_head = (head[HEAD_WEIGHT_KEY], head[HEAD_BIAS_KEY])
        probe_predictions = head[HEAD_TEST_PREDICTIONS_KEY].tolist()
    device = resolve_device(device_spec)
    # Training always runs in fp32 weights; on CUDA the LoRA code uses bf16 autocast.
    model_name = model_name or Path(model_dir).name
    model_record = read_json(model_record_path) if model_record_path else None
    base_model, tokenizer = load_for_inference(
        model_dir, dtype="float32", device=device, source=model_record, name=model_name
    )
    stored = (
        StoredBlockInputs(
            block_inputs_path,
            prepared.fingerprint,
            model_record.get("provenance") if model_record else None,
            extraction_batching,
        )
        if block_inputs_path is not None
        else None
    )
    check_prompt_format(tokenizer, prompt_format, model_name)
    train = table[table["split"] == "train"]
    test = table[table["split"] == "test"]
    train_labels = train["label"].astype(int).tolist()
    result = train_lora_classifier(
        base_model,
        tokenizer,
        train["text"].tolist(),
        train_labels,
        n_classes,
        lora_settings,
        max_length=max_length,
        initial_head=initial_head,
        device=device,
        test_texts=test["text"].tolist(),
        test_labels=test["label"].astype(int).tolist(),
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        log=LOG.info,
        prompt_format=prompt_format,
        stored_inputs=stored,
        extraction_batching=extraction_batching,
    )
    started = time.perf_counter()
    first_state, upper = post_lora_statistics(
        result.classifier, result.train_inputs, train_labels, lora_settings.eval_batch_size
    )
    # Read only now: the pre-LoRA sums (0.25 GB for SmolLM2) need not sit in memory during training.
    base = load_tensors(stats_path)
    # Only the recomputed states are stored: the ones below are the pre-LoRA statistics, exactly,
    # and so are their scores (rule score_post_lora takes them from the pre-LoRA scores).
    stats = upper_statistics(base, upper, first_state)
    save_tensors(
        out_stats,
        # The pre-LoRA statistics' storage form (storage.compact_statistics) carries over.
        pack_statistics(stats) if is_packed(base) else stats,
        {**load_tensor_metadata(stats_path), FIRST_RECOMPUTED_STATE_KEY: str(first_state)},
    )
    LOG.info(
        "post-LoRA statistics: hidden states %d.. recomputed (0..%d are those of %s) in %.1f s",
        first_state, first_state - 1, stats_path, time.perf_counter() - started,
    )  # fmt: skip
    save_lora(result, out_adapter_dir)
    summary = result.to_dict()
    if probe_predictions is not None:
        agree = [
            a == b
            for a, b in zip(summary["initial_test_predictions"], probe_predictions, strict=True)
        ]
        summary["initial_agreement_with_probe"] = sum(agree) / len(agree) if agree else None
    LOG.info(
        "LoRA: %d steps, test accuracy %.4f (start %s), loss first/last quarter %s / %s, %.1f s",
        summary["steps_done"], summary["test_accuracy"], summary["initial_test_accuracy"],
        summary["loss_first_quarter"], summary["loss_last_quarter"], summary["wall_time_s"],
    )  # fmt: skip
    return {
        **summary,
        "first_recomputed_state": first_state,
        "prompt_format": prompt_format,
        "device": str(device),
        "provenance": provenance(seed=lora_settings.seed),
    }
