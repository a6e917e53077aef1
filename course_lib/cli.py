"""The `course-lib` command.

    course-lib sim serve --port 8000 [--plan plan.json] [--seed 7]
"""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
