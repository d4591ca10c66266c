"""Why onnxmp edits onnx protos rather than onnx-graphsurgeon graphs: the memory and time of one
round trip (import, one edit, export) on a model holding one big weight, against the proto way
onnxmp uses (``model.large.light_copy``: the graph without the weights' bytes, which an output
takes over at the end). Each way runs in its own process; peak RSS is that process's own, from the
end of the load (Linux only).

    pip install onnx-graphsurgeon && python benchmarks/graph_ir.py [--mb 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import git_state, write_result  # noqa: E402

CHILD = r"""
import sys, time
import onnx

def rss_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024

way, path = sys.argv[1], sys.argv[2]
model = onnx.load(path)
loaded = rss_mb("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here: the load's transient is not the edit's
start = time.perf_counter()
if way == "graphsurgeon":
    import onnx_graphsurgeon as gs
    graph = gs.import_onnx(model)
    graph.nodes[0].name = "renamed"
    out = gs.export_onnx(graph)
else:
    from onnxmp.model.large import light_copy
    out = light_copy(model)
    out.graph.node[0].name = "renamed"
seconds = time.perf_counter() - start
print(loaded, rss_mb("VmHWM:"), seconds)
"""


def make_model(path: str, mb: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = int((mb * 2**20 / 4) ** 0.5)
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((side, side), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])], [weight])
    onnx.save(helper.make_model(graph), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="size of the one weight, MB")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "big.onnx")
        make_model(path, args.mb)
        for way in ("onnx protos (light_copy)", "graphsurgeon"):
            run = subprocess.run([sys.executable, "-c", CHILD, way.split()[0], path], capture_output=True, text=True)
            if run.returncode:
                rows.append(f"| {way} | failed: {run.stderr.strip().splitlines()[-1]} | | |")
                continue
            loaded, peak, seconds = map(float, run.stdout.split())
            rows.append(f"| {way} | {loaded:.0f} | {peak:.0f} (+{peak - loaded:.0f}) | {seconds:.2f} |")
    text = (f"# Graph IR cost: one edit of a model with a {args.mb} MB weight\n\n"
            f"Measured by `python benchmarks/graph_ir.py --mb {args.mb}` at {git_state()}. Peak RSS of a process that "
            "loaded the model (peak reset after the load, Linux `clear_refs`), then made an edited copy of it the way named.\n\n"
            "| way | RSS after load (MB) | peak RSS during the edit (MB) | time of the edit (s) |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print(text)
    write_result("graph_ir.md", text)


if __name__ == "__main__":
    main()
