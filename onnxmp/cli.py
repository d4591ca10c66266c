"""The ``onnxmp`` command line: parse options into a config, call the library, print results.

User errors (``OnnxmpError``) print one line on stderr and exit 1; nothing is left behind.
"""

from __future__ import annotations

import argparse
import logging
import sys

import onnxmp
from onnxmp.candidates import DEFAULT_CANDIDATES, parse_candidates
from onnxmp.cost import METRICS
from onnxmp.errors import OnnxmpError
from onnxmp.pipeline import OptimizeConfig, optimize


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxmp", description=onnxmp.__doc__)
    parser.add_argument("--version", action="version", version=f"onnxmp {onnxmp.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("optimize", help="quantize a float model to a mixed-precision QDQ model")
    opt.add_argument("input", help="float ONNX model")
    opt.add_argument("output", help="where to write the QDQ model")
    opt.add_argument("--calib", help=".npz keyed by input name (samples on axis 0), or a folder of them; "
                                     "default: calib.npz beside the model, else random inputs (warned)")
    opt.add_argument("--budget", type=float, default=0.5,
                     help="cost budget as a fraction of the all-highest-candidate cost (default 0.5)")
    opt.add_argument("--metric", choices=METRICS, default="bops", help="cost metric (default bops)")
    opt.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                     help=f"comma-separated W<bits>A<bits> choices (default {DEFAULT_CANDIDATES})")
    opt.add_argument("--report", help="write the JSON record of the run here")
    for p in (opt,):
        p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
        p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return parser


class _ProgressLine:
    """One updating progress line on stderr when it is a terminal, sparse lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def __call__(self, stage: str, done: int, total: int, detail: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            end = "\n" if done == total else ""
            print(f"\r{stage}: {done}/{total} {detail[:60]:<60}", end=end, file=sys.stderr, flush=True)
        elif done == total or done % max(total // 10, 1) == 0:
            print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)


def _summary(record: dict, output: str) -> str:
    chosen = record["chosen"]
    lines = [
        f"wrote {output}",
        f"  mix: {', '.join(f'{n}x {c}' for c, n in chosen['mix'].items())} "
        f"({record['counts']['groups']} groups)",
        f"  cost: {chosen['relative_cost']:.3f} of {record['baseline']['candidate']} "
        f"({record['options']['metric']})",
        f"  output SQNR: {chosen['sqnr_db_ort_default']:.2f} dB on onnxruntime default, "
        f"{chosen['sqnr_db_ort_precise']:.2f} dB precise, {chosen['simulated_sqnr_db']:.2f} dB simulated "
        f"(all-{record['baseline']['candidate']}: {record['baseline']['sqnr_db']:.2f} dB)",
    ]
    for name, point in record["uniform"].items():
        lines.append(f"  uniform {name}: cost {point['relative_cost']:.3f}, SQNR {point['sqnr_db']:.2f} dB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="onnxmp: %(levelname)s: %(message)s")
    try:
        if args.command == "optimize":
            config = OptimizeConfig(candidates=parse_candidates(args.candidates), budget=args.budget,
                                    metric=args.metric, calib=args.calib, report=args.report)
            result = optimize(args.input, args.output, config, progress=_ProgressLine(not args.quiet))
            if not args.quiet:
                print(_summary(result.record, args.output))
    except OnnxmpError as exc:
        print(f"onnxmp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("onnxmp: interrupted; no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
