"""/layers as a picture: a model's top-level blocks in order, one bar each, sized by their
parameters and coloured by how they are stored; `/compare --layers a,b` draws the models side
by side on a shared scale.

matplotlib is imported inside the function and only its object API is used (a Figure on an
Agg canvas, no pyplot and its global state): it renders without a display, and safely from
a worker thread (callers run it with asyncio.to_thread).
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from bot.inspect import STORAGE_4BIT, STORAGE_8BIT, STORAGE_FULL, Block, LayerReport, human_count
from bot.text import human_bytes

TIED = "tied"
# Okabe-Ito colours: told apart with the common kinds of colour blindness too.
COLOURS = {
    STORAGE_4BIT: "#009E73",  # green
    STORAGE_8BIT: "#E69F00",  # orange
    STORAGE_FULL: "#0072B2",  # blue
    TIED: "#CC79A7",  # pink
}
LEGEND = {STORAGE_4BIT: "4-bit", STORAGE_8BIT: "8-bit", STORAGE_FULL: "16/32-bit",
          TIED: "tied (shares another block's weights)"}

MAX_MODELS = 3
HEIGHT = 675
WIDTH_ONE = 1200  # 16:9, what Discord and Slack preview without cropping
WIDTH_EACH_MORE = 600
_DPI = 100
_BAR_WIDTH = 0.7  # of a slot: the gaps keep neighbouring bars apart, even 80 layers deep


def picture_size(models: int) -> tuple[int, int]:
    """The PNG's (width, height) in pixels for this many models side by side."""
    return WIDTH_ONE + WIDTH_EACH_MORE * (max(1, models) - 1), HEIGHT


def colour_of(block: Block) -> str:
    return COLOURS[TIED if block.tied else block.storage]


def render_layers_png(reports: list[LayerReport]) -> bytes:
    """One panel per report (at most MAX_MODELS), side by side; returns the PNG's bytes."""
    if not 1 <= len(reports) <= MAX_MODELS:
        raise ValueError(f"the picture takes 1 to {MAX_MODELS} models, not {len(reports)}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    width, height = picture_size(len(reports))
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.075 if len(reports) == 1 else 0.06, right=0.985, top=0.8, bottom=0.17, wspace=0.12)
    axes = figure.subplots(1, len(reports), sharey=True, squeeze=False)[0]

    sizes = [block.params for report in reports for block in report.blocks if block.params > 0]
    low, high = _y_range(sizes)
    for index, (ax, report) in enumerate(zip(axes, reports)):
        _panel(ax, report, low, high)
        if index == 0:
            ax.set_ylabel("parameters per block (log scale)", fontsize=14)
    axes[0].yaxis.set_major_locator(LogLocator(base=10))
    axes[0].yaxis.set_minor_formatter(NullFormatter())
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: _tick(value)))

    handles = [Patch(facecolor=COLOURS[key], label=LEGEND[key]) for key in COLOURS]
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=13, frameon=False,
                  bbox_to_anchor=(0.5, 0.995), handlelength=1.4, columnspacing=1.8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()


def _panel(ax: Any, report: LayerReport, low: float, high: float) -> None:
    blocks = [block for block in report.blocks if block.params > 0]
    title = (f"{report.model_name}\n{human_count(report.total_params)} parameters · "
             f"{human_bytes(report.footprint_bytes)} · {len(blocks)} blocks")
    ax.set_title(title, fontsize=16, pad=10)
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.grid(axis="y", which="major", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(axis="y", labelsize=13)
    ax.spines[["top", "right"]].set_visible(False)
    if not blocks:
        ax.set_xticks([])
        ax.text(0.5, 0.5, "no parameters", transform=ax.transAxes, ha="center", fontsize=14)
        return
    # crisp edges (no antialiasing, no outline) keep the gap between bars clean
    ax.bar(range(len(blocks)), [block.params for block in blocks], width=_BAR_WIDTH, bottom=low,
           color=[colour_of(block) for block in blocks], linewidth=0, antialiased=False)
    ax.set_xlim(-0.6, len(blocks) - 0.4)
    positions, labels, runs = _x_labels(blocks)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, fontsize=12)
    for text, is_run in zip(ax.get_xticklabels(), runs):
        if is_run:  # 'layers 0–29 · 3.5M each', level under the run it names
            text.set(ha="center", va="top")
        else:  # single blocks sit close together ('norm', 'lm_head'): slanted so they do not collide
            text.set(rotation=40, ha="right", va="top", rotation_mode="anchor")
    ax.tick_params(axis="x", length=0, pad=8)


def _y_range(sizes: list[int]) -> tuple[float, float]:
    """From a power of ten below the smallest block (a norm's few hundred parameters stay a
    visible bar) to a little above the largest (embeddings)."""
    if not sizes:
        return 1.0, 10.0
    low = 10.0 ** math.floor(math.log10(min(sizes)) - 0.3)
    return low, max(sizes) * 2.5


def _tick(value: float) -> str:
    text = human_count(int(round(value)))
    return re.sub(r"\.0+(?=[KMBT]?$)", "", text)  # "10.0K" -> "10K"


_NUMBERED = re.compile(r"^(?P<stem>.*?)\.?(?P<index>\d+)$")


def _x_labels(blocks: list[Block]) -> tuple[list[float], list[str], list[bool]]:
    """A run of numbered blocks gets one label under its middle ('layers 0–29 · 3.5M each');
    others their own last name ('embed_tokens', 'lm_head'). Thinned out when there would be
    too many. Returns positions, labels, and which labels name a run."""
    runs: list[tuple[int, int, str]] = []  # (first index, last index, label)
    for index, block in enumerate(blocks):
        match = _NUMBERED.match(block.name)
        if match and runs and runs[-1][2].startswith("\0"):
            first, _, key = runs[-1]
            if key == "\0" + match["stem"]:
                runs[-1] = (first, index, key)
                continue
        if match:
            runs.append((index, index, "\0" + match["stem"]))
        else:
            runs.append((index, index, block.name.rsplit(".", 1)[-1]))
    positions, labels, is_run = [], [], []
    for first, last, key in runs:
        run = key.startswith("\0") and last - first >= 2
        if key.startswith("\0"):
            stem = key[1:].rsplit(".", 1)[-1] or "block"
            start = _NUMBERED.match(blocks[first].name)["index"]
            end = _NUMBERED.match(blocks[last].name)["index"]
            label = f"{stem} {start}–{end}" if last > first else f"{stem} {start}"
            sizes = {block.params for block in blocks[first:last + 1]}
            if run and len(sizes) == 1:
                label += f" · {human_count(sizes.pop())} each"
            labels.append(label)
        else:
            labels.append(key)
        positions.append((first + last) / 2)
        is_run.append(run)
    step = math.ceil(len(labels) / 24)
    return positions[::step], labels[::step], is_run[::step]
