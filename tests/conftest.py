"""Shared fixtures: a tiny random Llama-style causal LM with a locally trained tokenizer, and texts
(the builders are in tests/model_factories.py).

Nothing is downloaded: the tokenizer is a WordLevel vocabulary trained on the fixture texts and the
model is randomly initialised from a config, so the fixtures exercise the real loading code paths
(``from_pretrained`` on a folder) in well under a second.
"""

from __future__ import annotations

import fcntl
import os
import pickle
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
    two-core reference. Built once per test run, whichever worker asks first; the other workers
    read the scenario's record (return codes, logs, paths) from beside the copy."""
    from workflow_support import interruption_scenario

    def build(folder: Path) -> None:
        state = interruption_scenario(tiny_study, folder / "study")
        (folder / "state.pickle").write_bytes(pickle.dumps(state))

    folder = built_once(tmp_path_factory, "interrupted-study", build)
    return pickle.loads((folder / "state.pickle").read_bytes())


# How `make unit` spreads the suite over pytest-xdist workers: `--dist loadfile` hands a worker
# whole modules, so a module-scoped fixture (a trained LoRA, the SLURM scenario) is built once,
# and `--no-loadscope-reorder` keeps the module order below instead of sorting by test count.
# The session's end-to-end runs (the tiny study, the interruption scenario copied from it) are
# built once per test run across workers (`built_once`), so their modules may run on any worker.
# What runs inside the shared tiny study after it is built is read-only for a concurrent copy:
# dry runs and `--report` take no lock and leave no incomplete marker (the copy could catch a
# half-written report.html or log, which no test of the copy reads).
# The longest modules first, so the workers start them at once and finish together: the SLURM
# scenario (mostly waiting on the cluster), the tiny study's end-to-end tests (the first to ask
# builds it), the interruption scenario, the module deployment, the remote-code workflow, the
# sharded run; then the determinism tests (placed after those so that the interruption scenario
# they compare with is finished, not awaited, when they start), the compact-storage run and the
# paper config's dry run. The rest fills in behind them.
LONG_MODULES = (
    "test_slurm.py", "test_workflow.py", "test_interruptions.py", "test_deploy.py",
    "test_remote_code.py", "test_extraction_shards.py", "test_determinism.py", "test_storage.py",
    "test_paper_config.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long modules first (LONG_MODULES); within each module its slow tests first.

    A worker is handed its next module while the last two tests of the current one still run
    (xdist's prefetch): were those the long end-to-end runs, the next module would wait behind
    them while the other worker ran dry. Modules stay contiguous (their fixtures are built once).
    """
    modules = {item.nodeid.split("::", 1)[0]: None for item in items}
    position = {module: index for index, module in enumerate(modules)}

    def key(item: pytest.Item) -> tuple[int, int, bool]:
        module = item.nodeid.split("::", 1)[0]
        name = module.rsplit("/", 1)[-1]
        rank = LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)
        return rank, position[module], item.get_closest_marker("slow") is None

    items.sort(key=key)  # stable: otherwise each module keeps its own order
