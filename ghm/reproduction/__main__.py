"""``python -m ghm.reproduction``: build ``docs/reproduction.md`` from the MLflow store (the studies of why GHM loses here with
their figures in ``docs/figures/``, the paper's tables beside ours), headed by the verdict written in ``docs/verdict.md``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ghm.reproduction.report import build_report
from ghm.tracking.store import default_tracking_uri, tracking_client


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ghm.reproduction", description=__doc__)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--output", type=Path, default=Path("docs/reproduction.md"), help="where the report goes")
    parser.add_argument("--preface", type=Path, default=Path("docs/verdict.md"),
                        help="Markdown put at the report's head: the verdict written from the evidence (skipped when missing)")
    args = parser.parse_args(argv)
    client = tracking_client(args.tracking_uri or default_tracking_uri(Path.cwd()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    preface = args.preface.read_text() if args.preface.is_file() else ""
    args.output.write_text(build_report(client, figures=args.output.parent / "figures", preface=preface))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
