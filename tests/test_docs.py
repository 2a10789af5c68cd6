"""The figures the README states come from committed result files, so they cannot drift.

The sources: the model cards' ``eval_*.json`` and ``confidence.pt.json``, the latency
benchmark's summary (``docs/benchmarks/*.json``), the offload experiments'
``summary.json``, and RESULTS.md — whose own tables are checked here against those files.
A figure matches a source value when the value, as a fraction or in percent, rounds to it
at the figure's precision (``90.2%`` matches 0.9017; ``0.75x`` matches 0.7547).

And the docs stay short (README.md + docs/**/*.md under 60 KB) with every relative link,
and the heading it points at, there.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "shared" / "resources" / "models"
# a number not glued to a word or a path (v8, seed 5, ids), with its unit if any
NUMBER = re.compile(r"(?<![\w.\-/])(\d+(?:\.\d+)?)(?![\w.]*[/_])(\s?(?:%|x\b|s\b))?")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
CODE = re.compile(r"`[^`]*`|\]\([^)]*\)")  # code spans and link targets are not figures


def figures(text: str) -> list[tuple[str, str]]:
    """(number as written, unit: "%", "x", "s" or "") of the prose in ``text``."""
    prose = DATE.sub(" ", CODE.sub(" ", text))
    return [(m.group(1), (m.group(2) or "").strip()) for m in NUMBER.finditer(prose)]


def json_values(path: Path, skip: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    """(key, number) for every number in a JSON file (a list's items under the list's key),
    leaving out the keys in ``skip`` (per-utterance detail)."""
    out: list[tuple[str, float]] = []

    def walk(key: str, x: object) -> None:
        if isinstance(x, bool):
            return
        if isinstance(x, int | float):
            out.append((key, float(x)))
        elif isinstance(x, dict):
            for k, v in x.items():
                if k not in skip:
                    walk(k, v)
        elif isinstance(x, list):
            for v in x:
                walk(key, v)

    walk("", json.loads(path.read_text()))
    return out


def result_files() -> list[tuple[str, float]]:
    """The committed measurements: model cards, the latency summaries, the experiment summaries."""
    values: list[tuple[str, float]] = []
    for p in sorted(MODELS.glob("*/eval_*.json")) + sorted(MODELS.glob("*/confidence.pt.json")):
        values += json_values(p)
    for p in sorted((ROOT / "docs" / "benchmarks").glob("*.json")):
        values += json_values(p, skip=("rows", "options"))
    for p in sorted((ROOT / "docs" / "experiments").glob("*/summary.json")):
        values += json_values(p, skip=("gain_by_bin",))
    return values


def rounds_to(value: float, written: str) -> bool:
    """``value`` is ``written`` at its precision (a tie either way: JSON values are rounded already)."""
    places = len(written.partition(".")[2])
    step = Decimal(1).scaleb(-places)
    return abs(Decimal(repr(value)) - Decimal(written)) <= step / 2


def scaled(unit: str, key: str, value: float) -> list[float]:
    """What a JSON value can be written as with ``unit``: a fraction in percent, a ratio or
    speedup key as ``x``, a ``*_s`` or ``*_s_<runtime>`` key in seconds; a bare figure as it is
    or in percent."""
    if unit == "%":
        return [100 * value] if abs(value) <= 1 else []
    if unit == "x":
        return [value] if "ratio" in key or "speedup" in key else []
    if unit == "s":
        return [value] if key.endswith("_s") or "_s_" in key else []
    return [value, 100 * value] if abs(value) <= 1 else [value]


def matches(written: str, unit: str, values: list[tuple[str, float]], written_sources: set[tuple[str, str]]) -> bool:
    """A figure is sourced by a number RESULTS.md writes the same way (same unit, or bare),
    or by a result file's value that, in that unit, rounds to it."""
    if (written, unit) in written_sources or (written, "") in written_sources:
        return True
    return any(rounds_to(c, written) for k, v in values for c in scaled(unit, k, v))


def unsourced(text: str, results_md: str, values: list[tuple[str, float]]) -> list[str]:
    written = set(figures(results_md))
    return [f"{n}{u}" for n, u in figures(text) if not matches(n, u, values, written)]


def readme_figures_text() -> str:
    """The README's measured prose: the Experiments and Status sections (the latency paragraph is in Status)."""
    readme = (ROOT / "README.md").read_text()
    parts = re.split(r"^## ", readme, flags=re.M)
    return "\n".join(p for p in parts if p.startswith(("Experiments", "Status")))


@pytest.fixture(scope="module")
def values() -> list[tuple[str, float]]:
    return result_files()


@pytest.fixture(scope="module")
def results_md() -> str:
    return (ROOT / "RESULTS.md").read_text()


def test_every_readme_figure_comes_from_a_result_file(values, results_md) -> None:
    text = readme_figures_text()
    assert len(figures(text)) > 30, "the README's Status/Experiments sections moved: update readme_figures_text()"
    assert unsourced(text, results_md, values) == []


def test_a_changed_figure_is_caught(values, results_md) -> None:
    """The check can fail: a figure edited in the README (or a new one) has no source."""
    text = readme_figures_text()
    assert "90.2%" in text and "0.75x" in text
    assert unsourced(text.replace("90.2%", "90.3%"), results_md, values) == ["90.3%"]
    assert unsourced(text.replace("0.75x", "0.57x", 1), results_md, values) == ["0.57x"]
    assert unsourced("the device answers in 0.1234 s", results_md, values) == ["0.1234s"]


def test_results_model_table_is_the_model_cards(results_md) -> None:
    """RESULTS.md's intent accuracy / WER cells are the committed eval JSON of each model."""
    columns = ["test_voices", "test_hard", "test_hard_subset200", "dev_sample200", "calib"]
    rows = {
        line.split("|")[1].strip().split()[0]: line
        for line in results_md.splitlines()
        if line.startswith(("| device (", "| cloud ("))
    }
    assert set(rows) == {"device", "cloud"}
    for role, line in rows.items():
        cells = [c.strip() for c in line.strip().strip("|").split("|")][1:]
        assert len(cells) == len(columns)
        for name, cell in zip(columns, cells, strict=True):
            card = json.loads((MODELS / role / f"eval_{name}.json").read_text())
            acc, wer = (c.strip().rstrip("%") for c in cell.split("/"))
            assert rounds_to(100 * card["intent_acc"], acc) and rounds_to(100 * card["wer"], wer), (role, name, cell)


@pytest.mark.parametrize(
    ("heading", "source"),
    [
        ("**Pilot inference latency**", "docs/benchmarks/latency_test_*200.json"),
        ("**Offload experiment**", "docs/experiments/*/summary.json"),
        ("The ablation, first 60 utterances", "docs/benchmarks/latency_test_hard60.json"),
        ("## VAD on noise and commands", "docs/rejection/vad.json"),
        ("## Torch-free device runtime", "docs/benchmarks/runtime_v8.json"),
    ],
)
def test_results_tables_are_their_json(results_md, heading, source) -> None:
    """Each figure of RESULTS.md's latency, ablation, offload and VAD tables is a value of the JSON they cite."""
    lines = results_md[results_md.index(heading) :].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = "\n".join(lines[first + 2 : end])  # the rows below the header and its rule
    values = [v for p in sorted(ROOT.glob(source)) for v in json_values(p, skip=("rows", "gain_by_bin"))]
    found = figures(table)
    assert len(found) > 10
    missing = [f"{n}{u}" for n, u in found if not matches(n, u, values, set())]
    assert missing == []


# The docs a newcomer reads: reference only, short, every link live.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOCS_BUDGET = 60_000  # bytes, README.md + docs/**/*.md (issue 27)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", md.read_text())
    heads = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def broken_links(md: Path, text: str) -> list[str]:
    """The relative links in ``text`` (of file ``md``) whose file, or heading anchor, is missing."""
    bad = []
    for target in LINK.findall(INLINE_CODE.sub("", FENCE.sub("", text))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(target)
    return bad


def test_docs_fit_the_budget() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): p.stat().st_size for p in DOCS}
    assert "docs/device.md" in sizes and len(sizes) >= 7
    assert sum(sizes.values()) < DOCS_BUDGET, sizes


@pytest.mark.parametrize(
    "md", [*DOCS, ROOT / "RESULTS.md", ROOT / "CHANGELOG.md"], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_every_relative_link_resolves(md: Path) -> None:
    assert broken_links(md, md.read_text()) == []


def test_a_broken_link_is_caught() -> None:
    readme = ROOT / "README.md"
    text = "[a](docs/device.md) [b](docs/gone.md) [c](docs/device.md#not-understood) [d](docs/device.md#gone)"
    assert broken_links(readme, text + " [e](https://example.org) `[f](x.md)`") == [
        "docs/gone.md",
        "docs/device.md#gone",
    ]
