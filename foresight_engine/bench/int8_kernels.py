"""Which int8 library to use on this CPU: the LTX feed-forward of a preset (Linear -> GELU -> Linear, the shape of
the denoising step's largest GEMMs) in bf16 and through each well-kept int8 path, timed round-robin in one process.

    python -m foresight_engine.bench.int8_kernels --preset small [--rounds 20] [--json F]

Contenders: `bf16` (inductor, weights frozen), `bf16-max-autotune` (inductor's CPU GEMM templates autotuned against
oneDNN), `int8-static` (this package's `Int8Linear`: PT2E's Q/DQ form with a
calibrated per-tensor input scale, lowered by torchao's x86 inductor passes to oneDNN `qlinear_pointwise`; what
`--precision int8` builds), `torchao-dynamic` (torchao's `Int8DynamicActivationInt8WeightConfig`: per-token scales
computed each call), `torchao-weight-only` (`Int8WeightOnlyConfig`: int8 weights, bf16 math), `ort-dynamic`
(ONNX Runtime's `quantize_dynamic`: MatMulInteger on fp32 graphs, ORT's CPU int8 path). Every compiled contender
uses freezing (what the compile backend's AOTInductor packages use).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import int8_linear
from ..builders.accuracy import relative_l2
from ..config import ModelConfig, preset as preset_config
from ..models.export_spec import BuildShape
from .runner import Rounds, measure_interleaved


def feed_forward(config: ModelConfig) -> tuple[nn.Module, torch.Tensor]:
    """The LTX block's feed-forward at the preset's width and a batch of its denoising-step tokens (x2: guidance)."""
    d = config.decoder.transformer.inner_dim
    tokens = BuildShape.for_config(config).geometry(config).grid.num_tokens
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d)).eval()
    return module, torch.randn(2 * tokens, d)


def _compiled(module: nn.Module, max_autotune: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compiled with freezing; the patch must hold at the first call, where inductor compiles."""
    compiled = torch.compile(module, fullgraph=True, dynamic=False)

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch._inductor.config.patch(freezing=True, max_autotune=max_autotune):
            return compiled(x)
    return call


def _int8_static(module: nn.Module, x: torch.Tensor) -> nn.Module:
    ours = copy.deepcopy(module)
    amax = {"0": float(x.abs().amax()), "2": float(torch.nn.functional.gelu(module[0](x), approximate="tanh")
                                                  .abs().amax())}
    int8_linear.quantize(ours, amax)
    return ours.to(torch.bfloat16)


def _torchao(module: nn.Module, config) -> nn.Module:
    from torchao.quantization import quantize_
    quantized = copy.deepcopy(module).to(torch.bfloat16)
    quantize_(quantized, config)
    return quantized


def _ort_dynamic(module: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(buffer.getvalue())
        quantize_dynamic(str(Path(tmp) / "fp32.onnx"), str(Path(tmp) / "int8.onnx"), weight_type=QuantType.QInt8)
        graph = (Path(tmp) / "int8.onnx").read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return lambda inp: torch.from_numpy(session.run(None, {"x": inp.float().numpy()})[0])


def contenders(module: nn.Module, x: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    int8_linear.enable_kernels()
    return {
        "bf16": _compiled(copy.deepcopy(module).to(torch.bfloat16)),
        "bf16-max-autotune": _compiled(copy.deepcopy(module).to(torch.bfloat16), max_autotune=True),
        "int8-static": _compiled(_int8_static(module, x)),
        "torchao-dynamic": _compiled(_torchao(module, Int8DynamicActivationInt8WeightConfig())),
        "torchao-weight-only": _compiled(_torchao(module, Int8WeightOnlyConfig())),
        "ort-dynamic": _ort_dynamic(module, x),
    }


def run(preset: str, rounds: int) -> dict:
    module, x = feed_forward(preset_config(preset))
    with torch.inference_mode():
        reference = module(x)
    fns = contenders(module, x)
    inputs = {name: (x if name == "ort-dynamic" else x.to(torch.bfloat16)) for name in fns}
    with torch.inference_mode():
        timed = measure_interleaved({name: (lambda f=f, i=inputs[name]: f(i)) for name, f in fns.items()},
                                    Rounds(3, rounds))
    flops = 2 * x.shape[0] * sum(m.in_features * m.out_features for m in module if isinstance(m, nn.Linear))
    base = statistics.median(timed["bf16"][0])
    return {"preset": preset, "shape": {"tokens": x.shape[0], "width": x.shape[1]}, "threads": torch.get_num_threads(),
            "results": {name: {"median_s": statistics.median(times), "vs_bf16": base / statistics.median(times),
                               "gop_per_s": flops / statistics.median(times) / 1e9,
                               "relative_l2_vs_fp32": relative_l2(out.float(), reference)}
                        for name, (times, out) in timed.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args(argv)
    report = run(args.preset, args.rounds)
    print(f"LTX feed-forward, preset {args.preset}: {report['shape']['tokens']} tokens x {report['shape']['width']}, "
          f"{report['threads']} threads")
    print(f"{'contender':<22}{'median ms':>10}{'vs bf16':>9}{'GOP/s':>8}{'rel L2 vs fp32':>16}")
    for name, r in report["results"].items():
        print(f"{name:<22}{1e3 * r['median_s']:>10.3f}{r['vs_bf16']:>8.2f}x{r['gop_per_s']:>8.0f}"
              f"{r['relative_l2_vs_fp32']:>16.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
