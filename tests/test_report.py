"""The report's pieces on a small hand-made validation folder."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nasdd.errors import NasddError
from nasdd.report import _table, cost_ratio, human_count, pareto_front, verdict, write_report


def _summary() -> pd.DataFrame:
    rows = [
        ("noise_ceiling", "noise_ceiling", None, 0.8, 0.7, 0.9, np.nan, np.nan),
        ("ground_truth", "truth", None, np.nan, np.nan, np.nan, 1000, 10.0),
        ("dm-ipc10", "proxy", "dm", 0.6, 0.45, 0.75, 100, 2.0),
        ("random-ipc10", "peer:subset", "random", 0.3, 0.1, 0.4, 80, 1.5),
        ("synflow", "peer:zerocost", "synflow", 0.1, -0.2, 0.35, 5, 0.1),
    ]
    df = pd.DataFrame(
        rows, columns=["name", "kind", "method", "tau", "tau_low", "tau_high", "cost_sample_grads", "cost_seconds"]
    )
    for s in ("rho",):
        df[s], df[f"{s}_low"], df[f"{s}_high"] = df["tau"] + 0.1, df["tau_low"] + 0.1, df["tau_high"] + 0.1
    df["speedup_sample_grads"] = 1000 / df["cost_sample_grads"]
    return df


def test_pareto_front_marks_non_dominated_points():
    cost = np.array([1.0, 2.0, 3.0, 4.0])
    score = np.array([0.1, 0.5, 0.4, 0.6])
    assert pareto_front(cost, score).tolist() == [True, True, False, True]


def test_verdict_names_the_best_proxy_and_the_beaten_peers():
    lines = verdict(_summary())
    text = " ".join(lines)
    assert "τ = 0.80" in lines[0]
    assert "dm-ipc10" in text and "75% of the noise ceiling" in text
    assert "beats random-ipc10, synflow outside their confidence intervals" in text
    assert "not distinguishable from chance" in text  # synflow's CI includes 0


def test_write_report(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    _summary().to_csv(folder / "summary.csv", index=False)
    rng = np.random.default_rng(0)
    per_arch = pd.DataFrame({"arch_key": list("abcdef"), "truth_mean": rng.random(6)})
    for name in ("dm-ipc10", "random-ipc10", "synflow"):
        per_arch[name] = rng.random(6)
    per_arch.to_csv(folder / "per_arch.csv", index=False)
    (folder / "config.json").write_text(json.dumps({"pool": [{}] * 6, "dataset": {"dataset": "digits"}}))
    files = write_report(folder)
    for key in ("cost_vs_correlation", "proxy_vs_truth", "md", "html"):
        assert files[key].is_file()
    for key in ("cost_vs_correlation", "proxy_vs_truth"):
        with Image.open(files[key]) as im:
            im.verify()
    html = files["html"].read_text()
    assert html.count("data:image/png;base64,") == 2 and "dm-ipc10" in html
    md = files["md"].read_text()
    assert "6 architectures (pool.jsonl)" in md and "The pool holds 6 architectures" in md
    assert "*Each proxy's or peer's score against full-data test accuracy" in md and "<figcaption>Ranking" in html


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NasddError, match="not a validation folder"):
        write_report(tmp_path)


def test_tiny_pool_verdict_says_it_cannot_separate():
    s = _summary()
    s.loc[s["name"] == "random-ipc10", ["tau_low", "tau_high"]] = [0.2, 0.5]  # overlaps dm's [0.45, 0.75]
    text = " ".join(verdict(s, pool=10, winner="convnet d3 w32"))
    assert "The pool holds 10 architectures; the 95% intervals of τ are" in text and "too small a pool" in text
    assert "With 10 architectures the audit cannot tell these proxies and peers apart" in text
    assert "beats" not in text.replace("no distilled proxy beats", "") and "Best " not in text
    assert "The search's best architecture (val accuracy on the proxy): convnet d3 w32." in text
    assert "Fashion-MNIST, 60" in text and "no distilled proxy beats the best cheap peer" in text


def test_verdict_explains_a_tau_above_the_ceiling_and_names_cost_units():
    s = _summary()
    s.loc[s["name"] == "dm-ipc10", "tau"] = 0.9  # the ceiling is 0.8
    s["speedup_seconds"] = [np.nan, 0.5, 0.5, 1.0, 100.0]  # dm: 10x cheaper in sample-gradients, 2x dearer in s
    text = " ".join(verdict(s))
    assert "%" not in text.split("dm-ipc10**")[1].split("\n")[0].split("cost")[0]  # no 112% of the ceiling
    assert "above the noise ceiling (0.80: one truth seed against another" in text
    assert "10× cheaper in sample-gradients and 2× dearer in seconds than one ground-truth seed" in text
    assert "about as costly in seconds" in text  # random-ipc10: speedup 1.0, never "1× cheaper"


def test_human_units():
    assert [human_count(v) for v in (640, 65_600, 1_440_000)] == ["640", "65.6k", "1.44M"]
    assert cost_ratio(1.098) == "1.1× cheaper than one ground-truth seed"
    assert cost_ratio(0.8) == "1.2× dearer than one ground-truth seed"
    assert "cheaper" not in cost_ratio(0.5) and cost_ratio(float("inf")).startswith("free")
    assert cost_ratio(1.04) == "about as costly as one ground-truth seed"
    assert cost_ratio(4.4, "", "sample-gradients") == "4.4× cheaper in sample-gradients"


def test_table_is_readable_without_nan_or_inf():
    s = _summary()
    s.loc[4, "cost_sample_grads"], s.loc[4, "speedup_sample_grads"] = 0, float("inf")
    table = _table(s)
    assert "Kendall τ [95% CI]" in table.columns and "kind" in table.columns
    assert table.loc[2, "Kendall τ [95% CI]"] == "0.60 [0.45, 0.75]" and table.loc[1, "kind"] == "ground truth"
    text = table.to_markdown(index=False, disable_numparse=True)
    assert "nan" not in text.lower() and "inf" not in text


def test_labels_of_the_cost_plot_do_not_overlap(tmp_path):
    from nasdd.figures import _pyplot, label_points

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    x = np.array([1.0, 1.05, 1.1, 1.0, 5.0, 5.1])
    y = np.array([0.5, 0.5, 0.51, 0.49, 0.2, 0.21])
    ax.scatter(x, y)
    ax.set_xscale("log")
    texts = label_points(ax, x, y, [f"proxy-{i}-ipc10" for i in range(6)])
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in texts]
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)


def test_figures_use_one_style_and_log_axes_where_values_span_decades():
    from nasdd.figures import _pyplot, _style, axis_scale

    assert axis_scale(np.array([40.0, 300.0, 32_000.0])) == "log"  # synflow's outlier must not squash the panel
    assert axis_scale(np.array([-5.0, 0.0, 1e-3, 80.0])) == "symlog"
    assert axis_scale(np.array([0.1, 0.5, 0.9])) == "linear"
    plt = _pyplot()
    with plt.style.context("ggplot"), _style():  # ggplot: what importing Optuna's matplotlib plots does
        assert plt.rcParams["axes.facecolor"] == "white"
