"""int8 Linears (`int8_linear.py`) and the int8 precision policy, eager (no compile): the quantized layer against its
fp32 original, the state dict round trip an artifact relies on, and the policy's split."""
import pytest
import torch
from torch import nn

from foresight_engine import int8_linear
from foresight_engine.builders.accuracy import relative_l2
from foresight_engine.errors import CalibrationError, ConfigError
from foresight_engine.int8_linear import Int8Linear
from foresight_engine.models.weights import load_strict
from foresight_engine.precision import INT8_KEEP_HIGH, Precision, PrecisionPolicy


def _linear(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(64, 48), torch.randn(5, 64)


def test_int8_linear_matches_its_fp32_original_within_int8_error():
    linear, x = _linear()
    layer = Int8Linear.from_linear(linear, float(x.abs().amax()))
    want, got = linear(x), layer(x)
    err = relative_l2(got, want)
    assert 1e-4 < err < 2e-2, err  # really quantized (8 bits: ~0.5%), and close
    # per-channel weight scales: every row's largest weight is exactly representable
    assert torch.equal(layer.qweight.abs().amax(dim=1), torch.full((48,), 127, dtype=torch.int8))
    assert relative_l2(layer.weight.float(), linear.weight) < 1e-2
    # inputs beyond the calibrated range are clipped: a too-small amax is a real (and visible) error
    assert relative_l2(Int8Linear.from_linear(linear, 0.1)(x), want) > 0.3


def test_bf16_cast_keeps_scales_fp32_and_weights_int8():
    linear, x = _linear(1)
    layer = Int8Linear.from_linear(linear, float(x.abs().amax())).to(torch.bfloat16)
    assert layer.qweight.dtype == torch.int8 and layer.weight_scale.dtype == torch.float32
    assert layer.input_amax.dtype == torch.float32 and layer.bias.dtype == torch.bfloat16
    out = layer(x)
    assert out.dtype == torch.bfloat16 and relative_l2(out.float(), linear(x)) < 3e-2  # int8 + bf16 rounding


def test_state_dict_round_trip_through_shells():
    """What an artifact stores and loads: the quantized tensors fill empty `Int8Linear`s of a fresh module."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    x = torch.randn(3, 16)
    names = int8_linear.quantize(model, {"0": 4.0, "2": 2.0})
    assert names == ["0", "2"] and all(isinstance(model[i], Int8Linear) for i in (0, 2))
    state = model.state_dict()
    assert int8_linear.int8_layers(state) == ["0", "2"]
    fresh = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    int8_linear.shells(fresh, int8_linear.int8_layers(state))
    load_strict(fresh, state, "int8 test")
    assert fresh[0].input_scale == pytest.approx(4.0 / 127)  # the Python-float scale follows the loaded amax
    assert torch.equal(fresh(x), model(x))


def test_quantize_names_what_is_not_a_linear():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    with pytest.raises(CalibrationError, match=r"\['1'\] are not plain nn.Linear"):
        int8_linear.quantize(model, {"1": 1.0})
    with pytest.raises(CalibrationError, match="'missing'"):
        int8_linear.shells(model, ["missing"])


def test_int8_policy_keeps_everything_but_the_transformers_linears_high():
    policy = PrecisionPolicy.for_precision("int8")
    assert [policy.of(c) for c in ("vision_tower", "backbone", "adapter", "video_decoder", "vae")] == [
        Precision.BF16, Precision.INT8, Precision.BF16, Precision.INT8, Precision.BF16]
    assert policy.keep_high == INT8_KEEP_HIGH and policy.keeps_high("transformer.proj_out")
    assert policy.dtype("backbone") == torch.bfloat16  # bias, norms and outputs
    with pytest.raises(ConfigError, match="int8 components keep their other weights"):
        Precision.INT8.storage_dtype
    with pytest.raises(ConfigError, match="high=int8 makes no sense"):
        PrecisionPolicy.for_precision("int8", high="int8")
    with pytest.raises(ConfigError, match=r"unknown precision 'int4'.*'int8'"):
        Precision.parse("int4")
