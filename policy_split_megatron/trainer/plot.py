"""`policy-split plot RUN_DIR`: the training curves of a run, both modes on one figure per metric
(the paper's Figure 1c shape: entropy per mode and the inter-mode KL over steps)."""

from __future__ import annotations

from pathlib import Path

from policy_split_megatron.trainer.metrics_log import read_metrics

PANELS = [
    ("reward", ["normal/reward", "high_entropy/reward"]),
    ("token entropy (bits)", ["normal/entropy_bits", "high_entropy/entropy_bits"]),
    ("inter-mode KL", ["inter_mode/kl_normal_he", "inter_mode/kl_he_normal"]),
    ("distinct correct answers / prompt", ["normal/distinct_correct", "high_entropy/distinct_correct"]),
    ("response length", ["normal/response_length", "high_entropy/response_length"]),
    ("grad norm", ["train/grad_norm"]),
]


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the curves of `run_dir/metrics.jsonl` to a PNG (default `run_dir/curves.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.exists():
        raise FileNotFoundError(f"{metrics_file} does not exist: point to the logging.dir of a training run")
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{metrics_file} holds no RL steps yet")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{run_dir.name}: normal vs high-entropy mode")
    fig.tight_layout()
    output = Path(output) if output else run_dir / "curves.png"
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def plot_pass_at_k(report: dict, output: str | Path) -> Path:
    """pass@k against k (log2 axis), one panel per benchmark of an evaluation report
    (trainer/eval_suite.py): normal mode solid, HE mode dashed, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = report["benchmarks"]
    models = report["models"]
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(4.6 * len(benchmarks), 3.8), squeeze=False)
    for ax, (name, bench) in zip(axes.flat, benchmarks.items()):
        for colour, (label, path) in enumerate(models.items()):
            result = bench["results"][label]
            model = Path(path).name or str(path)
            for mode, style in (("normal", "-"), ("high_entropy", "--")):
                ks = sorted(int(key.rsplit("@", 1)[1]) for key in result if key.startswith(f"{mode}/pass@"))
                if ks:
                    ax.plot(ks, [result[f"{mode}/pass@{k}"] for k in ks], style, color=f"C{colour}", marker="o",
                            markersize=3, label=f"{label}: {model}, {mode}" if len(models) > 1 else mode)
        ax.set_xscale("log", base=2)
        ks = sorted({int(key.rsplit("@", 1)[1]) for r in bench["results"].values() for key in r if "/pass@" in key})
        if ks:
            ticks = [k for k in ks if k & (k - 1) == 0 or k == ks[-1]]  # powers of two and n
            ax.set_xticks(ticks, [str(k) for k in ticks])
            ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name} ({int(next(iter(bench['results'].values())).get('prompts', 0))} prompts)")
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("pass@k (unbiased estimator), normal vs high-entropy mode")
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
