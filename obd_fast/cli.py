"""The ``obd-fast`` command line.

Bad arguments and bad inputs end with exit code 2 and one line on stderr (``--debug`` shows the
traceback).
"""
from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  obd-fast demo                      distill a synthetic set for a known teacher (1-2 min on a CPU)
  obd-fast demo --outer-steps 5      a quicker look
  obd-fast info                      which backends this install has
"""


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit code 2
        self.exit(2, f"obd-fast: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="obd-fast", description="Fast offline behavior distillation.", epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = sub.add_parser("demo", help="distill a synthetic set for a known teacher (demonstration of the core)")
    d.add_argument("--outer-steps", type=int, default=40)
    d.add_argument("--steps", type=int, default=100, help="inner BC steps per outer step (paper: 100)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--backend", choices=("auto", "fused", "reference"), default="auto")

    sub.add_parser("info", help="print the version and the available backends")
    return p


def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    if args.outer_steps < 1 or args.steps < 1:
        raise UsageError("--outer-steps and --steps must be >= 1")
    run_demo(DemoConfig(outer_steps=args.outer_steps, steps=args.steps, seed=args.seed, backend=args.backend))
    return 0


def cmd_info(args) -> int:
    import torch

    import obd_fast

    print(f"obd-fast {obd_fast.__version__}, torch {torch.__version__}, extension: {obd_fast.build_info()}, "
          f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    return 0


COMMANDS = {"demo": cmd_demo, "info": cmd_info}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"obd-fast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("obd-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
