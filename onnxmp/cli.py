"""The ``onnxmp`` command line: parse options into a config, call the library, print results.

User errors (``OnnxmpError``) print one line on stderr and exit 1; nothing is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
import traceback

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import onnxmp
from onnxmp.errors import ConfigError, OnnxmpError
from onnxmp.finetune.runner import FinetuneConfig, default_train_env, finetune, setup_train_env
from onnxmp.model.files import check_writable
from onnxmp.output.report import on_target_line
from onnxmp.pipeline import DEFAULT_PHASE1_SAMPLES, LATENCY_SLACK, Inspection, OptimizeConfig, analyze, inspect_model, optimize
from onnxmp.quant import numerics
from onnxmp.quant.candidates import DEFAULT_CANDIDATES, parse_candidates
from onnxmp.quant.cost import METRIC_HELP, METRICS
from onnxmp.runtime.data import LAYOUTS as CALIB_LAYOUTS
from onnxmp.runtime.executor import BACKENDS
from onnxmp.search.evaluate import load_user_evaluator
from onnxmp.search.partial import DEFAULT_MAX_MEMORY
from onnxmp.targets import TARGETS, get_target


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/onnxmp, else ~/.cache/onnxmp (read here, never deep in the library)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "onnxmp")


def parse_size(text: str) -> int:
    """'512M', '4G', '1.5G' or a number of bytes → bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("B")
    factor = units.get(clean[-1:], 1)
    try:
        value = float(clean[:-1] if clean[-1:] in units else clean)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M or 4G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {text!r}")
    return int(value * factor)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", help=".npz keyed by input name with samples on axis 0, or one whole feed (arrays "
                                   "shaped as the model's inputs); or a folder of either (samples concatenated, or "
                                   "one feed per file); default: calib.npz beside the model, else random inputs "
                                   "(warned)")
    p.add_argument("--calib-layout", choices=CALIB_LAYOUTS, default="auto",
                   help="how --calib's arrays are read: 'samples' along the first axis (run in batches where "
                        "that is the model's batch axis, else one by one), 'feeds' (each file one whole feed, "
                        "run as given: for sequence, state and scalar inputs), or 'auto' by their shapes "
                        "(samples where they read as samples; default)")
    p.add_argument("--candidates", default=None,
                   help=f"comma-separated W<bits>A<bits> choices (default {DEFAULT_CANDIDATES}, or what the "
                        "--target runs)")
    ada = p.add_mutually_exclusive_group()
    ada.add_argument("--adaround", dest="adaround", action="store_const", const="on",
                     help="AdaRound every weight bit-width below 16 (default: only below 8)")
    ada.add_argument("--no-adaround", dest="adaround", action="store_const", const="off",
                     help="round weights to nearest only")
    p.add_argument("--adaround-iters", type=int, default=1000, help="AdaRound steps per layer (default 1000)")
    p.add_argument("--target", choices=TARGETS, default="ort",
                   help="deployment target: ort (default: onnxruntime CPU, quantizers only where it computes in "
                        "integer), qnn-htp (Qualcomm HTP, pip install 'onnxmp[qnn]'), openvino (pip install "
                        "'onnxmp[openvino]') or generic (an accelerator that runs every op quantized); the search keeps "
                        "to what it runs, and the output is checked on it")
    p.add_argument("--fix-dims", help="values for symbolic dimensions, e.g. batch=1,seq=128 (static-shape targets "
                                      "fix the rest from the calibration data)")
    p.add_argument("--float-subgraphs", action="store_true",
                   help="quantize the main graph of a model whose If/Loop/Scan bodies hold Conv, Gemm, MatMul or "
                        "recurrent ops, keeping those bodies float (recorded); without it such a model is refused")
    p.add_argument("--workers", type=int, default=1,
                   help="processes for Phase 1 and AdaRound (default 1; results do not depend on it)")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="where the workers run: local processes, or Ray (pip install 'onnxmp[ray]'; "
                        "joins RAY_ADDRESS when set)")
    p.add_argument("--max-memory", type=parse_size, default=DEFAULT_MAX_MEMORY,
                   help="memory for cached activations in Phase 1, shared by the workers, e.g. 512M or 4G "
                        "(default 2G); "
                        "less memory means more recomputation, never a different result")
    p.add_argument("--phase1-samples", type=int, default=DEFAULT_PHASE1_SAMPLES,
                   help="calibration samples (or feeds), spread over the set, on which Phase 1 ranks the groups "
                        "(default 0: all; fewer is faster and can cost accuracy); calibration, the measured points "
                        "and the output's SQNR use every sample")
    p.add_argument("--no-range-refinement", action="store_true",
                   help="ship Phase 1's activation ranges as they are; by default the chosen point's ranges (min/max "
                        "or MSE clip) are chosen again next to the groups it quantizes, a flip kept where the model's "
                        "SQNR rises (the 8 most sensitive groups, one evaluation each; not with --target-drop, whose score was "
                        "measured on the model as chosen)")
    p.add_argument("--cache-dir", default=None, help=f"results cache folder (default {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the results cache")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxmp", description=onnxmp.__doc__)
    parser.add_argument("--version", action="version", version=f"onnxmp {onnxmp.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("optimize", help="quantize a float model to a mixed-precision QDQ model")
    opt.add_argument("input", help="float ONNX model")
    opt.add_argument("output", help="where to write the QDQ model")
    opt.add_argument("--budget", type=float, default=None,
                     help="cost budget as a fraction of the all-highest-candidate cost (default 0.5, or the cheapest "
                          f"assignment where the target cannot go that low; under latency at least {LATENCY_SLACK} of the float "
                          "time above the cheapest, which moves with this machine's speed)")
    opt.add_argument("--metric", choices=METRICS, default=None,
                     help="cost metric (default: the target's, latency on ort, bops elsewhere): " + METRIC_HELP)
    opt.add_argument("--target-drop", help="instead of a budget: the largest allowed drop of the evaluator's "
                                           "score from the all-highest baseline, absolute (1) or relative (1%%)")
    opt.add_argument("--eval", dest="eval_spec", help="module:function (or file.py:function) scoring a model path, "
                                                      "higher is better")
    opt.add_argument("--eval-data", help=".npz with the model inputs and integer 'labels': top-1 accuracy")
    opt.add_argument("--eval-on-target", action="store_true",
                     help="with --target-drop: score candidates on the --target's runtime (built-in evaluators)")
    opt.add_argument("--report", help="write the JSON record of the run here")
    opt.add_argument("--dry-run", action="store_true",
                     help="print the groups, the candidates each may take on the --target, their MACs and weights, and "
                          "every tensor kept float with its reason, in seconds; calibrate nothing, write nothing")
    opt.add_argument("--report-dir", help="write report.json, pareto.png and summary.md into this folder")
    _common(opt)
    ana = sub.add_parser("analyze", help="Phase 1 only: print the sensitivity list, most sensitive first")
    ana.add_argument("input", help="float ONNX model")
    ana.add_argument("--top", type=int, default=0, help="print only the N most sensitive rows")
    _common(ana)
    fine = sub.add_parser("finetune", help="LSQ fine-tuning of an onnxmp QDQ model's step sizes and weights "
                                           "(runs in its own onnxruntime-training environment)")
    fine.add_argument("quantized", nargs="?", help="the QDQ model onnxmp optimize wrote")
    fine.add_argument("float", nargs="?", help="the float model it came from")
    fine.add_argument("output", nargs="?", help="where to write the fine-tuned QDQ model")
    fine.add_argument("--data", help=".npz of training inputs keyed by input name, or a folder (forms as --calib's); "
                                     "with an integer 'labels' array the loss is cross-entropy, else distillation "
                                     "from the float model")
    fine.add_argument("--calib-layout", choices=CALIB_LAYOUTS, default="auto",
                      help="how --data's arrays are read (as optimize's --calib-layout)")
    fine.add_argument("--labels", help=".npy of integer labels (instead of a 'labels' array in --data)")
    fine.add_argument("--epochs", type=int, default=5)
    fine.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    fine.add_argument("--batch", type=int, default=16)
    fine.add_argument("--workdir", help="job folder, kept: a rerun resumes after its last finished epoch "
                                        "(default <output>.lsq)")
    fine.add_argument("--setup", action="store_true", help="create the training environment (once) and exit")
    fine.add_argument("--env", help=f"training environment folder (default {default_train_env()})")
    fine.add_argument("-v", "--verbose", action="count", default=0)
    fine.add_argument("-q", "--quiet", action="store_true")
    return parser


def _finetune(args: argparse.Namespace) -> None:
    if args.setup:
        print(f"training environment ready: {setup_train_env(args.env)}")
        return
    if not (args.quantized and args.float and args.output and args.data):
        raise ConfigError("finetune needs QUANTIZED FLOAT OUTPUT and --data (or --setup)")
    if args.epochs < 1 or args.batch < 1 or not args.lr > 0:
        raise ConfigError("--epochs and --batch must be at least 1 and --lr positive")
    check_writable(args.output, args.quantized)
    config = FinetuneConfig(epochs=args.epochs, learning_rate=args.lr, batch=args.batch, train_env=args.env,
                            calib_layout=args.calib_layout)
    show = (lambda e: print(f"epoch {e['epoch']}: loss {e['loss']:.5g} ({e['seconds']:.1f} s)", flush=True)) \
        if not args.quiet else None
    record = finetune(args.quantized, args.float, args.output, args.data, config, args.workdir, show, args.labels)
    if not args.quiet:
        print(f"wrote {args.output} ({len(record['epochs'])} epochs this run, loss: {record['loss']}; "
              f"job kept in {record['workdir']})")


class ProgressDisplay:
    """Progress of the pipeline's stages on stderr: on a terminal one live tqdm line per stage
    (done/total, rate, time left); in a pipe or a log a line when a stage ends and, in a long
    one, at every tenth, so a log shows the pace without a carriage-return mess."""

    QUIET_S = 5.0  # in a pipe, at most one line per this many seconds within a stage

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.stage: str | None = None
        self.bar: tqdm | None = None
        self.started = self.last = 0.0
        self.shown = 0

    def __call__(self, stage: str, done: int, total: int, detail: str) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.started, self.shown = stage, time.perf_counter(), 0
            self.last = self.started
            if self.tty:
                size = shutil.get_terminal_size((100, 24))  # a pty that says 0x0 would hide the bar
                self.bar = tqdm(total=total, desc=stage, file=self.stream, leave=True,
                                ncols=size.columns, nrows=size.lines,
                                bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        if self.bar is not None:
            self.bar.total = total
            self.bar.set_postfix_str(detail[:40], refresh=False)
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.close()
            return
        now = time.perf_counter()
        tenth = max(total // 10, 1)
        if done >= total or (done // tenth > self.shown // tenth and now - self.last >= self.QUIET_S):
            self.shown, self.last = done, now
            meter = tqdm.format_meter(done, total, now - self.started, prefix=stage,
                                      bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")
            print(meter, file=self.stream, flush=True)
            if done >= total:
                self.stage = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the live line (a stage cut short by an error leaves it where it stopped)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stage = None


def _summary(record: dict, output: str) -> str:
    chosen = record["chosen"]
    lines = [
        f"wrote {output}",
        f"  mix: {', '.join(f'{n}x {c}' for c, n in chosen['mix'].items())} "
        f"({record['counts']['groups']} groups)",
        f"  cost: {chosen['relative_cost']:.3f} of {record['baseline']['candidate']} ({record['options']['metric']}"
        + (f"; budget {record['options']['budget']:.3f})" if record["options"]["budget"] is not None else ")"),
        f"  output SQNR: {chosen['sqnr_db_ort_default']:.2f} dB on onnxruntime default, "
        f"{chosen['sqnr_db_ort_precise']:.2f} dB precise, {chosen['simulated_sqnr_db']:.2f} dB simulated "
        + (f"(all-{record['baseline']['candidate']}: {record['baseline']['sqnr_db']:.2f} dB)"
           if record["baseline"]["candidate"] != "FP32" else "(against the float model)"),
    ]
    on_target = on_target_line(record)
    if on_target:
        lines.append(f"  {on_target}")
    target = record.get("target")
    if target:
        lines.append(f"  {target['metric']}: {target['chosen_score']:.4g} (baseline {target['baseline_score']:.4g}, "
                     f"target >= {target['threshold']:.4g}; {target['evaluations']} evaluations)")
    for name, point in record["uniform"].items():
        lines.append(f"  uniform {name}: cost {point['relative_cost']:.3f}, SQNR {point['sqnr_db']:.2f} dB")
    latency = record.get("latency")
    if latency:
        ms = latency["ms"]
        others = ", ".join(f"{name} {value:.3g} ms" for name, value in ms.items() if name != "output")
        lines.append(f"  latency on {record['deployment_target']['name']} (1 thread, 1 sample): {ms['output']:.3g} ms, "
                     f"{latency['vs_float']:.2f}x float ({others})")
        timed = latency.get("cheapest_timed")
        if timed:
            lines.append(f"  at the cheapest point's speed, timed whole: the estimate's point "
                         f"{timed['ms']['cheapest estimate']:.3g} ms, uniform W8A8 {timed['ms']['uniform W8A8']:.3g} ms; "
                         f"shipped: {timed['shipped']}")
    if record["cache"]["hit"]:
        lines.append(f"  Phase 1 reused from {record['cache']['folder']}")
    return "\n".join(lines)


def _sensitivity_table(analysis, top: int) -> str:
    groups = {g.gid: g for g in analysis.plan.groups}
    rows = [s for s in analysis.sensitivities if s.evaluated]  # not the reused, equivalent ones
    rows = rows[:top] if top else rows
    lines = [f"baseline (every group at the highest candidate): {numerics.nsr_to_db(analysis.base_nsr):.2f} dB",
             f"{'group':>5}  {'candidate':<9} {'SQNR dB':>8}  nodes"]
    for s in rows:
        g = groups[s.gid]
        nodes = ", ".join(g.nodes) if g.nodes else "(activations) " + ", ".join(g.activations)
        cand = str(s.candidate) if g.weights or s.candidate.is_float else f"A{s.candidate.a_bits}"
        lines.append(f"{s.gid:>5}  {cand:<9} {s.sqnr_db:>8.2f}  {nodes[:90]}")
    return "\n".join(lines)


def _plan_table(inspection: Inspection, path: str, shown: int = 4) -> str:
    """The dry run's report: one row per group, then the float-kept tensors by reason."""
    plan, config = inspection.plan, inspection.config
    float_kept = len(plan.skips)
    lines = [f"{os.path.basename(path)} on --target {config.target}: {len(plan.groups)} groups, "
             f"{len(plan.activations)} activation quantizers, {len(plan.weighted_ops)} weighted ops, "
             f"{float_kept} tensors kept float",
             f"candidates {','.join(map(str, config.candidates))}; metric {config.metric}"
             + (" (each layer timed on this machine during the run; MACs and weights below)" if config.metric == "latency"
                else "")]
    if get_target(config.target).smooth_quant:
        lines.append("SmoothQuant scales MatMul inputs with outlier channels during the run (not done here)")
    lines.append(f"{'group':>5}  {'allowed':<20} {'MACs/sample':>13} {'weights':>10}  nodes")
    for g in plan.groups:
        nodes = ", ".join(g.nodes) if g.nodes else "(activations) " + ", ".join(g.activations)
        allowed = ",".join(map(str, inspection.allowed[g.gid]))
        lines.append(f"{g.gid:>5}  {allowed:<20} {inspection.macs[g.gid]:>13,} {inspection.weights[g.gid]:>10,}  {nodes[:80]}")
    reasons: dict[str, list[str]] = {}
    for skip in plan.skips:
        reasons.setdefault(skip.reason, []).append(skip.name)
    if reasons:
        lines.append("kept float:")
    for reason, names in sorted(reasons.items(), key=lambda item: -len(item[1])):
        more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
        lines.append(f"  {len(names):>4} x {reason}: {', '.join(names[:shown])}{more}")
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> OptimizeConfig:
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    candidates = args.candidates or get_target(args.target).default_candidates
    common = {"candidates": parse_candidates(candidates), "calib": args.calib, "calib_layout": args.calib_layout,
              "cache_dir": cache,
              "target": args.target, "fix_dims": args.fix_dims,
              "float_subgraphs": args.float_subgraphs,
              "adaround": args.adaround or "auto", "adaround_iterations": args.adaround_iters,
              "workers": args.workers, "backend": args.backend, "max_memory": args.max_memory,
              "phase1_samples": args.phase1_samples, "refine_ranges": not args.no_range_refinement}
    if args.command == "analyze":
        return OptimizeConfig(**common)
    evaluator = load_user_evaluator(args.eval_spec) if args.eval_spec else None
    return OptimizeConfig(**common, budget=args.budget, metric=args.metric, report=args.report,
                          report_dir=args.report_dir, target_drop=args.target_drop, evaluator=evaluator,
                          eval_data=args.eval_data, eval_on_target=args.eval_on_target)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="onnxmp: %(levelname)s: %(message)s")
    progress = ProgressDisplay(not args.quiet)
    with logging_redirect_tqdm() if progress.tty else contextlib.nullcontext():  # log lines above the live bar
        return _run(args, progress)


def _run(args: argparse.Namespace, progress: ProgressDisplay) -> int:
    """The command itself, with the one-line error handling the CLI promises."""
    try:
        if args.command == "finetune":
            _finetune(args)
            return 0
        config = _config(args)
        if args.command == "optimize" and args.dry_run:
            start = time.perf_counter()
            print(_plan_table(inspect_model(args.input, config), args.input))
            print(f"dry run: nothing calibrated or written ({time.perf_counter() - start:.1f} s)")
        elif args.command == "optimize":
            with progress:
                result = optimize(args.input, args.output, config, progress=progress)
            if not args.quiet:
                print(_summary(result.record, args.output))
        else:
            with progress:
                analysis = analyze(args.input, config, progress=progress)
            print(_sensitivity_table(analysis, args.top))
    except OnnxmpError as exc:  # one line, even where the message quotes a multi-line one from onnx
        print("onnxmp: error: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip()),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("onnxmp: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in onnxmp, not the user's fault: short, with a way to see more
        if args.verbose >= 2:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"onnxmp: internal error: {type(exc).__name__}: {first} (rerun with -vv for the traceback, "
              "and please report it); no output written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
