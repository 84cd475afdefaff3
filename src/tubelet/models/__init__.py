"""Backbones and layers. Importing this package registers every model."""

from tubelet.models.registry import create_model, get_model_config, list_models, register_model

import tubelet.models.vit  # noqa: E402,F401  (registers vit_*)
import tubelet.models.mvit  # noqa: E402,F401  (registers mvitv2_*)
import tubelet.models.memvit  # noqa: E402,F401  (registers memvit_*)
import tubelet.models.resnet3d  # noqa: E402,F401  (registers slow_r50, slow_r18, c2d/i3d/r2plus1d/csn)
import tubelet.models.slowfast  # noqa: E402,F401  (registers slowfast_*)
import tubelet.models.text  # noqa: E402,F401  (registers text_*)
import tubelet.models.resnet2d  # noqa: E402,F401  (registers resnet18_image, resnet50_image)
import tubelet.models.utt  # noqa: E402,F401  (registers utt_r18, utt_r50)
import tubelet.models.deformable_detr  # noqa: E402,F401  (registers deformable_detr_*)
import tubelet.models.x3d  # noqa: E402,F401  (registers x3d_*, efficient_x3d_xs, efficient_x3d_s)

__all__ = ["create_model", "get_model_config", "list_models", "register_model"]
