"""The reporting layer: read a runs tree, build the leaderboard, draw the figures, write the report.

A runs tree is ``<runs>/<task>/<method>/<feedback>/seed<k>/`` with ``config.yaml``,
``metrics.jsonl`` (one object per training step), ``eval.jsonl`` (one object per held-out
evaluation) and ``results.json``; ``vpd_bench.evaluation.results`` defines and reads that folder
(``load_run``, ``load_runs``). Any of these files may be missing or damaged: such runs are loaded,
flagged and reported, never a reason to stop.

Modules: ``leaderboard`` (per-run numbers, paired intervals, tables), ``claims`` (the paper's claims
marked holds / does not hold / not testable), ``figures``, ``html``
(``write_report``: the page, the figure files and the CSV), ``summary`` (the table at the end of
``vpd-bench run``). The names below are the public entry points:

  load_runs(runs_dir)                  -> list[RunRecord]
  build_leaderboard(runs, metric, ...) -> list[dict], one row per task x feedback x method
  write_report(runs_dir, out_dir, ...) -> dict {file name relative to out_dir: Path}

``docs/report.md`` describes the outputs and how to read them.
"""
from vpd_bench.evaluation.results import ReportWarning, RunRecord, load_run, load_runs  # noqa: F401
from vpd_bench.report.figures import PROBE_COLUMNS, method_style  # noqa: F401
from vpd_bench.report.html import write_report  # noqa: F401
from vpd_bench.report.leaderboard import (DEFAULT_METRIC, build_leaderboard, check_metric,  # noqa: F401
                                          leaderboard_markdown, score_of, summary_table, write_leaderboard_csv)

__all__ = ["DEFAULT_METRIC", "PROBE_COLUMNS", "ReportWarning", "RunRecord", "build_leaderboard", "check_metric",
           "leaderboard_markdown", "load_run", "load_runs", "method_style", "score_of", "summary_table",
           "write_leaderboard_csv", "write_report"]
