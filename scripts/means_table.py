"""Means over seeds of chosen results.csv columns, as a markdown table (the tables of
docs/experiments.md):

    python scripts/means_table.py docs/figures/losses_results.csv [--by variant data.alpha] \
        [--columns min_principal_cosine spectral_min_principal_cosine ...] [--digits 3]

One row per distinct value of the --by keys (default: every column before ``seed``), one column per
--columns entry: the mean over the runs with status ok and a finite value, with the number of such
runs when it is not all of the group's runs ("0.512 (2/3)"); for ``spectral_estimator`` the
estimators named by the runs, with their counts.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter, defaultdict

from mim_lightning.analysis.crossing import number as csv_number

DEFAULT_COLUMNS = ("min_principal_cosine", "spectral_min_principal_cosine", "spectral_centred_magnitude_min_principal_cosine",
                   "test_rel_mse", "spectral_estimator")


def cell(rows, column, digits) -> str:
    """The mean of ``column`` over ``rows`` (status ok), or the counts of its values for text columns."""
    ok = [row for row in rows if row.get("status") == "ok"]
    if column == "spectral_estimator":
        return "; ".join(f"{name} x{count}" for name, count in Counter(row[column] for row in ok).most_common())
    values = [v for v in (csv_number(row.get(column)) for row in ok) if v is not None]
    if not values:
        return "-"
    mean = f"{sum(values) / len(values):.{digits}f}"
    return mean if len(values) == len(rows) else f"{mean} ({len(values)}/{len(rows)})"


def table(path, by=None, columns=DEFAULT_COLUMNS, digits=3) -> str:
    """The markdown table of means of ``columns`` per group of ``by`` in the results.csv at ``path``."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames or []
    by = by or header[:header.index("seed")]
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in by)].append(row)
    lines = [f"| {' | '.join(by)} | seeds | {' | '.join(columns)} |", "|" + " --- |" * (len(by) + 1 + len(columns))]
    for key, group in groups.items():
        cells = [cell(group, column, digits) for column in columns]
        lines.append(f"| {' | '.join(key)} | {len(group)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a sweep's results.csv")
    parser.add_argument("--by", nargs="+", help="the keys of a row (default: the columns before seed)")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT_COLUMNS), help="the columns to average")
    parser.add_argument("--digits", type=int, default=3)
    args = parser.parse_args(argv)
    print(table(args.results, args.by, args.columns, args.digits))


if __name__ == "__main__":
    main()
