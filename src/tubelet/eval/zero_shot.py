"""Zero-shot classification from class-name prompts (CLIP, arXiv 2103.00020, Sec. 3.1.4; FLIP,
arXiv 2212.00794, Sec. 4, which uses 7 of CLIP's 80 ImageNet templates).

Each class is described by prompts ``template.format(text)`` (``text`` = the class name with ``_`` as
spaces, or a given description); the prompts' normalised text embeddings are averaged and normalised
again (prompt ensembling), and a clip's logits are ``s * v . w_c`` with the model's logit scale ``s``.
The model only needs ``encode_video(video) -> (B, E)`` and ``encode_text(texts) -> (B, E)`` (both
L2-normalised) and optionally ``logit_scale()``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.errors import ConfigError
from tubelet.models.text import FLIP_TEMPLATES

__all__ = ["FLIP_TEMPLATES", "ZeroShotClassifier", "class_prompts", "zero_shot_weights"]



def class_prompts(class_names: Sequence[str], templates: Sequence[str] = FLIP_TEMPLATES,
                  class_texts: Mapping[str, str] | None = None) -> list[list[str]]:
    """The prompts of each class: ``[[template.format(text) for template] for class]``."""
    if not class_names:
        raise ConfigError("zero-shot classification needs class names (a label map, labels.txt or --classes)")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ConfigError(f"zero-shot templates need exactly one '{{}}' each (where the class goes), got {bad or '[]'}")
    texts = dict(class_texts or {})
    unknown = sorted(set(texts) - set(class_names))
    if unknown:
        raise ConfigError(f"method.class_texts names classes that are not in the label map: {unknown}")
    out = []
    for name in class_names:
        text = texts.get(name, str(name).replace("_", " ")).strip()
        if not text:
            raise ConfigError(f"class '{name}' has an empty text for its prompts")
        out.append([t.format(text) for t in templates])
    return out


@torch.no_grad()
def zero_shot_weights(model: Any, class_names: Sequence[str], templates: Sequence[str] = FLIP_TEMPLATES,
                      class_texts: Mapping[str, str] | None = None) -> torch.Tensor:
    """``(K, E)`` class embeddings: the normalised mean of each class's normalised prompt embeddings."""
    prompts = class_prompts(class_names, templates, class_texts)
    flat = [p for ps in prompts for p in ps]
    emb = torch.cat([model.encode_text(flat[i:i + 256]) for i in range(0, len(flat), 256)]).float()
    emb = F.normalize(emb, dim=-1).view(len(prompts), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


class ZeroShotClassifier(nn.Module):
    """``classify(video) -> (B, K)`` logits of a video-text model against class-name prompts; what
    multi-view testing and prediction score with. The class embeddings are computed once, here."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], templates: Sequence[str] | None = None,
                 class_texts: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        templates = list(templates if templates is not None else getattr(model, "templates", FLIP_TEMPLATES))
        texts = class_texts if class_texts is not None else getattr(model, "class_texts", None)
        self.register_buffer("weights", zero_shot_weights(model, self.class_names, templates, texts), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classify(self, video: torch.Tensor) -> torch.Tensor:
        scale = self.model.logit_scale().float() if hasattr(self.model, "logit_scale") else 100.0
        return scale * self.model.encode_video(video).float() @ self.weights.t()
