"""Measure the tiny CLIP's retrieval quality on held-out synthetic pictures, loaded the way users load it.

Usage (from the repository root)::

    python -m clipsearch_devkit.tinyclip.evaluate [MODEL_DIR] [--seed 12345] [--per-class 10]

MODEL_DIR defaults to ``devkit/clipsearch_devkit/tinyclip/model``.  Prints a JSON dict of metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import MODEL_DIR
from .synthetic import CAPTION_TEMPLATES, CLASSES, iter_balanced

DEFAULT_MODEL_DIR = MODEL_DIR
EVAL_SEED = 12345  # differs from every seed train.py uses (seed, seed + 1, seed + 2 for small seeds)


@torch.no_grad()
def evaluate(model_dir: str | Path = DEFAULT_MODEL_DIR, seed: int = EVAL_SEED, per_class: int = 10,
             k: int = 5) -> dict[str, Any]:
    """Load ``model_dir`` via ``local-dir:`` and score retrieval on ``per_class`` fresh pictures per class.

    Returns a dict with:

    - ``text_to_image_p_at_k_mean`` / ``..._min`` / ``..._per_class``: for each class query
      ``"a {color} {shape}"``, the fraction of the top-``k`` images that are of that class;
    - ``text_to_image_p_at_k_all_templates_mean``: the same averaged over every caption template;
    - ``image_to_image_top_k_same_class``: fraction of each image's ``k`` nearest other images
      that share its class;
    - ``zero_shot_accuracy``: how often an image's best-matching class caption is its own class.
    """
    import open_clip

    model_path = Path(model_dir).resolve()
    name = f"local-dir:{model_path}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()

    images, labels = [], []
    for img, color, shape in iter_balanced(per_class, seed):
        images.append(preprocess(img))
        labels.append(CLASSES.index((color, shape)))
    image_feats = F.normalize(model.encode_image(torch.stack(images)), dim=-1)
    labels_t = torch.tensor(labels)

    def p_at_k(template: str) -> torch.Tensor:
        texts = tokenizer([template.format(color=c, shape=s) for c, s in CLASSES])
        text_feats = F.normalize(model.encode_text(texts), dim=-1)
        top = (text_feats @ image_feats.t()).topk(k, dim=1).indices  # [classes, k]
        return (labels_t[top] == torch.arange(len(CLASSES))[:, None]).float().mean(dim=1)

    per_class_p = p_at_k(CAPTION_TEMPLATES[0])
    all_templates = torch.stack([p_at_k(t) for t in CAPTION_TEMPLATES])

    sim = image_feats @ image_feats.t()
    sim.fill_diagonal_(float("-inf"))
    nn = sim.topk(k, dim=1).indices
    i2i = (labels_t[nn] == labels_t[:, None]).float().mean().item()

    class_texts = tokenizer([CAPTION_TEMPLATES[0].format(color=c, shape=s) for c, s in CLASSES])
    class_feats = F.normalize(model.encode_text(class_texts), dim=-1)
    zero_shot = ((image_feats @ class_feats.t()).argmax(dim=1) == labels_t).float().mean().item()

    return {
        "model_dir": str(model_path),
        "n_images": len(labels),
        "k": k,
        "text_to_image_p_at_k_mean": round(per_class_p.mean().item(), 4),
        "text_to_image_p_at_k_min": round(per_class_p.min().item(), 4),
        "text_to_image_p_at_k_per_class": {
            f"{c} {s}": round(v, 3) for (c, s), v in zip(CLASSES, per_class_p.tolist())
        },
        "text_to_image_p_at_k_all_templates_mean": round(all_templates.mean().item(), 4),
        "text_to_image_p_at_k_all_templates_min": round(all_templates.min().item(), 4),
        "image_to_image_top_k_same_class": round(i2i, 4),
        "zero_shot_accuracy": round(zero_shot, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(evaluate(args.model_dir, seed=args.seed, per_class=args.per_class, k=args.k), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
