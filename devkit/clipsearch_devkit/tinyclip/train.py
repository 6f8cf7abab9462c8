"""Train the tiny test CLIP on synthetic coloured shapes and save it in open_clip's local-dir layout.

Usage (from the repository root)::

    python -m clipsearch_devkit.tinyclip.train --out OUT_DIR [--seed 0] [--steps 700]

The committed model is ``devkit/clipsearch_devkit/tinyclip/model`` (``clipsearch_devkit.tinyclip.MODEL_DIR``).

The output folder gets ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
``open_clip_model.safetensors``, so it loads fully offline with::

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:/abs/path/to/model")
    tokenizer = open_clip.get_tokenizer("local-dir:/abs/path/to/model")

Everything runs on CPU (one torch thread by default) and is seeded; a run takes 1-2 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .synthetic import CAPTION_TEMPLATES, CLASSES, make_image

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"

# Image tower: open_clip's ModifiedResNet (the architecture of OpenAI's RN50 CLIP) shrunk to one
# bottleneck block per stage, stem width 8 and a 256-wide attention pool.  A tiny ViT (patch 8,
# width 64-96, 3 layers) was tried first: within the same CPU budget it only reached ~0.6-0.9 mean
# text->image precision@5, while this CNN reaches 1.0.  Text tower: tiny causal transformer;
# vocab_size stays at the standard 49408 so open_clip's bundled SimpleTokenizer works offline.
# The token embedding (49408 x text width) dominates the file, hence the narrow text width of 32.
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "layers": [1, 1, 1, 1],
        "width": 8,
        "head_width": 32,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
    },
}

# open_clip's defaults (OpenAI mean/std, bicubic, shortest-side resize + centre crop) at 64 px.
PREPROCESS_CFG: dict[str, Any] = {
    "size": 64,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def write_config(out_dir: Path) -> Path:
    """Write ``open_clip_config.json`` for ``MODEL_CFG``/``PREPROCESS_CFG`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed Python, NumPy and torch, and fix torch's intra-op thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # avoid slow denormal arithmetic on CPU


def build_pool(per_class: int, seed: int, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``per_class`` pictures of every class and run them through ``preprocess``."""
    rng = random.Random(seed)
    images, labels = [], []
    for label, (color, shape) in enumerate(CLASSES):
        for _ in range(per_class):
            images.append(preprocess(make_image(color, shape, rng)))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def multi_positive_infonce(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE where every image/caption pair of the same class counts as a positive.

    With one pair per class in the batch this is exactly CLIP's loss; with repeated classes it
    avoids pushing apart pictures and captions that actually match.
    """
    logits = logit_scale * image_features @ text_features.t()
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree turns; none of them changes a picture's colour or shape."""
    out = torch.empty_like(x)
    ops = torch.randint(0, 8, (x.shape[0],), generator=gen).tolist()
    for i, op in enumerate(ops):
        img = x[i]
        if op & 4:
            img = img.flip(-1)
        out[i] = torch.rot90(img, op & 3, dims=(-2, -1))
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or name in ("logit_scale", "visual.class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype) -> None:
    """Save ``model``'s state dict as safetensors, floating-point tensors cast to ``dtype``."""
    from safetensors.torch import save_file

    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates the file owner-only; the artifact must be world-readable
    os.replace(tmp, path)


@torch.no_grad()
def check_roundtrip(model: torch.nn.Module, out_dir: Path, tokenizer, images: torch.Tensor) -> float:
    """Reload ``out_dir`` via open_clip's local-dir loader; return the lowest feature cosine vs ``model``."""
    import open_clip

    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out_dir.resolve()}")
    loaded.eval()
    model.eval()
    if any(p.dtype != torch.float32 for p in loaded.parameters()):
        raise RuntimeError("reloaded model is not float32")
    texts = tokenizer([t.format(color=c, shape=s) for c, s in CLASSES for t in CAPTION_TEMPLATES[:1]])
    cos = []
    for enc, arg in (("encode_image", images), ("encode_text", texts)):
        a = F.normalize(getattr(model, enc)(arg), dim=-1)
        b = F.normalize(getattr(loaded, enc)(arg), dim=-1)
        cos.append((a * b).sum(-1).min().item())
    return min(cos)


def train(
    out_dir: Path,
    seed: int = 0,
    steps: int = 700,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    per_class: int = 150,
    fp16: bool = True,
    threads: int = 1,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train the tiny CLIP and write it to ``out_dir``; returns a small summary dict.

    ``threads`` defaults to 1: the model is too small to gain much from a second thread (on a
    2-core machine ~0.09 s/step with two threads when idle, ~0.12 s/step with one), while two
    threads on a busy machine (tests running alongside) were 5-9x slower (OpenMP spin-waiting).
    The weights are reproducible bit for bit for a given seed, thread count and machine.
    """
    import open_clip

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    seed_everything(seed, threads)
    out_dir = Path(out_dir)

    # Build the model exactly the way users load it: from a local-dir config.
    with tempfile.TemporaryDirectory() as tmp:
        write_config(Path(tmp))
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp}", load_weights=False)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp}")
    model.train()

    images, labels = build_pool(per_class, seed + 1, preprocess)
    t_data = time.perf_counter() - t_start

    # Every (class, template) caption, tokenised once.
    n_t = len(CAPTION_TEMPLATES)
    captions = [t.format(color=c, shape=s) for c, s in CLASSES for t in CAPTION_TEMPLATES]
    tokens = tokenizer(captions).view(len(CLASSES), n_t, -1)

    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    gen = torch.Generator().manual_seed(seed + 2)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        lab = labels[idx]
        tmpl = torch.randint(0, n_t, (batch_size,), generator=gen)
        x = augment(images[idx], gen)
        img_f, txt_f, scale = model(x, tokens[lab, tmpl])
        loss = multi_positive_infonce(img_f, txt_f, lab, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  scale {scale.item():6.2f}  lr {lr_at(step):.2e}"
                  f"  t {time.perf_counter() - t_start:6.1f}s", flush=True)
    t_train = time.perf_counter() - t_start - t_data

    model.eval()
    write_config(out_dir)
    save_weights(model, out_dir / WEIGHTS_NAME, torch.float16 if fp16 else torch.float32)
    min_cos = check_roundtrip(model, out_dir, tokenizer, images[:: per_class][:32])
    if min_cos < 0.999:
        raise RuntimeError(f"reloaded model disagrees with the trained one (min cosine {min_cos:.5f})")

    summary = {
        "out_dir": str(out_dir),
        "seed": seed,
        "steps": steps,
        "threads": threads,
        "final_loss": round(loss.item(), 4),
        "weights_dtype": "float16" if fp16 else "float32",
        "weights_bytes": (out_dir / WEIGHTS_NAME).stat().st_size,
        "roundtrip_min_cosine": round(min_cos, 6),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "total_cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--per-class", type=int, default=150, help="training pictures rendered per class")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (weights depend on it)")
    parser.add_argument("--fp32", action="store_true", help="store float32 weights instead of float16")
    args = parser.parse_args(argv)
    summary = train(
        args.out,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        per_class=args.per_class,
        fp16=not args.fp32,
        threads=args.threads,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
