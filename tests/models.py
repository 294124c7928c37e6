"""Small TorchScript models for tests: their behaviour is fixed by construction, not by training."""

from __future__ import annotations

from pathlib import Path

import torch


class ThumbnailClassifier(torch.nn.Module):
    """Embedding = an 8x8 thumbnail (near-identical images get near-identical embeddings); logits = mean colour."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        thumb = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        logits = torch.stack([x[:, 0].mean(dim=(1, 2)), x[:, 1].mean(dim=(1, 2)), x[:, 2].mean(dim=(1, 2))], 1)
        return logits * 3, thumb


def save_thumbnail_model(folder: Path) -> tuple[Path, Path]:
    """The scripted model and a config naming its classes and input size."""
    model = folder / "thumb.torchscript"
    torch.jit.script(ThumbnailClassifier()).save(str(model))
    cfg = folder / "thumb.yaml"
    cfg.write_text("model:\n  torchscript:\n    imgsz: 64\n    class_names: [red, green, blue]\n")
    return model, cfg
