"""The `course-lib` command.

    course-lib sim serve --port 8000 [--plan plan.json] [--seed 7]
    course-lib serve [--host 127.0.0.1] [--port 8080] [--workers N] [--redis URL] [--provider URL]
    course-lib lnav-format [--directory DIR]   # install the lnav format for the service's JSON logs
    course-lib grade SUBMISSIONS/ --out grades.csv [--report grades.md] [--timeout 60] [--jobs N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .sim.faults import FaultPlan, FaultPlanError
from .sim.provider import SimProvider
from .sim.server import serve


def _sim_serve(args: argparse.Namespace) -> int:
    try:
        plan = FaultPlan.from_file(args.plan) if args.plan else FaultPlan()
    except FaultPlanError as error:
        print(f"course-lib: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"course-lib: cannot read plan {args.plan}: {error.strerror or error}", file=sys.stderr)
        return 2
    try:
        server = serve(SimProvider(plan, seed=args.seed), args.host, args.port, verbose=args.verbose)
    except OSError as error:
        print(f"course-lib: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"simulated OpenAI-compatible provider at {server.url} ({len(plan.faults)} fault(s) planned)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    """The agent service under uvicorn. Flags override the COURSE_LIB_* variables; each worker
    builds the app from the environment (`app_from_env`), so the settings are checked here first."""
    from .service.settings import Settings, SettingsError

    if args.workers < 1:
        print(f"course-lib: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    for flag, variable in ((args.redis, "COURSE_LIB_REDIS_URL"), (args.provider, "COURSE_LIB_PROVIDER_URL")):
        if flag:
            os.environ[variable] = flag
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"course-lib: {error}", file=sys.stderr)
        return 2
    if args.workers > 1 and not settings.redis_url:
        print(f"course-lib: --workers {args.workers} needs a shared Redis: set COURSE_LIB_REDIS_URL or pass --redis "
              "redis://HOST:PORT (the embedded fakeredis lives inside one process, so each worker would keep its own "
              "limits and budgets)", file=sys.stderr)
        return 2
    if not settings.api_keys:
        print("course-lib: warning: no API keys configured (COURSE_LIB_API_KEYS or COURSE_LIB_API_KEYS_FILE); "
              "every request will get a 401", file=sys.stderr)
    if args.workers > 1 and not settings.provider_url:
        print("course-lib: note: no provider URL, so each worker runs its own in-process simulator (fault plans and "
              "provider quotas are then per worker); pass --provider with `course-lib sim serve`'s URL to share one",
              file=sys.stderr)
    import uvicorn

    store = settings.redis_url or "embedded fakeredis"
    provider = settings.provider_url or "in-process simulator"
    print(f"agent service on http://{args.host}:{args.port} ({args.workers} worker(s), store: {store}, "
          f"provider: {provider})", flush=True)
    # log_config=None: uvicorn's own lines go to the root logger, where each worker's JSON handler
    # (set up by app_from_env) writes them like every other line; the service logs each request itself.
    uvicorn.run("course_lib.service.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, log_config=None, access_log=False,
                timeout_graceful_shutdown=math.ceil(settings.drain_timeout))
    return 0


def _lnav_format(args: argparse.Namespace) -> int:
    from .logs import install_lnav_format

    installed = install_lnav_format(args.directory)
    print(f"installed {installed}; open a log with: lnav {os.environ.get('COURSE_LIB_LOG_FILE') or 'service.log'}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    """Grade a folder of submissions; see course_lib.grading.grader for what is run and how."""
    from .grading.grader import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="course-lib", description="Tools for the LLM production-hardening workbook.")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("sim", help="the simulated OpenAI-compatible provider").add_subparsers(dest="sim_command", required=True)
    sim_serve = sim.add_parser("serve", help="serve it over HTTP on loopback")
    sim_serve.add_argument("--host", default="127.0.0.1")
    sim_serve.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    sim_serve.add_argument("--plan", help="JSON fault plan (see course_lib.sim.faults)")
    sim_serve.add_argument("--seed", type=int, default=None, help="overrides the plan's seed")
    sim_serve.add_argument("--verbose", action="store_true", help="log every request to stderr")
    sim_serve.set_defaults(run=_sim_serve)

    serve_cmd = commands.add_parser("serve", help="run the agent service (uvicorn); settings from COURSE_LIB_* "
                                                  "variables")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8080)
    serve_cmd.add_argument("--workers", type=int, default=1, help="more than 1 needs --redis (or COURSE_LIB_REDIS_URL)")
    serve_cmd.add_argument("--redis", help="redis://... shared by every worker (default: embedded fakeredis, 1 worker)")
    serve_cmd.add_argument("--provider", help="an OpenAI-compatible base URL, e.g. `course-lib sim serve`'s .../v1 "
                                              "(default: the in-process simulator)")
    serve_cmd.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    serve_cmd.set_defaults(run=_serve)

    lnav = commands.add_parser("lnav-format", help="install the lnav log format for the service's JSON log lines")
    lnav.add_argument("--directory", help="where lnav reads formats (default: ~/.lnav/formats/installed)")
    lnav.set_defaults(run=_lnav_format)

    grade = commands.add_parser("grade", help="grade a folder of submissions (one folder per student, laid out "
                                              "like exercises/): a CSV of points and a markdown report")
    grade.add_argument("submissions", help="a folder holding one folder per student")
    grade.add_argument("--out", required=True, help="the CSV to write: one row per student")
    grade.add_argument("--report", help="the markdown report to write (default: --out with .md)")
    grade.add_argument("--exercises", default="exercises", help="the exercise notebooks and their support files "
                                                                "(default: exercises)")
    grade.add_argument("--timeout", type=float, default=60, help="seconds for one notebook's cells (default: 60)")
    grade.add_argument("--jobs", type=int, default=None, help="notebooks run at a time (default: the CPU count)")
    grade.add_argument("--extra-checks", help="a folder of instructor modules adding checks (kept private)")
    grade.add_argument("--max-output-mb", type=float, default=1, help="output one notebook may print (default: 1)")
    grade.add_argument("--max-memory-mb", type=float, default=4096, help="address space of each process a notebook "
                                                                         "runs in (default: 4096)")
    grade.add_argument("--fresh-kernels", action="store_true", help="start each kernel as a new Python process "
                                                                    "instead of forking a preloaded one (slower)")
    grade.set_defaults(run=_grade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
