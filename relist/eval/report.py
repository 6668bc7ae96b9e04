"""One self-contained HTML report with embedded plots, built from the JSON records of a run.

Every figure is drawn from the same JSON that `relist eval ...` writes, so the
report and the printed tables can never disagree.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from relist.sim.user_model import OBJECTIVES  # noqa: E402

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}h2{border-bottom:1px solid #ddd;margin-top:2em}
.lists{display:flex;gap:2em}.lists ol{padding-left:1.5em}.chip{display:inline-block;width:12px;height:12px;
border-radius:2px;margin-right:6px;vertical-align:middle}.muted{color:#777;font-size:90%}
"""


def figure_html(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def image_html(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{encoded}">'


def policy_table_html(report: dict) -> str:
    """The headline column first (% of the logging→oracle gap closed in IPV, oracle under the rules), then per
    objective as in the printed table: mean ±95% CI, change vs logging and % of the gap closed."""
    metrics = report.get("metrics", list(OBJECTIVES))
    head = "<th>% of gap closed (IPV)</th>" + "".join(f"<th>{m.upper()}</th>" for m in metrics)
    rows = []
    for name, row in report["policies"].items():
        cells = f"<td><b>{row['ipv']['gap_closed']:.0f}%</b></td>" + "".join(
            f"<td>{r['mean']:.3f} ±{r['ci95']:.3f}<br><span class=muted>{100 * r['vs_logging']:+.1f}%, "
            f"{r['gap_closed']:.0f}% of gap</span></td>" for r in (row[m] for m in metrics))
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return (f"<table><tr><th>policy</th>{head}</tr>{''.join(rows)}</table>"
            "<p class=muted>cell: mean ±95% CI over requests / change vs the logging policy, share of the "
            "logging→oracle gap closed (the oracle keeps the same business rules as every policy)</p>")


def objective_front(sweep: dict):
    """True IPV against true GMV of each generator along an objective sweep (relist.eval.objective_sweep)."""
    points = sweep["points"]
    names = list(sweep["front"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in names:
        ipv = [p[name]["ipv"] for p in points]
        gmv = [p[name]["gmv"] for p in points]
        ax.plot(ipv, gmv, "o-", label=name)
        for p, x, y in zip(points, ipv, gmv, strict=True):
            ax.annotate(f"{p['t']:.2f}", (x, y), fontsize=7)
    ax.set_xlabel("true expected IPV per request")
    ax.set_ylabel("true expected GMV per request")
    ax.set_title("same models, per-request weights from clicks (0) to spend (1)")
    ax.legend()
    return fig


def reward_bars(report: dict, metrics: tuple[str, ...] = ("ipv", "gmv")):
    names = [n for n in report["policies"] if not n.startswith("oracle")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.45 * len(names) + 1.5))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        means = [report["policies"][n][metric]["mean"] for n in names]
        cis = [report["policies"][n][metric]["ci95"] for n in names]
        ax.barh(names, means, xerr=cis, color="#4c72b0", capsize=3)
        ax.axvline(report["policies"]["oracle"][metric]["mean"], color="#c44e52", ls="--", label="oracle")
        ax.set_xlabel(f"true expected {metric.upper()} per request")
        ax.invert_yaxis()
        ax.legend(loc="lower right")
    return fig


def reward_vs_latency(report: dict, latency_p99_ms: dict[str, float], metric: str = "ipv"):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, p99 in latency_p99_ms.items():
        if name in report["policies"]:
            ax.scatter(p99, report["policies"][name][metric]["mean"])
            ax.annotate(name, (p99, report["policies"][name][metric]["mean"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency per request (ms, log scale)")
    ax.set_ylabel(f"true expected {metric.upper()}")
    return fig


def validity_plots(validity: dict):
    """The evaluator's calibration by decile, and its list reward against the truth over every proposal."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    bins = validity["calibration"]["deciles"]
    a.plot([r["predicted"] for r in bins], [r["true"] for r in bins], "o-", label="evaluator")
    top = max(max(r["predicted"] for r in bins), max(r["true"] for r in bins))
    a.plot([0, top], [0, top], "k--", lw=1, label="perfect")
    a.set_xlabel("predicted click probability (decile mean)")
    a.set_ylabel("true click probability")
    a.legend()
    b.scatter(validity["scatter"]["predicted"], validity["scatter"]["true"], s=4, alpha=0.4)
    b.set_xlabel("evaluator list reward LR (members' mean)")
    b.set_ylabel("true expected IPV")
    b.set_title(f"every generator's proposals: Pearson {validity['pearson_all_lists']:.3f}")
    return fig


def validity_table_html(validity: dict) -> str:
    """Per generator: the evaluator's bias and correlations on the lists it proposes, and the winner's curse."""
    rows = "".join(
        f"<tr><td>{name}</td><td>{g['predicted']:.3f}</td><td>{g['true']:.3f}</td><td>{g['bias']:+.3f}</td>"
        f"<td>{g['spread']:.3f}</td><td>{g['pearson_across_requests']:.3f}</td>"
        f"<td>{g['kendall_across_requests']:.3f}</td></tr>" for name, g in validity["generators"].items())
    curse = validity["winners_curse"]
    return ("<table><tr><th>generator</th><th>predicted LR</th><th>true IPV</th><th>bias</th><th>members' std</th>"
            "<th>Pearson</th><th>Kendall</th></tr>" + rows + "</table>"
            f"<p>Kendall's tau within a request (all proposals): {validity['kendall_within_request']:.3f}. "
            f"Winner's curse: the list the evaluator picks is worth {curse['pessimistic']['true_of_pick']:.3f} "
            f"true IPV (pessimistic pick; {curse['mean']['true_of_pick']:.3f} by the mean) against "
            f"{curse['mean']['true_best']:.3f} for the truly best proposal of the same set.</p>")


def example_lists_html(example: dict, cate_of: dict[int, int]) -> str:
    """Candidates, upstream list and served list side by side, coloured by category."""
    palette = plt.get_cmap("tab20")

    def item(i: int) -> str:
        c = cate_of.get(int(i), 0)
        r, g, b, _ = palette(c % 20)
        return (f'<li><span class="chip" style="background:rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})">'
                f"</span>item {int(i)} <span class=muted>cat {c}</span></li>")

    columns = "".join(f"<div><h4>{html.escape(title)}</h4><ol>{''.join(item(i) for i in items)}</ol></div>"
                      for title, items in example["lists"].items())
    return f"<p>user {example['user_id']}: {html.escape(example.get('note', ''))}</p><div class=lists>{columns}</div>"


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """``sections``: (heading, html body) pairs, in order."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                    f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return path
