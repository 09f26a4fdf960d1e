"""Where the model runs and how it is fed there: device choice, placement, precision, inference.

Shared by the train and evaluate stages and the predict command, so that every one of them runs a model
the same way (bf16 autocast and channels_last on CUDA, plain fp32 on the CPU).
"""
from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from pipeline.core.base.errors import UserError
from pipeline.core.learn.data import Batch, Normalize


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else the CPU; asking for CUDA without a GPU is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA GPU is available (use auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed every generator the run touches, so a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA: channels_last weights (fastest for bf16 convolutions) and cuDNN autotuning for fixed sizes."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 mixed precision on CUDA (no loss scaling needed, unlike fp16); plain fp32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def infer(model: nn.Module, images: torch.Tensor, device: torch.device, normalize: Normalize) -> torch.Tensor:
    """Float32 logits of one uint8 batch (already on ``device``), with the model in eval mode."""
    model.eval()
    with autocast(device):
        return model(normalize(images)).float()


def predict_logits(model: nn.Module, batches: Iterable[Batch], device: torch.device,
                   normalize: Normalize) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets (on the CPU) for every image of ``batches``, in order."""
    logits, targets = [], []
    for images, labels in batches:
        logits.append(infer(model, images, device, normalize))
        targets.append(labels)
    return torch.cat(logits).cpu(), torch.cat(targets).cpu()
