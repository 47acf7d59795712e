"""Which candidate should `improve_texts` return? Nearest to the flowed vector, or the largest gain over the input.

A user-like problem (issue 46): TRL-style pairs of requests, polite (chosen) against rude (rejected), made from
templates, embedded by all-MiniLM-L6-v2 (``load_codec("minilm")``, from the data directory); a default flow
(``fit`` with its held-out tenth). Held-out requests (verbs and objects the pairs never use) are moved by the flow
and a candidate is picked from: the polite form, a curt form, the polite form of another request, an unrelated
sentence, and, in the "with the input" lists, the (rude) input itself. A pick is right when it is the polite form. Rules:

- ``nearest``: the candidate whose embedding is nearest (cosine) the flowed vector (``improve_texts``' default);
- ``gain`` (computed here, not in the library): the candidate whose cosine to the flowed vector most exceeds its
  cosine to the input's vector: the one the flow moved towards, not the one it started at;
- beside them, no flow (the candidate nearest the input) and the mean shift (input + mean(y+ - y-)).

    python benchmarks/text_candidates.py [--seeds 3] [--out results/text-candidates.json]

Needs the minilm codec in the data directory (``pfm fit --codec minilm`` fetches it once).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from pfm import PreferenceDataset, PreferenceFlow
from pfm.io import atomic_file
from pfm.text.apply import improve_texts
from pfm.text.codec import load_codec
from pfm.text.rows import TextRow
from pfm_experiments.stats import format_difference, paired_difference

VERBS = ["send", "open", "close", "check", "print", "sign", "bring", "fix", "clean", "read", "move", "share",
         "update", "review", "call", "book", "cancel", "pack", "find", "return", "lock", "copy", "test", "ship"]
THINGS = ["the report", "the door", "the window", "the files", "the invoice", "the letter", "the box", "the car",
          "the kitchen", "the contract", "the package", "the slides", "the schedule", "the keys", "the order",
          "the tickets", "the table", "the laptop", "the budget", "the plan"]
UNRELATED = ["the weather was mild all week", "our team won the match", "the museum opens at nine",
             "rivers flood in the spring", "the recipe needs two eggs", "the train was on time"]


def polite(v: str, t: str) -> str:
    return f"please {v} {t}, thanks"


def rude(v: str, t: str) -> str:
    return f"{v} {t} now, you fool"


def curt(v: str, t: str) -> str:
    return f"{v} {t}."


def run(seed: int, codec: Any) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    verbs = [VERBS[i] for i in torch.randperm(len(VERBS), generator=g).tolist()]
    things = [THINGS[i] for i in torch.randperm(len(THINGS), generator=g).tolist()]
    train_v, test_v, train_t, test_t = verbs[:16], verbs[16:], things[:14], things[14:]
    rows = [{"chosen": polite(v, t), "rejected": rude(v, t)} for v in train_v for t in train_t]  # 224 pairs
    data = PreferenceDataset.from_text_pairs(rows, codec)
    torch.manual_seed(seed)
    flow = PreferenceFlow.for_dataset(data)
    history = flow.fit(data, seed=seed, progress=False)
    shift = (data.chosen - data.rejected).mean(0)
    tests = [(v, t) for v in test_v for t in test_t]  # 48 requests the pairs never saw
    out: dict[str, Any] = {"seed": seed, "pairs": len(data), "tests": len(tests), "kept_step": history.best_step}
    for with_input in (False, True):
        texts = []
        for i, (v, t) in enumerate(tests):
            other = tests[(i + 7) % len(tests)]  # polite, but another request: the content must stay
            cands = [polite(v, t), curt(v, t), polite(*other), UNRELATED[i % len(UNRELATED)]] + (
                [rude(v, t)] if with_input else [])
            texts.append(TextRow(text=rude(v, t), candidates=tuple(cands)))
        label = "with the input" if with_input else "without the input"
        got = improve_texts(flow, codec, texts)  # the library's rule: the candidate nearest the flowed vector
        out[f"nearest, {label}"] = sum(r["improved_index"] == 0 for r in got) / len(got)
        z = codec.encode([r.text for r in texts])
        flowed = torch.nn.functional.normalize(flow.transform(z), dim=-1)
        gain = no_flow = mean_shift = 0
        for i, r in enumerate(texts):
            c = codec.encode(list(r.candidates))
            cos = lambda v: torch.nn.functional.cosine_similarity(c, v[i:i + 1])  # noqa: E731
            gain += int((cos(flowed) - cos(z)).argmax() == 0)
            no_flow += int(cos(z).argmax() == 0)
            mean_shift += int(cos(z + shift).argmax() == 0)
        out[f"gain, {label}"] = gain / len(texts)
        out[f"no flow, {label}"] = no_flow / len(texts)
        out[f"mean shift, {label}"] = mean_shift / len(texts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="results/text-candidates.json")
    args = ap.parse_args()
    began = time.perf_counter()
    codec = load_codec("minilm")
    runs = [run(s, codec) for s in range(args.seeds)]
    result = {"runs": runs, "seconds": time.perf_counter() - began,
              "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}
    with atomic_file(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))


def table(result: dict[str, Any]) -> str:
    runs = result["runs"]
    keys = [k for k in runs[0] if "," in k]
    out = [f"Share of {runs[0]['tests']} held-out rude requests for which the polite candidate is picked, mean ± sample "
           f"std over {len(runs)} seeds ({runs[0]['pairs']} training pairs each):", "",
           "| rule | without the input among the candidates | with the input |", "|---|---|---|"]
    for rule in dict.fromkeys(k.split(",")[0] for k in keys):
        cells = []
        for label in ("without the input", "with the input"):
            v = [r[f"{rule}, {label}"] for r in runs]
            cells.append(f"{statistics.fmean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}")
        out.append(f"| {rule} | {cells[0]} | {cells[1]} |")
    if len(runs) > 1:  # the comparison the library's choice rests on, paired per seed
        cells = []
        for label in ("without the input", "with the input"):
            d = paired_difference({r["seed"]: r[f"nearest, {label}"] for r in runs},
                                  {r["seed"]: r[f"gain, {label}"] for r in runs})
            cells.append(f"{format_difference(d, '.2f')} ({d['wins']} of {len(runs)} seeds ahead)")
        out.append(f"| nearest − gain, paired per seed [95% CI] | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
