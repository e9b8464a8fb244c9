"""Remote-code models (OpenELM in the paper config): ``trust_remote_code`` and the ``tokenizer:``
override reach every load, from acquisition to the post-LoRA statistics.

The model is tests/model_factories.py's tiny OpenELM-like decoder: its own config class and
``model_type``, modelling files beside the weights named by ``auto_map``, no tokenizer of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from model_factories import write_remote_code_model, write_tokenizer
from workflow_support import read_json, run_snakemake, vocabulary, write_datasets

from ntps.config import load_options, remote_code_error, validate_config
from ntps.errors import ConfigError, ModelSourceError
from ntps.models import acquire_model, load_for_inference

MODEL = "tiny-elm"


@pytest.fixture(scope="module")
def remote_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder with remote code and no tokenizer, tokenizer folder for the override)."""
    root = tmp_path_factory.mktemp("remote-code")
    tokenizer = write_tokenizer(root / "tokenizer", [" ".join(vocabulary())])
    model = write_remote_code_model(root / "tiny-elm", vocab_size=len(vocabulary()) + 4)
    return model, tokenizer


def source(folders: tuple[Path, Path], trusted: bool = True) -> dict:
    spec = {"type": "local", "path": str(folders[0]), "tokenizer": str(folders[1])}
    if trusted:
        spec["trust_remote_code"] = True
    return spec


def test_fixture_is_remote_code_only(remote_folders: tuple[Path, Path]) -> None:
    """transformers itself refuses the folder without trust_remote_code: no registry knows it."""
    from transformers import AutoConfig

    config = json.loads((remote_folders[0] / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert not any(remote_folders[0].glob("tokenizer*"))
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoConfig.from_pretrained(remote_folders[0], trust_remote_code=False)


def test_load_options_from_source_or_record() -> None:
    assert load_options({"type": "hub", "id": "x", "trust_remote_code": True}) == {
        "trust_remote_code": True
    }
    assert load_options({"source": {"type": "local", "path": "p", "trust_remote_code": True}}) == {
        "trust_remote_code": True
    }
    assert load_options({"type": "local", "path": "p"}) == {"trust_remote_code": False}
    assert load_options(None) == {"trust_remote_code": False}


def test_untrusted_remote_code_fails_early_naming_model_and_key(
    remote_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    # At parse time for a local folder: the config check names the entry's key and the model.
    config = {
        "models": [{"name": MODEL, "source": source(remote_folders, trusted=False)}],
        "datasets": [
            {
                "name": "d",
                "source": {"type": "hub", "id": "x/y"},
                "text_columns": ["t"],
                "label_column": "y",
            },
        ],
    }
    with pytest.raises(ConfigError) as parse_error:
        validate_config(config)
    message = str(parse_error.value)
    assert "models[0].source.trust_remote_code" in message and repr(MODEL) in message
    assert "modeling_tiny_elm.py" in message
    # At acquisition (a hub snapshot is only seen there), before anything is described or loaded.
    with pytest.raises(ModelSourceError, match=r"'tiny-elm'.*trust_remote_code: true"):
        acquire_model(
            MODEL, source(remote_folders, trusted=False), tmp_path / "weights", tmp_path / "c"
        )
    assert not (tmp_path / "weights").exists()
    # And at load time, for a folder acquired with trust that is loaded without it.
    record = acquire_model(MODEL, source(remote_folders), tmp_path / "weights", tmp_path / "c")
    with pytest.raises(ModelSourceError, match=r"'tiny-elm'.*models\[\]\.source\.trust_remote"):
        load_for_inference(tmp_path / "weights", "float32", "cpu", name=MODEL)
    base, tokenizer = load_for_inference(
        tmp_path / "weights", "float32", "cpu", source=record, name=MODEL
    )
    assert type(base).__name__ == "TinyElmModel"
    assert record["model_type"] == "tiny_elm" and record["hidden_size"] == 32
    # The override's tokenizer is the one in the folder.
    from transformers import AutoTokenizer

    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(remote_folders[1]).get_vocab()


def test_auto_map_of_a_native_architecture_needs_no_trust(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Folders of natively supported models that still carry an auto_map (e.g. Phi-3 repos) load
    without remote code, so they are not refused."""
    import shutil

    folder = shutil.copytree(tiny_llama_dir, tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_llama.LlamaForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    assert remote_code_error("llama", folder, {"trust_remote_code": False}) is None
    base, _ = load_for_inference(folder, "float32", "cpu", name="llama")
    assert type(base).__name__ == "LlamaModel"


@pytest.mark.slow
def test_workflow_runs_remote_code_model(remote_folders: tuple[Path, Path], tmp_path: Path) -> None:
    """Acquisition from a local folder, sharded extraction, probes, LoRA and the post-LoRA scores
    of the real workflow on the remote-code model (one dataset of the tiny study)."""
    datasets = write_datasets(tmp_path / "inputs" / "data")
    config = {
        "study": "remote code",
        "models": [
            {"name": MODEL, "source": source(remote_folders), "batch_size": 8, "max_length": 32}
        ],
        "datasets": datasets,
        "scoring": {"k_grid": [0.5, 2]},
        "probes": {"c_grid": [1.0], "cv_folds": 2},
        # Two extraction shards and their merge: every extraction job loads the model too.
        "extraction": {"progress": False, "shards": 2},
        "lora": {
            "enabled": True,
            "settings": {
                "r": 4, "alpha": 8, "optimizer": "adamw", "learning_rate": 0.005, "max_steps": 6,
                "batch_size": 8, "top_blocks": 1, "seed": 0,
            },
        },
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_snakemake(
        tmp_path,
        f"results/scores_post_lora/{MODEL}/strong.json",
        f"results/scores/{MODEL}/strong.json",
    )
    record = read_json(tmp_path / f"resources/models/{MODEL}/model.json")
    assert record["source"]["trust_remote_code"] is True
    assert record["architecture"] == "TinyElmForCausalLM"
    weights = tmp_path / f"resources/models/{MODEL}/weights"
    # The override's tokenizer replaced the (missing) own one; the code files came along.
    assert (weights / "tokenizer.json").is_file() and not (weights / "tokenizer.json").is_symlink()
    assert (weights / "modeling_tiny_elm.py").exists()
    for shard in (0, 1):
        log = tmp_path / f"results/logs/extract_shard/{MODEL}/strong/{shard}-of-2.log"
        assert "loaded model" in log.read_text()
    extract = read_json(tmp_path / f"results/extract/{MODEL}/strong/extract.json")
    assert extract["n_layers"] == 3 and extract["hidden_size"] == 32
    metrics = read_json(tmp_path / f"results/lora/{MODEL}/strong/metrics.json")
    # OpenELM's fused attention projection was found and adapted, on the upper block only.
    assert metrics["target_modules"] == ["qkv_proj"] and metrics["steps_done"] == 6
    assert metrics["first_recomputed_state"] == 2
    pre = pd.DataFrame(read_json(tmp_path / f"results/scores/{MODEL}/strong.json")["records"])
    post = pd.DataFrame(
        read_json(tmp_path / f"results/scores_post_lora/{MODEL}/strong.json")["records"]
    )
    assert len(pre) == len(post) == 3 * 2
    assert post["ntps_reg"].between(0, 1 + 1e-9).all()
    # States below the adapted block are copied, the last one was recomputed from the adapted model.
    merged = pre.merge(post, on=["layer", "k_spec"], suffixes=("_pre", "_post"))
    lower = merged[merged["layer"] < 2]
    assert (lower["ntps_reg_pre"] == lower["ntps_reg_post"]).all()
    top = merged[merged["layer"] == 2]
    assert (top["lam_max_cxx_pre"] != top["lam_max_cxx_post"]).all()
