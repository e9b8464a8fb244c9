"""LoRA figures: pre-LoRA NTPS (fixed setting) vs LoRA gain, and NTPS before vs after LoRA (last
layer, fixed k)."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.plots import plot_ntps_before_after, plot_ntps_vs_gain, set_dpi
from ntps.tables import before_after_plot_frame, gain_plot_frame
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]):
    set_dpi(snakemake.params.plots["dpi"])
    score_col = snakemake.params.analysis["score"]
    frame = pd.read_csv(snakemake.input.before_after)
    output = snakemake.output
    plot_ntps_vs_gain(
        gain_plot_frame(frame, score_col), [output.gain, output.gain_pdf], score_col=score_col
    )
    plot_ntps_before_after(
        before_after_plot_frame(frame),
        [output.before_after, output.before_after_pdf],
        score_col=score_col,
    )
