"""Shared fixtures: a tiny random Llama-style causal LM with a locally trained tokenizer, and texts
(the builders are in tests/model_factories.py).

Nothing is downloaded: the tokenizer is a WordLevel vocabulary trained on the fixture texts and the
model is randomly initialised from a config, so the fixtures exercise the real loading code paths
(``from_pretrained`` on a folder) in well under a second.
"""

from __future__ import annotations

import fcntl
import os
import shutil
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


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """``build(folder)`` once per test run, also across pytest-xdist workers: the first worker to
    ask builds under a lock, the others wait for it and reuse the folder (xdist's own session
    fixtures are per worker)."""
    base = tmp_path_factory.getbasetemp()
    # Workers' base folders (popen-gw0, ...) share the run's folder; without xdist, our own.
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():  # first, or the one before failed: build from scratch
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny end-to-end study (tests/workflow_support.py) run once with every target, --cores 2.

    Shared by the end-to-end, determinism, interruption, sharding, storage and SLURM tests, which
    read it or copy it and never change its outputs: each end-to-end run costs minutes on a busy
    2-core machine. Built once per test run, whichever worker asks first.
    """
    from workflow_support import run_snakemake, write_study

    def build(root: Path) -> None:
        write_study(root)
        run_snakemake(root)

    return built_once(tmp_path_factory, "tiny-study", build)


@pytest.fixture(scope="session")
def interrupted_study(tiny_study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the tiny study whose LoRA dataset was redone on one core through two SIGTERM
    stops, a SIGKILL during LoRA and a run to the end (workflow_support.interruption_scenario):
    the interruption tests check the stops, the determinism tests compare its outputs with the
    two-core reference."""
    from workflow_support import interruption_scenario

    return interruption_scenario(tiny_study, tmp_path_factory.mktemp("interrupted") / "study")


# How `make unit` spreads the suite over pytest-xdist workers: whole modules, so a module-scoped
# fixture (a trained LoRA, the SLURM scenario) is built once, and the modules that run Snakemake
# inside the session's tiny study or copy it together (a copy must not catch another worker's
# run in it). Other modules read the tiny study from any worker (`built_once`). (xdist's own
# `loadgroup` mode does not group under pytest 9, which ignores the node ids it rewrites.)
TINY_STUDY_MODULES = ("test_workflow.py", "test_determinism.py", "test_interruptions.py")
# The longest groups first, so the workers start them at once and finish together: the SLURM
# scenario (mostly waiting on the cluster), the tiny study and the runs made from it, the module
# deployment, the remote-code workflow, the sharded and compact-storage runs (which compare with
# the tiny study), the paper config's dry run. The rest fills in behind them.
LONG_GROUPS = (
    "test_slurm.py", "tiny_study", "test_deploy.py", "test_remote_code.py",
    "test_extraction_shards.py", "test_storage.py", "test_paper_config.py",
)  # fmt: skip


def xdist_group(nodeid: str) -> str:
    """The unit of work a node id belongs to: its module, or "tiny_study"."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return "tiny_study" if module in TINY_STUDY_MODULES else module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long groups first (LONG_GROUPS); within each module its slow tests first.

    A worker is handed its next group while the last two tests of the current one still run
    (xdist's prefetch): were those the long end-to-end runs, the next group would wait behind
    them while the other worker ran dry. Modules stay contiguous (their fixtures are built once).
    """
    modules = {item.nodeid.split("::", 1)[0]: None for item in items}
    position = {module: index for index, module in enumerate(modules)}

    def key(item: pytest.Item) -> tuple[int, int, bool]:
        group = xdist_group(item.nodeid)
        rank = LONG_GROUPS.index(group) if group in LONG_GROUPS else len(LONG_GROUPS)
        module = position[item.nodeid.split("::", 1)[0]]
        return rank, module, item.get_closest_marker("slow") is None

    items.sort(key=key)  # stable: otherwise each module keeps its own order


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        """xdist's per-module scheduling, with the tiny-study modules as one unit, in collection
        order (the longest first, see LONG_GROUPS)."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    config.option.loadscopereorder = False
    return ModuleGroupScheduling(config, log)
