"""``python -m pfm_experiments.control.merge OUT OTHER...``: one control table from runs written to several
directories with the same config (:func:`.reproduce.merge_results`), e.g. walker2d's run in ``results/walker2d``
into ``results``."""

from __future__ import annotations

import argparse

from .reproduce import merge_results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the directory whose control.json receives the rows")
    p.add_argument("others", nargs="+", help="directories with a control.json of the same config")
    a = p.parse_args(argv)
    result = merge_results(a.out, a.others)
    print(f"{a.out}/control.json: {', '.join(result['sources'])}")


if __name__ == "__main__":
    main()
