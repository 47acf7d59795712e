"""Which strength to use where no judge exists: the strength dial across the committed results.

Reads only committed files under ``results/`` (it trains and samples nothing, so it prints the same numbers on any
machine, in well under a second) and collects, for each experiment and data set, its judge's score at every strength
that run measured: ``flow.transform(y, strength=s)`` of one trained flow, s = 0 being the outputs the flow moves
(the reference's own), s = 1 one application (the default, PFM), s = 2 and 5 two and five applications (PFM x 2,
PFM x 5), fractions where the dial was swept. For each row: the mean ± sample std over the run's seeds at each
strength, the strength with the best mean (and on how many seeds it was each seed's best), and, paired per seed,
the best's gain over s = 1 and s = 1's gain over s = 0, each with its 95% Student-t confidence interval. A strength a file lacks stays empty ("-"): nothing is
estimated. Sources:

    toy2d       results/toy2d.json: the dial s = 0 ... 3 in quarter steps (Bradley-Terry and threshold preferences);
                the true reward, and Theorem 1's J - bound = -KL(pi || p1) (reward against KL);
    images      results/mnist.json, results/fashion-best-worst.json, results/fashion-2026-12-06/fashion.json (the dial
                s = 0 ... 3), results/mnist-best-worst.json, results/fashion.json (reference, PFM, PFM x 2 only):
                the annotator, the independent judge's accuracy, the Frechet distance to real images and, where
                recorded, to pi_ref's own samples (a distance: how far the outputs moved, not a score);
    text        results/text.json, results/text-corpus-human.json, results/text-corpus-annotator.json: the
                reference through the codec (s = 0), PFM, PFM x 5 (the conditional flow); the annotator's score and
                VADER's (the independent judge);
    control     results/control.json: BC (pi_ref's mean, the flow's input under `replan` and `chunk`), PFM, PFM x 2;
                the normalized return averaged over the data sets per seed, and per data set below the main table
                with the segment test (a 10-action segment's return: what the pairs' labeller compares);
    ring        results/strength-ring.json (benchmarks/strength_ring.py): a user-like 2-d problem, the judge
                -(|y| - 2)^2, s = 0 ... 2.

results/validation_default.json (validation by default, issue 46) measures fits at s = 1 only and holds no strength,
so it is not read; nor is results/toy2d-edge.json (PFM and PFM x 5 only, without the dial's paired s = 0).

Writes ``results/strength-default.json`` (every per-seed value, every strength) and prints the Markdown tables.

    python benchmarks/strength_default.py                  # from the repository's root or anywhere
    python benchmarks/strength_default.py --out /tmp/sd.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pfm_experiments.stats import describe, format_difference

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

# the strengths the printed table shows (every measured one is in the JSON; the best is chosen among all of them)
COLUMNS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)

IMAGE_METRICS = (  # key, label, higher is better (None: a distance, no best)
    ("annotator", "annotator prob. ↑", True),
    ("judge_accuracy", "judge acc. ↑", True),
    ("frechet", "Fréchet dist. to real images ↓", False),
    ("frechet_to_reference", "Fréchet dist. to π_ref (distance: lower is closer to π_ref)", None),
)
S0 = {  # what s = 0 is in each experiment
    "toy2d": "the reference's samples the flow moves (the dial's own s = 0, not the separately drawn reference row)",
    "images": "the reference's samples the flow moves (the reference row)",
    "text": "the reference's sentences through the codec, unmoved (the \"reference (codec)\" row)",
    "control": "BC, pi_ref's mean segment, which `replan` and `chunk` push through the flow",
    "ring": "the reference's outputs as they are",
}


@dataclass
class Row:
    experiment: str
    dataset: str
    metric: str
    higher: bool | None  # True: higher is better; False: lower is better; None: a distance, no best
    digits: int
    source: str
    seeds: list
    values: dict = field(default_factory=dict)  # strength -> per-seed values, in the order of ``seeds``


def load(rel: str) -> dict:
    with open(RESULTS / rel, encoding="utf-8") as f:
        return json.load(f)


def sha256(rel: str) -> str:
    return hashlib.sha256((RESULTS / rel).read_bytes()).hexdigest()


def add(row: Row, s: float, value: float) -> None:
    row.values.setdefault(float(s), []).append(float(value))


def toy2d(rel: str = "toy2d.json") -> list[Row]:
    d = load(rel)
    names = {"bt": "Bradley-Terry", "threshold": "threshold"}
    rows = []
    for pref in d["config"]["preferences"]:
        runs = sorted((r for r in d["runs"] if r["preference"] == pref and r["reward"] == "inside"),
                      key=lambda r: r["seed"])
        seeds = [r["seed"] for r in runs]
        reward = Row("toy2d", names.get(pref, pref) + " preferences", "true reward ↑", True, 3, rel, seeds)
        j = Row("toy2d", names.get(pref, pref) + " preferences", "J − bound = −KL(π ‖ p1) ↑ (Theorem 1)", True, 3,
                rel, seeds)
        for r in runs:
            for p in r["theorems"]["strength"]:
                add(reward, p["strength"], p["reward"])
                add(j, p["strength"], p["J_gap"])
        rows += [reward, j]
    return rows


def images(rel: str, dataset: str) -> list[Row]:
    d = load(rel)
    runs = sorted(d["runs"], key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    per_seed = []  # one list of (strength, metrics) per seed
    for r in runs:
        m = r["methods"]
        if "strength" in m["PFM"]:
            per_seed.append([(p["strength"], p) for p in m["PFM"]["strength"]])
        else:  # no dial: the reference (the flow's input), PFM, PFM x 2
            per_seed.append([(s, m[name]["metrics"]) for s, name in ((0.0, "reference"), (1.0, "PFM"),
                                                                      (2.0, "PFM x 2")) if name in m])
    rows = []
    for key, label, higher in IMAGE_METRICS:
        if not all(key in p for pts in per_seed for _, p in pts):
            continue
        row = Row("images", dataset, label, higher, 1 if key.startswith("frechet") else 3, rel, seeds)
        for pts in per_seed:
            for s, p in pts:
                add(row, s, p[key])
        rows.append(row)
    return rows


def text(rel: str, dataset: str) -> list[Row]:
    d = load(rel)
    k = d["config"]["iterations"]
    runs = sorted(d["runs"], key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    rows = []
    for key, label in (("score", "annotator score ↑ (the pairs' labeller)"), ("vader", "VADER ↑ (independent judge)")):
        row = Row("text", dataset, label, True, 3, rel, seeds)
        for r in runs:
            for s, name in ((0.0, "reference (codec)"), (1.0, "PFM"), (float(k), f"PFM x {k}")):
                add(row, s, r["methods"][name][key])
        rows.append(row)
    return rows


def control(rel: str = "control.json") -> tuple[list[Row], dict]:
    d = load(rel)
    k = d["config"].get("iterations", d["config"].get("k"))
    methods = ((0.0, "BC"), (1.0, "PFM"), (float(k), f"PFM x {k}"))
    sets = list(d["cells"])
    seeds = sorted({c["seed"] for s in sets for c in d["cells"][s]})
    rows, per_set = [], {}
    for protocol in d["config"]["protocols"]:
        table = []
        scores = {}  # (set, seed, strength) -> score
        for name in sets:
            cells = sorted(d["cells"][name], key=lambda c: c["seed"])
            vals = {s: [c["scores"][protocol][m]["score"] for c in cells] for s, m in methods}
            for c in cells:
                for s, m in methods:
                    scores[name, c["seed"], s] = c["scores"][protocol][m]["score"]
            wins = sum(b > a for a, b in zip(vals[1.0], vals[float(k)]))
            table.append({"data_set": name, "seeds": [c["seed"] for c in cells],
                          "per_seed": {f"{s:g}": v for s, v in vals.items()},
                          "mean": {f"{s:g}": statistics.fmean(v) for s, v in vals.items()},
                          f"seeds_{k:g}_beat_1": wins})
        missing = [(n, sd) for n in sets for sd in seeds if (n, sd, 1.0) not in scores]
        if missing:
            raise SystemExit(f"{rel}: {protocol} lacks (data set, seed) {missing}: the average over sets needs all")
        row = Row("control", f"{len(sets)} data sets, `{protocol}`", "normalized return, mean over the sets ↑", True,
                  1, rel, seeds)
        for sd in seeds:
            for s, _ in methods:
                add(row, s, statistics.fmean(scores[n, sd, s] for n in sets))
        rows.append(row)
        per_set[protocol] = {"data_sets": table,
                             f"sets_{k:g}_beat_1": sum(t["mean"][f"{k:g}"] > t["mean"]["1"] for t in table),
                             f"seeds_{k:g}_beat_1": sum(t[f"seeds_{k:g}_beat_1"] for t in table),
                             "seeds_total": sum(len(t["seeds"]) for t in table),
                             "sets_where_best": best_counts(table)}
    # the segment test: one 10-action segment's simulated return from held-out start states, what the pairs' labeller
    # compares (not a protocol: the same for both)
    segment = []
    for name in sets:
        cells = sorted(d["cells"][name], key=lambda c: c["seed"])
        vals = {s: [c["segment_returns"][m] for c in cells] for s, m in methods}
        segment.append({"data_set": name, "seeds": [c["seed"] for c in cells],
                        "per_seed": {f"{s:g}": v for s, v in vals.items()},
                        "mean": {f"{s:g}": statistics.fmean(v) for s, v in vals.items()},
                        f"seeds_{k:g}_beat_1": sum(b > a for a, b in zip(vals[1.0], vals[float(k)]))})
    segment_summary = {"data_sets": segment,
                       f"sets_{k:g}_beat_1": sum(t["mean"][f"{k:g}"] > t["mean"]["1"] for t in segment),
                       "sets_where_best": best_counts(segment)}
    return rows, {"k": k, "protocols": per_set, "segment_test": segment_summary}


def best_counts(table: list) -> dict:
    """How many data sets have their best mean at each strength (the first, the smaller strength, on a tie)."""
    counts: dict = {}
    for t in table:
        best = max(t["mean"], key=lambda key: (t["mean"][key], -float(key)))
        counts[best] = counts.get(best, 0) + 1
    return {key: counts[key] for key in sorted(counts, key=float)}


def ring(rel: str = "strength-ring.json") -> list[Row]:
    d = load(rel)
    runs = sorted(d["runs"], key=lambda r: r["seed"])
    row = Row("ring (user-like)", "2-d, pairs labelled by the judge", "judge's mean score −(‖y‖ − 2)² ↑", True, 3, rel,
              [r["seed"] for r in runs])
    for r in runs:
        for s, m in zip(r["curve"]["strengths"], r["curve"]["mean"]):
            add(row, s, m)
    return [row]


def stats(v: list) -> dict:
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}


def summarize(row: Row) -> dict:
    n = len(row.seeds)
    bad = {s: len(v) for s, v in row.values.items() if len(v) != n}
    if bad:
        raise SystemExit(f"{row.source} {row.dataset} {row.metric}: strengths with a value per seed missing: {bad}")
    strengths = sorted(row.values)
    out = {"experiment": row.experiment, "data_set": row.dataset, "metric": row.metric,
           "higher_is_better": row.higher, "source": row.source, "seeds": row.seeds,
           "strengths": [{"strength": s, "per_seed": row.values[s], **stats(row.values[s])} for s in strengths]}
    if 0.0 in row.values and 1.0 in row.values:
        d = [b - a for a, b in zip(row.values[0.0], row.values[1.0])]
        out["gain_1_over_0"] = {"per_seed": d, **describe(d)}
    if row.higher is None:
        return out
    sign = 1.0 if row.higher else -1.0
    # the best mean; a tie goes to the smaller strength
    best = max(strengths, key=lambda s: (sign * statistics.fmean(row.values[s]), -s))
    per_seed = [max(strengths, key=lambda s: (sign * row.values[s][i], -s)) for i in range(n)]
    out["best"] = {"strength": best, "per_seed_best": per_seed, "seeds_where_best": per_seed.count(best),
                   "largest_measured": best == strengths[-1]}
    if 1.0 in row.values:
        d = [b - a for a, b in zip(row.values[1.0], row.values[best])]
        out["gain_best_over_1"] = {"per_seed": d, **describe(d)}
    return out


def fmt(st: dict, digits: int, signed: bool = False) -> str:
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    m = f.format(st["mean"])
    return m if st["std"] is None else f"{m} ± {st['std']:.{digits}f}"


def best_text(s: dict, digits: int) -> str:
    b = s["best"]
    notes = []
    if b["strength"] not in COLUMNS:  # its score is not in a column of its own
        notes.append(fmt(next(p for p in s["strengths"] if p["strength"] == b["strength"]), digits))
    if b["largest_measured"]:
        notes.append("the largest measured")
    others = sorted(set(b["per_seed_best"]) - {b["strength"]})
    notes.append(f"best on {b['seeds_where_best']} of {len(b['per_seed_best'])} seeds"
                 + "".join(f", {o:g} on {b['per_seed_best'].count(o)}" for o in others))
    return f"{b['strength']:g} ({'; '.join(notes)})"


def table(rows: list[Row], summaries: list[dict]) -> str:
    head = ("| experiment, data set | metric | seeds | " + " | ".join(f"s = {s:g}" for s in COLUMNS)
            + " | best s | best − (s = 1) | (s = 1) − (s = 0) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row, s in zip(rows, summaries):
        by = {p["strength"]: p for p in s["strengths"]}
        best = s.get("best", {}).get("strength")
        cells = []
        for c in COLUMNS:
            if c not in by:
                cells.append("-")
            else:
                t = fmt(by[c], row.digits)
                cells.append(f"**{t}**" if c == best else t)
        if "best" in s:
            g = s["gain_best_over_1"]
            gain = "0 (s = 1 is best)" if s["best"]["strength"] == 1.0 else format_difference(g, f".{row.digits}f")
            b = best_text(s, row.digits)
        else:
            gain, b = "-", "- (a distance)"
        g10 = format_difference(s["gain_1_over_0"], f".{row.digits}f") if "gain_1_over_0" in s else "-"
        lines.append(f"| {row.experiment}, {row.dataset} | {row.metric} | {len(row.seeds)} | " + " | ".join(cells)
                     + f" | {b} | {gain} | {g10} |")
    return "\n".join(lines)


def bold(means: dict, key: str) -> str:
    return f"**{means[key]:.1f}**" if means[key] == max(means.values()) else f"{means[key]:.1f}"


def control_table(ctrl: dict) -> str:
    k = ctrl["k"]
    protocols = list(ctrl["protocols"])
    head = "| data set | " + " | ".join(f"`{p}`: s = 0 / 1 / {k:g} | `{p}`: seeds s = {k:g} > s = 1" for p in protocols)
    lines = [head + " |", "|" + "---|" * (1 + 2 * len(protocols))]
    names = [t["data_set"] for t in ctrl["protocols"][protocols[0]]["data_sets"]]
    for i, name in enumerate(names):
        cells = []
        for p in protocols:
            t = ctrl["protocols"][p]["data_sets"][i]
            cells += [" / ".join(bold(t["mean"], key) for key in ("0", "1", f"{k:g}")),
                      f"{t[f'seeds_{k:g}_beat_1']} of {len(t['seeds'])}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for p in protocols:
        c = ctrl["protocols"][p]
        cells += [f"s = {k:g} above s = 1 on {c[f'sets_{k:g}_beat_1']} of {len(c['data_sets'])} sets",
                  f"{c[f'seeds_{k:g}_beat_1']} of {c['seeds_total']}"]
    lines.append("| all | " + " | ".join(cells) + " |")

    def where(counts: dict) -> str:
        return ", ".join(f"s = {key} on {n}" for key, n in counts.items())

    seg = ctrl["segment_test"]
    n = len(seg["data_sets"])
    lines.append("")
    lines += [f"Best mean per data set, `{p}`: {where(ctrl['protocols'][p]['sets_where_best'])} of {n}."
              for p in protocols]
    lines.append(f"The segment test (one 10-action segment's simulated return from held-out start states: what the "
                 f"pairs' labeller compares): s = {k:g} above s = 1 on {seg[f'sets_{k:g}_beat_1']} of {n} sets; best "
                 f"mean {where(seg['sets_where_best'])} of {n}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS / "strength-default.json")
    args = p.parse_args()

    rows = toy2d()
    rows += images("mnist.json", "MNIST, random pairs")
    rows += images("mnist-best-worst.json", "MNIST, best-worst pairs")
    rows += images("fashion.json", "Fashion-MNIST, random pairs")
    rows += images("fashion-2026-12-06/fashion.json", "Fashion-MNIST, random pairs (2026-12-06 rerun)")
    rows += images("fashion-best-worst.json", "Fashion-MNIST, best-worst pairs")
    rows += text("text.json", "our sampled pairs")
    rows += text("text-corpus-human.json", "corpus pairs, human-ranked")
    rows += text("text-corpus-annotator.json", "corpus pairs, annotator-ranked")
    ctrl_rows, ctrl = control()
    rows += ctrl_rows
    rows += ring()
    summaries = [summarize(r) for r in rows]
    sources = sorted({r.source for r in rows})

    record = {
        "about": "the strength dial across the committed results: each row's judge score per strength, per seed; "
                 "written by benchmarks/strength_default.py from the files in 'sources' alone",
        "command": "python benchmarks/strength_default.py",
        "s0": S0,
        "sources": {f"results/{s}": sha256(s) for s in sources},
        "rows": summaries,
        "control_per_data_set": ctrl,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")

    print("The judge's score at each strength, mean ± sample std over seeds (bold: the best mean; the gains are "
          "paired per seed, mean [95% CI]; \"-\": not measured in that run)\n")
    print(table(rows, summaries))
    print("\ns = 0 is " + "; ".join(f"{k}: {v}" for k, v in S0.items()) + ".")
    print(f"\n`control`, per data set (mean over {len(ctrl_rows[0].seeds)} seeds; bold: the best of the three):\n")
    print(control_table(ctrl))
    out = args.out.resolve()
    print(f"\nfrom {', '.join('results/' + s for s in sources)}; wrote "
          f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
