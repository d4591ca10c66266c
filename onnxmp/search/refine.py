"""Range refinement: each quantized activation's range (min/max or MSE clip) chosen again for the
assignment that ships.

Phase 1 chooses a group's range with every other group at the highest candidate. Next to the
other groups the chosen assignment quantizes, the other range can give the whole model a better
SQNR (ppocr_cls's default point: 31.5 dB with Phase 1's ranges, 32.5 dB after one pass here,
above uniform W8A8). One pass of coordinate descent: the quantized groups whose quantization adds
the most noise (Phase 1's entries), last in the graph first, each flipped to the other range and
kept where the model's noise-to-signal ratio falls. Each flip changes the graph only from that
group on, so the evaluations run from cached cuts of the assignment's values (``partial``), with
every float group's quantizer pruned: on ppocr_rec (20 groups quantized, 8 tried), 9.1 s against
14.7 s for whole-graph runs.
"""

from __future__ import annotations

import dataclasses
import logging

from onnxmp.quant.candidates import Assignment
from onnxmp.quant.groups import QuantizerGroup
from onnxmp.quant.numerics import nsr_to_db
from onnxmp.search.partial import DEFAULT_MAX_MEMORY
from onnxmp.search.sensitivity import nearly_same_range
from onnxmp.search.simulate import Simulator

logger = logging.getLogger(__name__)

# groups tried, one evaluation each: with 32 whole-graph evaluations, ppocr_rec's pass took 48 s of
# a 140 s cold run (benchmarks/cold_speed.py at c4ce629) for +0.4 dB; ppocr_cls's one kept flip was
# the 7th of its 9 groups by sensitivity; with every quantized group tried (up to 64), ppocr_cls,
# ppocr_rec, ppocr_det and minilm shipped the same points as with 8 (4baf913, same layer timings)
MAX_GROUPS = 8
MIN_GAIN = 1e-3  # relative fall of the noise a flip must bring to be kept (not float rounding)


@dataclasses.dataclass(frozen=True)
class Refinement:
    """What the pass changed: (tensor, bits, new method) per flipped activation, the model's NSR
    before and after, and the evaluations it cost."""

    flipped: tuple[tuple[str, int, str], ...]
    nsr_before: float
    nsr_after: float
    evaluations: int


def refine_ranges(simulator: Simulator, assignment: Assignment, sensitivity: dict[tuple, float],
                  max_groups: int = MAX_GROUPS, max_memory: int = DEFAULT_MAX_MEMORY) -> Refinement:
    """Flip the ranges of up to ``max_groups`` of the groups ``assignment`` quantizes below 16
    bits where that lowers the model's noise; ``sensitivity``: Phase 1's NSR per (group, candidate),
    which picks the groups. Changes ``simulator.params.range_method`` in place."""
    params = simulator.params
    order = {g.gid: i for i, g in enumerate(simulator.plan.groups)}
    tried = [g for g in simulator.plan.groups if _flippable(simulator, g, assignment)]
    tried.sort(key=lambda g: -sensitivity.get((g.gid, assignment[g.gid]), 0.0))
    tried = sorted(tried[:max_groups], key=lambda g: -order[g.gid])  # last in the graph first
    if not tried:
        nsr = simulator.nsr(assignment)
        return Refinement((), nsr, nsr, 1)
    with simulator.from_cuts_of(assignment, max_memory, float_fixed=True):
        before = best = simulator.nsr(assignment)
        flipped, groups = [], 0
        for group in tried:
            bits = assignment[group.gid].a_bits
            old = {name: params.range_method.get((name, bits), "mse") for name in group.activations}
            new = {name: "minmax" if method == "mse" else "mse" for name, method in old.items()}
            params.range_method.update({(name, bits): m for name, m in new.items()})
            nsr = simulator.nsr(assignment)
            if nsr < best * (1 - MIN_GAIN):
                best, groups = nsr, groups + 1
                flipped += [(name, bits, m) for name, m in new.items()]
            else:
                params.range_method.update({(name, bits): m for name, m in old.items()})
    simulator.forget_settled()
    logger.info("range refinement: %d of %d groups flipped, SQNR %.2f -> %.2f dB", groups, len(tried),
                nsr_to_db(before), nsr_to_db(best))
    return Refinement(tuple(flipped), before, best, 1 + len(tried))


def _flippable(simulator: Simulator, group: QuantizerGroup, assignment: Assignment) -> bool:
    """The group is quantized below 16 bits and its two ranges differ somewhere."""
    bits = assignment[group.gid].a_bits
    return bool(group.activations) and bits < 16 and not all(
        nearly_same_range(simulator.params, name, bits) for name in group.activations)
