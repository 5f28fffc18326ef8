"""On CUDA: mixed precision and channels-last training run, learn, and record the GPU."""
from __future__ import annotations

import pytest
import torch

from spa import pipeline


@pytest.mark.gpu
def test_amp_channels_last_run_on_cuda(compose_cfg):
    summary = pipeline.run(compose_cfg("device=cuda", "train.amp=true", "train.channels_last=true", "train.epochs=3"))
    assert summary["device"].startswith("cuda")
    assert summary["device_name"] == torch.cuda.get_device_name(0)
    assert summary["metrics"]["test_top1"] > 25.0            # 4 classes: above chance


@pytest.mark.gpu
def test_autocast_is_bf16_or_fp16_on_cuda():
    from spa.training.engine import autocast_context
    with autocast_context(torch.device("cuda"), amp=True):
        y = torch.nn.Linear(8, 8).cuda()(torch.randn(4, 8, device="cuda"))
    assert y.dtype in (torch.bfloat16, torch.float16)
