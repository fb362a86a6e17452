"""The ``stageflow-plus`` command: ``demo``, ``bench`` and ``config``.

* ``stageflow-plus --version`` — the installed version.
* ``stageflow-plus config check FILE`` — build the pipeline config in ``FILE`` (with the
  ``STAGEFLOW_PLUS_*`` environment applied, as ``build()`` would): exit 0 and a one-line
  summary, or exit 1 and the :class:`~stageflow_plus.ConfigError` naming the entry.
* ``stageflow-plus config show [FILE]`` — the effective config after the environment, as
  TOML (credentials in URLs and secret-named keys redacted); without ``FILE``,
  ``STAGEFLOW_PLUS_CONFIG`` or the environment alone.

* ``stageflow-plus demo`` — a small side-by-side comparison against the in-process loopback
  provider (under a minute), printing the table.
* ``stageflow-plus bench [--quick] [--json PATH] [--plot DIR]`` — every strategy on every
  workload, JSON for machines, a table for people, PNG plots.
* ``stageflow-plus bench --core [--quick] [--json PATH]`` — the limiter's own costs against
  ``asyncio.Semaphore`` (per-call overhead, 10 000 tasks, waiter scaling and memory).
* ``stageflow-plus bench --processes 4 [--backend redis://...]`` — one limit shared by
  several processes on Redis against per-process limits.
* ``stageflow-plus bench --adaptive [--quick] [--json PATH] [--plot DIR]`` — adaptive
  concurrency against a provider whose capacity moves (also part of the full ``bench``).
* ``stageflow-plus bench --reliability [--quick] [--json PATH]`` — long uptimes and hostile
  loads: memory over 1 M calls (fixed and distinct run ids), event-loop lag with 50 000
  waiters beside ``asyncio.Semaphore``, Redis faults under every unavailability policy.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stageflow-plus",
        description="Concurrency, priority, rate limits and backpressure for Stageflow tools.",
    )
    parser.add_argument("--version", action="version", version=f"stageflow-plus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="a one-minute comparison of limiting strategies")
    config = commands.add_parser("config", help="check or show a pipeline config")
    actions = config.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="build FILE's config: exit 0, or 1 naming the entry")
    check.add_argument("file", metavar="FILE", help="a TOML file ([stageflow_plus] table)")
    show = actions.add_parser("show", help="the effective config after the environment")
    show.add_argument("file", metavar="FILE", nargs="?",
                      help="a TOML file (default: STAGEFLOW_PLUS_CONFIG, else none)")
    bench = commands.add_parser("bench", help="run the benchmarks")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    bench.add_argument("--plot", metavar="DIR", help="write PNG plots into this directory")
    bench.add_argument("--no-progress", action="store_true",
                       help="no progress bar on stderr (none when stderr is not a terminal)")
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--core", action="store_true",
                      help="the limiter's own overhead against asyncio.Semaphore")
    mode.add_argument("--reliability", action="store_true",
                      help="memory over 1 M calls, loop lag with 50 000 waiters, Redis faults")
    mode.add_argument("--processes", type=int, metavar="N",
                      help="N worker processes sharing one limit (needs --backend or redis)")
    mode.add_argument("--adaptive", action="store_true",
                      help="adaptive concurrency against a provider whose capacity moves")
    bench.add_argument("--backend", metavar="URL",
                       help="redis://host:port/db for --processes (default: a temporary "
                            "redis-server)")
    return parser


def _write_json(result: Any, path: str | None) -> None:
    if path is not None:
        from .bench.report import write_json

        write_json(result, path, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stageflow-plus`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            from .stageflow.config_report import check_config, show_config

            return check_config(args.file) if args.action == "check" else show_config(args.file)
        if args.command == "demo":
            from .bench.run import run_demo

            run_demo(progress=sys.stderr.isatty())  # a bar only where it redraws in place
            return 0
        if args.backend is not None and args.processes is None:
            raise SystemExit("stageflow-plus bench: --backend needs --processes N")
        if args.core:
            from .bench.core import format_core_table, run_core_bench

            result = run_core_bench(quick=args.quick)
            print(format_core_table(result))
            _write_json(result, args.json)
            return 0
        if args.adaptive:
            from .bench.adaptive import run_adaptive_bench

            run_adaptive_bench(quick=args.quick, json_path=args.json, plot_dir=args.plot)
            return 0
        if args.reliability:
            from .bench.reliability import format_reliability_table, run_reliability

            result = run_reliability(quick=args.quick)
            print(format_reliability_table(result))
            _write_json(result, args.json)
            return 0
        if args.processes is not None:
            if args.processes < 1:
                raise SystemExit("stageflow-plus bench: --processes must be >= 1")
            from .bench.distributed import format_distributed_table, run_distributed_bench

            result = run_distributed_bench(
                processes=args.processes, backend_url=args.backend, quick=args.quick
            )
            print(format_distributed_table(result))
            _write_json(result, args.json)
            return 0
        from .bench.run import run_bench

        run_bench(quick=args.quick, json_path=args.json, plot_dir=args.plot,
                  progress=not args.no_progress and sys.stderr.isatty())
        return 0
    except ModuleNotFoundError as error:
        extra = {"httpx": "bench", "aiohttp": "bench", "aiolimiter": "bench",
                 "matplotlib": "plot", "redis": "redis"}.get(error.name or "")
        if extra is not None:
            print(f"stageflow-plus: {error.name} is missing; install the extra: "
                  f"pip install 'stageflow-plus[{extra}]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
