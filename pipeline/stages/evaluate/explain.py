"""Why the model chose a class: Grad-CAM maps, computed by captum (not by hand).

Grad-CAM weighs the feature maps of the last convolutional stage (:func:`models.gradcam_layer`) by the
mean gradient of the class score over each map, keeps the positive part, and scales the result up to the
input's size: the regions whose features raised that class's score. captum's ``LayerGradCam`` does the
hooks and the weighting, ``LayerAttribution.interpolate`` the bilinear upsampling.

Maps are computed in float32 without autocast (gradients of bf16 activations are coarse), in eval mode
(BatchNorm uses its running statistics, as at prediction time).
"""
from __future__ import annotations

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from pipeline.core.learn.data import Normalize
from pipeline.core.learn.models import gradcam_layer


def gradcam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, device: torch.device,
            normalize: Normalize, batch_size: int = 16) -> torch.Tensor:
    """Grad-CAM maps ``[N, H, W]`` (on the CPU, each scaled to 0..1) of ``classes[i]`` for uint8 ``images[i]``.

    ``model`` must already be on ``device``; a map with no positive evidence at all stays 0.
    """
    model.eval()
    explainer = LayerGradCam(model, gradcam_layer(model))
    size = tuple(images.shape[-2:])
    maps = []
    for start in range(0, len(images), batch_size):
        inputs = normalize(images[start : start + batch_size].to(device))
        targets = classes[start : start + batch_size].to(device)
        with torch.enable_grad():
            coarse = explainer.attribute(inputs, target=targets, relu_attributions=True)
        fine = LayerAttribution.interpolate(coarse.detach().float(), size, interpolate_mode="bilinear")[:, 0]
        peak = fine.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
        maps.append((fine / peak).cpu())
    return torch.cat(maps) if maps else torch.zeros((0, *size))
