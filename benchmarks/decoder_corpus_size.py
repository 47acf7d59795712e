"""How many sentences a decoder needs: `train_decoder` on corpora of growing size, scored on one held-out set.

A decoder turns a (flowed) sentence embedding back into text (``pfm train-decoder``). Issue 46's user trained one on
215 sentences and it reconstructed held-out sentences worse than unrelated sentences resemble each other (cosine
0.199 against 0.281). Here: the 10,605 rated movie-review sentences of the VADER study (the text experiment's
corpus, fetched with pip once into the data directory), all-MiniLM-L6-v2 (``load_codec("minilm")``), 300 sentences
held out once; for each size N, a decoder with the default ``DecoderConfig`` trained by
:func:`pfm.text.decoder.train_decoder` on the first N of the rest (shuffled once), then
:func:`pfm.text.decoder.reconstruction` on the 300: the mean cosine between a sentence's embedding and its
reconstruction's, beside the cosine between unrelated sentences, and whether ``train_decoder`` called it usable.

    python benchmarks/decoder_corpus_size.py [--sizes 215 1000 3000 10000] [--out results/decoder-corpus-size.json]

Each size's row is written as soon as it is done, and a rerun skips the sizes already in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from bench import machine_info  # benchmarks/ is the script's directory
from pfm.io import atomic_file
from pfm.text.codec import load_codec
from pfm.text.decoder import DecoderConfig, reconstruction, train_decoder
from pfm_experiments.text.corpus import load_vader_corpus

TEST = 300


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[215, 1000, 3000, 10000])
    ap.add_argument("--out", default="results/decoder-corpus-size.json")
    args = ap.parse_args()
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"rows": []}
    texts = list(dict.fromkeys(load_vader_corpus().texts))
    random.Random(0).shuffle(texts)
    test, pool = texts[:TEST], texts[TEST:]
    codec = load_codec("minilm")
    done = {r["sentences"] for r in result["rows"]}
    for n in args.sizes:
        if n in done:
            continue
        n_used = min(n, len(pool))
        began = time.perf_counter()
        torch.manual_seed(0)
        trained, report = train_decoder(pool[:n_used], codec, DecoderConfig())
        seconds = time.perf_counter() - began
        rec = reconstruction(trained, test)
        row = {"sentences": n_used, "seconds": seconds, "test": rec,
               "usable": report["reconstruction"]["usable"], "own_heldout": report["reconstruction"],
               "training": report["training"]}
        result["rows"] = sorted(result["rows"] + [row], key=lambda r: r["sentences"])
        result["machine"] = machine_info()
        with atomic_file(out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"{n_used} sentences: {json.dumps(rec)}, usable {row['usable']}, {seconds:.0f} s", flush=True)
    print(table(result))


def table(result: dict[str, Any]) -> str:
    out = [f"Reconstruction of {TEST} held-out movie-review sentences by a default decoder trained on N others "
           "(mean cosine, all-MiniLM-L6-v2):", "",
           "| sentences N | reconstruction cosine | unrelated sentences' cosine | exact | usable (train-decoder) | "
           "training time |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        t = r["test"]
        out.append(f"| {r['sentences']:,} | {t['cosine']:.3f} | {t['cosine_unrelated']:.3f} | {t['exact']:.2f} | "
                   f"{'yes' if r['usable'] else 'no'} | {r['seconds'] / 60:.1f} min |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
