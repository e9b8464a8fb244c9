"""Job bodies of the per-pair stages, one module per rule file, each importing what its job needs.

- :mod:`ntps.stages.extract`: rules/extract.smk (extract, extract_shard, merge_extract);
- :mod:`ntps.stages.score`: rules/score.smk and the post-LoRA scoring in rules/lora.smk;
- :mod:`ntps.stages.probe`: rules/probe.smk;
- :mod:`ntps.stages.lora`: the lora rule of rules/lora.smk;
- :mod:`ntps.stages.predictors`: the predictors rule of rules/predictors.smk.

Each function reads one (model, dataset) pair's inputs, calls the maths and writes or returns what
the job's script writes, so every stage can also be run (and tested) from Python without
Snakemake. The files' keys are :mod:`ntps.layout`'s; study-level tables (across pairs) are in
:mod:`ntps.tables` and :mod:`ntps.predictors`.
"""
