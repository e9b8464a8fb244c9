"""Plots: both formats written atomically, sensible pixels, labelled axes with units."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from ntps.analysis import BootstrapCI, correlation_grid
from ntps.errors import DatasetError
from ntps.plots import (
    DPI,
    OKABE_ITO,
    bounds_figure,
    correlation_heatmap_figure,
    layer_profile_figure,
    ntps_before_after_figure,
    ntps_vs_gain_figure,
    ntps_vs_metric_figure,
    plot_bounds,
    plot_correlation_heatmap,
    plot_layer_profile,
    plot_ntps_before_after,
    plot_ntps_vs_gain,
    plot_ntps_vs_metric,
)

MODELS = ["Qwen/Qwen2-0.5B", "apple/OpenELM-270M"]
DATASETS = ["dair-ai/emotion", "imdb", "stanfordnlp/sst2", "ucirvine/sms_spam", "rotten_tomatoes"]
LAYERS = [0, 1, 2, 3]
KS = [(0.05, "0.05"), (0.5, "0.5"), (4, "k=4")]


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    score_rows, probe_rows, lora_rows = [], [], []
    for m_i, model in enumerate(MODELS):
        for d in DATASETS:
            base_acc = rng.uniform(0.6, 0.95)
            lora_rows.append(
                {
                    "model": model,
                    "dataset": d,
                    "gain": rng.uniform(-0.02, 0.1),
                    "n_params": 5e8 if m_i == 0 else 2.7e8,
                }
            )
            for layer in LAYERS:
                probe_rows.append(
                    {
                        "model": model,
                        "dataset": d,
                        "layer": layer,
                        "accuracy": base_acc - 0.05 * (3 - layer),
                        "mse": rng.uniform(0.1, 0.4),
                    }
                )
                for stage, shift in (("pre_lora", 0.0), ("post_lora", 0.03)):
                    for k_spec, lab in KS:
                        ntps = float(
                            np.clip(0.4 + 0.1 * layer + rng.normal(scale=0.05) + shift, 0, 1)
                        )
                        lam_min, lam_max, w2 = 0.01, 2.0, rng.uniform(0.5, 1.5)
                        excess = w2 * (1 - ntps) * rng.uniform(lam_min, lam_max)
                        score_rows.append(
                            {
                                "model": model,
                                "dataset": d,
                                "stage": stage,
                                "layer": layer,
                                "k_spec": k_spec,
                                "k_label": lab,
                                "ntps_reg": ntps,
                                "ntps_paper": ntps,
                                "baseline": 0.05 if lab != "0.5" else 0.5,
                                "excess_loss": excess,
                                "bound_lower": lam_min * w2 * (1 - ntps),
                                "bound_upper": lam_max * w2 * (1 - ntps),
                            }
                        )
    return {
        "scores": pd.DataFrame(score_rows),
        "probes": pd.DataFrame(probe_rows),
        "lora": pd.DataFrame(lora_rows),
    }


def png_and_pdf(folder: Path, name: str) -> list[Path]:
    return [folder / f"{name}.png", folder / f"{name}.pdf"]


def test_figures_go_to_the_paths_given_and_only_png_or_pdf(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from ntps.plots import save_figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    out = tmp_path / "declared" / "any name.v2.png"
    assert save_figure(fig, [out]) == [out] and out.stat().st_size > 0
    with pytest.raises(ValueError, match=r"\.png or \.pdf"):
        save_figure(fig, [tmp_path / "figure.svg"])
    with pytest.raises(TypeError, match="list of output paths"):
        save_figure(fig, tmp_path / "stem")  # type: ignore[arg-type]


def _check_written(paths: list[Path], fig_size_in: tuple[float, float]) -> None:
    png, pdf = paths
    assert png.suffix == ".png" and pdf.suffix == ".pdf"
    assert png.is_file() and pdf.is_file()
    assert pdf.read_bytes()[:5] == b"%PDF-"
    image = mpimg.imread(png)
    width, height = fig_size_in
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert float(np.var(image[..., :3])) > 1e-3  # not a blank canvas
    # atomic writes leave no temporary files behind
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]


def _labels(fig) -> list[str]:
    return [ax.get_xlabel() + " | " + ax.get_ylabel() for ax in fig.axes if ax.get_visible()]


def test_ntps_vs_metric(tables, tmp_path: Path) -> None:
    sub = tables["scores"].query("stage == 'pre_lora' and layer == 3 and k_label == '0.05'")
    frame = sub.merge(tables["probes"], on=["model", "dataset", "layer"])
    fig = ntps_vs_metric_figure(
        frame, MODELS[0], "accuracy", 0.7, BootstrapCI(0.1, 0.95, 1990, 2000, 0.95)
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "NTPS, regression form (unitless, [0, 1])"
    assert "fraction correct" in ax.get_ylabel()
    assert "Qwen2-0.5B" in ax.get_title() and "ρ = 0.70" in ax.get_title()
    assert "95% CI 0.10 to 0.95" in ax.get_title()
    assert {t.get_text() for t in ax.texts} == {
        "emotion",
        "imdb",
        "sst2",
        "sms_spam",
        "rotten_tomatoes",
    }
    # names containing dots are kept as given: the format follows the last suffix
    paths = plot_ntps_vs_metric(
        frame, MODELS[0], "accuracy", 0.7, (0.1, 0.95), png_and_pdf(tmp_path, "scatter_Qwen2-0.5B")
    )
    assert paths[0].name == "scatter_Qwen2-0.5B.png"
    _check_written(paths, tuple(fig.get_size_inches()))
    with pytest.raises(DatasetError, match="no rows for model"):
        ntps_vs_metric_figure(frame, "nobody", "accuracy", 0.7, None)


def test_correlation_heatmap(tables, tmp_path: Path) -> None:
    grid = correlation_grid(tables["scores"], tables["probes"], "ntps_reg", "accuracy")
    fig = correlation_heatmap_figure(grid, MODELS[1])
    ax, cbar_ax = fig.axes
    image = ax.images[0]
    assert image.norm.vmin == -1.0 and image.norm.vmax == 1.0  # centred at 0
    assert image.get_array().shape == (len(LAYERS), len(KS))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.05", "0.5", "k=4"]
    assert ax.get_ylabel().startswith("layer") and ax.get_xlabel().startswith("k")
    assert "Spearman" in cbar_ax.get_ylabel()
    best = grid[grid.model == MODELS[1]].sort_values("rho").iloc[-1]
    assert f"max ρ = {best['rho']:.2f} at layer {best['layer']}, k" in ax.get_title()
    assert str(best["k_label"]) in ax.get_title().splitlines()[1]
    _check_written(
        plot_correlation_heatmap(grid, MODELS[1], png_and_pdf(tmp_path, "heat")),
        tuple(fig.get_size_inches()),
    )


def test_bounds(tables, tmp_path: Path) -> None:
    frame = tables["scores"].merge(
        tables["probes"].rename(columns={"mse": "probe_mse"}), on=["model", "dataset", "layer"]
    )
    fig = bounds_figure(frame)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # lower bounds are ~100x below upper ones
    assert "hold in 240 of 240 rows" in ax.get_title()
    assert "squared error" in ax.get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("held-out probe MSE" in t for t in legend)
    assert not any("violated" in t for t in legend)
    broken = frame.assign(excess_loss=frame["bound_upper"] * 2)
    broken_fig = bounds_figure(broken)
    assert "bound violated" in [t.get_text() for t in broken_fig.legends[0].get_texts()]
    assert "hold in 0 of 240 rows" in broken_fig.axes[0].get_title()
    _check_written(
        plot_bounds(frame, png_and_pdf(tmp_path, "bounds")), tuple(fig.get_size_inches())
    )


def test_ntps_vs_gain(tables, tmp_path: Path) -> None:
    sub = tables["scores"].query("stage == 'pre_lora' and layer == 3 and k_label == '0.05'")
    frame = sub.merge(tables["lora"], on=["model", "dataset"])
    fig = ntps_vs_gain_figure(frame, score_col="ntps_reg")
    ax = fig.axes[0]
    assert "[0, 1]" in ax.get_xlabel() and "fraction correct" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(t.split(" (ρ = ")[0] for t in legend) == ["OpenELM-270M", "Qwen2-0.5B"]
    # the two models get different Okabe-Ito colours
    colors = {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections}
    assert len(colors) == 2
    _check_written(
        plot_ntps_vs_gain(frame, png_and_pdf(tmp_path, "gain"), score_col="ntps_reg"),
        tuple(fig.get_size_inches()),
    )


def test_ntps_before_after(tables, tmp_path: Path) -> None:
    frame = tables["scores"].query("layer == 3 and k_label == '0.05'")
    fig = ntps_before_after_figure(frame)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert all(len(ax.lines) == len(DATASETS) for ax in visible)
    assert "[0, 1]" in visible[0].get_ylabel()
    assert [t.get_text() for t in visible[0].get_xticklabels()] == ["pre-LoRA", "post-LoRA"]
    _check_written(
        plot_ntps_before_after(frame, png_and_pdf(tmp_path, "before_after")),
        tuple(fig.get_size_inches()),
    )
    with pytest.raises(DatasetError, match="filter to one"):
        ntps_before_after_figure(tables["scores"])


def test_layer_profile(tables, tmp_path: Path) -> None:
    frame = tables["scores"].query("stage == 'pre_lora' and k_label == '0.05'")
    fig = layer_profile_figure(frame)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer (0 = embedding output)"
    assert "[0, 1]" in ax.get_ylabel()
    assert len(ax.lines) == len(DATASETS) + 1
    baseline = ax.lines[-1]
    assert baseline.get_linestyle() == "--" and np.allclose(baseline.get_ydata(), 0.05)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "random-subspace baseline k/d" in legend and "emotion" in legend
    assert ax.lines[0].get_color().lower() == OKABE_ITO["blue"].lower()
    _check_written(
        plot_layer_profile(frame, png_and_pdf(tmp_path, "profile")), tuple(fig.get_size_inches())
    )
    assert all(_labels(fig))
