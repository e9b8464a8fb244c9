"""Shared fixtures: a tiny random Llama-style causal LM with a locally trained tokenizer, and texts
(the builders are in tests/model_factories.py).

Nothing is downloaded: the tokenizer is a WordLevel vocabulary trained on the fixture texts and the
model is randomly initialised from a config, so the fixtures exercise the real loading code paths
(``from_pretrained`` on a folder) in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from model_factories import build_tiny_llama, build_tiny_tokenizer

# Tiny models gain nothing from intra-op threads, and on a shared, oversubscribed CPU OpenMP threads
# contend so badly that a 3 ms forward takes 0.5 s. One thread unless NTPS_TEST_THREADS says otherwise.
torch.set_num_threads(int(os.environ.get("NTPS_TEST_THREADS", "1")))

TINY_TEXTS = (
    ("the film was a delight from start to finish", 0),
    ("a warm funny and moving story", 0),
    ("great acting and a clever script", 0),
    ("i loved every minute of it", 0),
    ("a beautiful film", 0),
    ("one of the best movies of the year with great music and a warm heart", 0),
    ("charming", 0),
    ("the plot made no sense and the acting was flat", 1),
    ("a boring mess", 1),
    ("i wanted my money back after ten minutes", 1),
    ("dull slow and far too long", 1),
    ("the worst script i have seen in years", 1),
    ("awful", 1),
    ("nothing works in this film not the jokes not the music not the story", 1),
    ("the stock market fell sharply today", 2),
    ("shares rose after the bank reported profit", 2),
    ("the company said sales were up in the year", 2),
    ("markets", 2),
    ("oil prices fell as the bank cut rates", 2),
    ("investors sold shares of the company after the report on profit and sales", 2),
)


class TinyTexts(NamedTuple):
    texts: list[str]
    labels: list[int]
    n_classes: int


@pytest.fixture(scope="session")
def tiny_texts() -> TinyTexts:
    """20 short texts of varied length (1-15 words), 3 classes, labels 0..2."""
    return TinyTexts([t for t, _ in TINY_TEXTS], [y for _, y in TINY_TEXTS], 3)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_texts: TinyTexts) -> Path:
    """Folder with config.json, model.safetensors and tokenizer files of a tiny random Llama."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer(tiny_texts.texts)
    model = build_tiny_llama(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny end-to-end study (tests/workflow_support.py) run once with every target, --cores 2.

    Shared by the end-to-end, determinism and interruption tests, which read it or copy it and
    never change its outputs: each end-to-end run costs minutes on a busy 2-core machine.
    """
    from workflow_support import run_snakemake, write_study

    root = tmp_path_factory.mktemp("tiny-study")
    write_study(root)
    run_snakemake(root)
    return root
