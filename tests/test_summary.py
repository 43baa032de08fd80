import pytest
from torch import nn

import onebit
from onebit.nn import BinaryConv2d, BinaryLinear


def test_summary_counts_by_hand():
    model = nn.Sequential(
        BinaryConv2d(1, 4, 3, padding=1, bias=False),  # binary weights, real input
        nn.BatchNorm2d(4),
        nn.Flatten(),
        BinaryLinear(4 * 28 * 28, 10, input_quantizer="sign", scaling="xnor"),
        nn.Linear(10, 2),
    )
    s = onebit.summary(model, (1, 28, 28))
    assert s.binary_params == 36 + 31360
    assert s.float_params == 8 + 10 + 22
    assert s.binary_macs == 31360
    assert s.float_macs == 36 * 28 * 28 + 20
    assert s.float32_bytes == 4 * (36 + 31360 + 40)
    assert s.packed_bytes == pytest.approx((36 + 31360) / 8 + 4 * 40)
    assert s.compression_ratio == pytest.approx(s.float32_bytes / s.packed_bytes)
    text = str(s)
    assert "BinaryConv2d" in text and "Compression ratio" in text
    assert [layer.output_shape for layer in s.layers][0] == (4, 28, 28)
    assert model.training  # mode restored


def test_summary_rejects_batch_dimension_confusion():
    with pytest.raises(ValueError):
        onebit.summary(nn.Linear(3, 2), (0, 3))
