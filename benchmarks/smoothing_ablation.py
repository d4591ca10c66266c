"""SmoothQuant on or off: uniform W8A8 on --target ort, simulated and as stock onnxruntime runs
the exported file, per real model (same calibration data, same placement rules).

    python benchmarks/smoothing_ablation.py [--models ppocr_rec minilm]

SQNR is on the tensors onnxmp measures (the graph outputs, or a squashing output's input), over
the model's calibration samples; no timing, so it may run beside other work.
"""

from __future__ import annotations

import argparse
import time

from common import bench_models, git_state, publish

from onnxmp.output.export import export_qdq
from onnxmp.pipeline import OptimizeConfig, _load_and_place, _measure_exported, uniform_assignment
from onnxmp.quant import numerics
from onnxmp.quant.calibrate import calibrate
from onnxmp.quant.candidates import Candidate
from onnxmp.quant.params import QuantParams
from onnxmp.runtime.session import make_session, observed_tensors, run_over
from onnxmp.search.simulate import Simulator
from onnxmp.targets import get_target


def uniform_w8a8(path: str, calib: str, smooth: bool) -> list[str]:
    """Simulated and onnxruntime SQNR of uniform W8A8, and the seconds it took."""
    start = time.perf_counter()
    config = OptimizeConfig(calib=calib).resolved()
    profile = get_target("ort")
    model, data, _, plan = _load_and_place(path, config, smooth)
    params = QuantParams(model, plan, calibrate(model, plan, data), profile.range_margin,
                         profile.range_margin_ops)
    observed = observed_tensors(model)
    simulator = Simulator(model, plan, params, data, run_over(make_session(model, outputs=observed), data, observed))
    assignment = uniform_assignment(profile.group_candidates(plan, config.candidates, model), Candidate(8, 8))
    shipped = _measure_exported(export_qdq(model, plan, params, assignment), data, simulator.observed, simulator.reference)
    return [f"{numerics.nsr_to_db(simulator.nsr(assignment)):.2f}", f"{shipped['sqnr_db_ort_default']:.2f}",
            f"{time.perf_counter() - start:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names (default: every prepared one)")
    args = parser.parse_args()
    rows = []
    for model in bench_models(args.models):
        for smooth in (False, True):
            rows.append([model.name, "on" if smooth else "off", *uniform_w8a8(model.model, model.calib, smooth)])
            print(rows[-1], flush=True)
    caption = ("# SmoothQuant on or off: uniform W8A8 on --target ort\n\n"
               f"Measured by `python benchmarks/smoothing_ablation.py` at {git_state()}. SQNR on the tensors onnxmp "
               "measures, over the calibration samples; simulated, and the exported file on onnxruntime's default session.")
    publish("smoothing.md", caption, ["model", "SmoothQuant", "simulated SQNR dB", "onnxruntime SQNR dB", "s"], rows)


if __name__ == "__main__":
    main()
