"""The OpenCLIP model: loading, image preprocessing, and image/text encoding to L2-normalized vectors.

This is the only module of clipsearch that imports torch, torchvision or open_clip. The server (text queries,
image queries) and the encoder worker (ingestion) both go through it, so both always agree on the
model identity, the preprocessing and the normalization.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import open_clip
import torch
import torchvision.transforms.v2.functional as tvf
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import text_global_pool
from PIL import Image

from .settings import default

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "ClipEncoder", "ModelSpec", "load_encoder"]

log = logging.getLogger(__name__)

DEFAULT_MODEL: str = default("--model")
DEFAULT_PRETRAINED: str = default("--pretrained")
_LOCAL_DIR = "local-dir:"
_HF_HUB = "hf-hub:"
_WEIGHTS_FILE = "open_clip_model.safetensors"
_RANDOM_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """Which OpenCLIP model to load, and where to run it.

    name: a built-in OpenCLIP name ("ViT-B-32"), "hf-hub:org/repo", or "local-dir:/path" (offline).
    pretrained: weights tag for built-in names ("laion2b_s34b_b79k", "openai"); "none" or "" for
        random weights (seeded, so every process gets the same ones); ignored for hf-hub/local-dir.
    device: "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    """

    name: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"

    @classmethod
    def from_args(cls, args: Any) -> "ModelSpec":
        """From the model options of a parsed server or worker command line (`clipsearch_core.settings`)."""
        return cls(name=args.model, pretrained=args.pretrained or "none", device=args.device)

    @property
    def random_weights(self) -> bool:
        has_schema = self.name.startswith((_LOCAL_DIR, _HF_HUB))
        return not has_schema and self.pretrained.strip().lower() in ("", "none")


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _identity(spec: ModelSpec) -> str:
    """A string that names the model's weights, equal on every machine that loads the same weights."""
    if spec.name.startswith(_LOCAL_DIR):
        folder = Path(spec.name[len(_LOCAL_DIR):]).expanduser()
        digest = hashlib.sha256()
        with open(folder / _WEIGHTS_FILE, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return f"{_LOCAL_DIR}sha256:{digest.hexdigest()[:16]}"  # the weights, wherever the folder lives
    if spec.name.startswith(_HF_HUB):
        return spec.name
    if spec.random_weights:
        return f"{spec.name}@random-seed{_RANDOM_SEED}"
    return f"{spec.name}@{spec.pretrained}"


class ClipEncoder:
    """A loaded OpenCLIP model. Thread-safe: encode calls are serialized by a lock."""

    def __init__(self, spec: ModelSpec, model: Any, preprocess: Any, tokenizer: Any, device: str) -> None:
        self.spec = spec
        self.identity = _identity(spec)
        self.device = device
        self._model = model
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._autocast = device.startswith("cuda")
        # Truncating token sequences after the longest end-of-text token is exact only for a causal
        # text tower that pools at EOT, with 0-padding (open_clip's CLIP + SimpleTokenizer).
        self._truncate_text = (
            isinstance(model, CLIP)
            and isinstance(tokenizer, SimpleTokenizer)
            and getattr(model, "attn_mask", None) is not None
            and model.text_pool_type == "argmax"
        )
        self._geometry, self._mean, self._std = _split_preprocess(preprocess, device)
        if self._mean is None:  # no Normalize step to take them from: decode_jpegs' crops use the config's
            self._mean, self._std = _config_normalization(model, device)
        # decode_jpegs resizes same-sized images in one call on a GPU (each call costs the main thread a
        # few kernel launches), one by one on the CPU (where stacking them first costs more than it saves)
        self.group_resizes = not device.startswith("cpu")
        # On a GPU, decode_jpegs runs on a CUDA stream of its own (`own_decode_stream`, the worker's
        # --decode-stream): see decode_jpegs_and_thumbnails.
        self.own_decode_stream = True
        self._decode_stream = torch.cuda.Stream(device=device) if device.startswith("cuda") else None
        self._decode_stream_lock = threading.Lock()  # one thread at a time on that stream
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        with torch.inference_mode():
            probe = tokenizer(["a"]).to(device)
            self.dim = int(model.encode_text(probe).shape[-1])

    def warm_up(self, images: int = 0, texts: int = 0, jpegs: bool = False, thumbnail_side: int = 0) -> float:
        """Runs each path that requests will take once, so that its one-time costs are paid before the
        caller reports ready instead of by its first requests: on a GPU, CUDA loads each kernel on its
        first launch (lazy loading, the default since CUDA 12.2; other batch shapes can pick other
        kernels), the caching allocator grows to a full batch, and the JPEG decoder creates its handles.
        On a GPU: `images` images and `texts` full-length texts as one batch each, then one image and
        one short text alone (a lone query's shapes); a CPU has none of those costs, so there one image
        and one full-length text run. `jpegs`: the image batch goes through `decode_jpegs_and_thumbnails`
        first (a small grey JPEG, also scaled to `thumbnail_side` when that is > 0). Returns the seconds
        taken. A failure (the device decoder missing, no device memory for a full batch) is logged, not
        raised: the first requests meet it as they would have without a warm-up, and handle it the same way."""
        started = time.perf_counter()
        on_gpu = self.device.startswith("cuda")
        if not on_gpu:
            images, texts = min(images, 1), min(texts, 1)
        size = self.image_size
        try:
            if images > 0:
                if jpegs:
                    buffer = io.BytesIO()
                    Image.new("RGB", (2 * size, 3 * size // 2), (128, 128, 128)).save(buffer, "JPEG")
                    crops, _ = self.decode_jpegs_and_thumbnails([buffer.getvalue()] * images,
                                                                thumbnail_side=thumbnail_side)
                else:
                    crops = [torch.zeros(3, size, size, dtype=torch.uint8)] * images
                self.encode_images(crops)
                if on_gpu and images > 1:
                    self.encode_images(crops[:1])
            if texts > 0:
                self.encode_text([" ".join(["photo"] * 100)] * texts)  # cut at the context length
                if on_gpu:
                    self.encode_text(["a photo"])
        except (RuntimeError, ValueError, ImportError) as exc:
            log.warning("warm-up on %s failed (%s: %s); the first requests will pay its one-time costs",
                        self.device, type(exc).__name__, exc)
        return time.perf_counter() - started

    def preprocess(self, image: Image.Image) -> Any:
        """Turns a decoded RGB image into the model's input tensor (CPU). Safe to call from many threads."""
        return self._preprocess(image)

    def preprocess_uint8(self, image: Image.Image) -> Any:
        """The same resize and crop as `preprocess`, kept as a (3, S, S) uint8 tensor: a quarter of the
        bytes to stack, pin and copy to the device; `encode_images` scales and normalizes it there
        (the same arithmetic, so the same vectors). Falls back to `preprocess` for a pipeline that
        does not end in to-tensor + normalize."""
        if self._geometry is None:
            return self._preprocess(image)
        return torch.from_numpy(_Uint8Geometry(self._geometry)(image)).permute(2, 0, 1)

    def cpu_transform(self) -> Any:
        """A picklable callable for decode threads or processes: decoded RGB image -> model input, as an
        (S, S, 3) uint8 numpy array (the resize and crop of `preprocess_uint8`; `encode_images` takes it),
        or the full `preprocess` tensor for a pipeline that does not end in to-tensor + normalize."""
        return _Uint8Geometry(self._geometry) if self._geometry is not None else self._preprocess

    def decode_jpegs(self, datas: Sequence[bytes], backend: str = "auto") -> list[Any]:
        """Decodes JPEG bytes on the model's device (nvJPEG on CUDA, libjpeg on CPU), EXIF orientation
        applied, and resizes (bicubic, antialiased) and center-crops them there: the geometric steps of
        `preprocess`, without a round trip through PIL. Returns (3, S, S) uint8 tensors on the device;
        `encode_images` scales and normalizes the whole batch at once. On a GPU, images of the same
        size are resized together (`group_resizes`: one call per size, not per image, so a few kernel
        launches per batch instead of several per image). Raises ValueError (RuntimeError from the
        decoder) for data the decoder rejects.

        backend: "torchcodec" (TorchCodec >= 0.16, the successor of torchvision.io's image decoders),
        "torchvision" (torchvision.io, deprecated since torchvision 0.29), or "auto": TorchCodec when it
        is installed, else torchvision.
        """
        return self.decode_jpegs_and_thumbnails(datas, backend)[0]

    def decode_jpegs_and_thumbnails(self, datas: Sequence[bytes], backend: str = "auto",
                                    thumbnail_side: int = 0) -> tuple[list[Any], list[np.ndarray | None]]:
        """`decode_jpegs`, and with thumbnail_side > 0 each decoded image also scaled down on the device
        (bicubic, antialiased; never enlarged) so that its longest side is thumbnail_side, returned as an
        (H, W, 3) uint8 array on the CPU for the caller to encode (one copy per group of same-sized
        images): a thumbnail without a second decode on the CPU. Without thumbnail_side the second list
        holds None for each image.

        On a GPU (with `own_decode_stream`) the work is queued on a CUDA stream of its own and waited for
        before returning, so that a thread decoding the next batch while another runs the model waits
        only for its own work: TorchCodec's decoder ends by synchronizing the caller's current stream,
        which on the model's stream is every kernel the model has queued; torchvision's decoder writes
        from a stream of its own into memory taken on the current one, which the model's work in
        another thread could still be using. The tensors returned are complete; `encode_images` marks
        them used on its own stream, so that their memory is not reused before the model has read it.
        Callers in several threads take turns on the stream (the worker decodes from one thread at a time)."""
        stream = self._decode_stream if self.own_decode_stream else None
        if stream is None:
            return self._decode_and_scale(datas, backend, thumbnail_side)
        with self._decode_stream_lock, torch.cuda.stream(stream):
            try:
                return self._decode_and_scale(datas, backend, thumbnail_side)
            finally:  # also after a failure: nothing of this call is left running when the next one starts
                stream.synchronize()  # waits for this stream's work only, not the model's

    def _decode_and_scale(self, datas: Sequence[bytes], backend: str,
                          thumbnail_side: int) -> tuple[list[Any], list[np.ndarray | None]]:
        size = self.image_size
        decoded = _decode_on_device([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas],
                                    backend, self.device)
        inputs: list[Any] = [None] * len(decoded)
        smalls: list[np.ndarray | None] = [None] * len(decoded)
        groups = _same_size_groups(decoded) if self.group_resizes else [[i] for i in range(len(decoded))]
        for indices in groups:
            group = torch.stack([decoded[i] for i in indices]) if len(indices) > 1 else decoded[indices[0]][None]
            crops = tvf.center_crop(tvf.resize(group, [size], interpolation=tvf.InterpolationMode.BICUBIC,
                                               antialias=True), [size, size])
            for i, crop in zip(indices, crops):
                inputs[i] = crop
            if thumbnail_side > 0:
                scaled = _scaled_down(group, thumbnail_side).permute(0, 2, 3, 1).contiguous().cpu().numpy()
                for i, small in zip(indices, scaled):
                    smalls[i] = small
        return inputs, smalls

    def encode_images(self, tensors: Sequence[Any]) -> np.ndarray:
        """Encodes preprocessed images into an (n, dim) float32 array of unit vectors. Takes any mix of
        `preprocess` tensors (normalized float), `preprocess_uint8` and `decode_jpegs` tensors ((3, S, S)
        uint8, on the CPU or the device) and (S, S, 3) uint8 arrays from `cpu_transform`: each kind is
        moved to the device and scaled as one block, then the batch is put back in the given order."""
        batch = self._input_batch([torch.from_numpy(t).permute(2, 0, 1) if isinstance(t, np.ndarray) else t
                                   for t in tensors])
        with self._lock, torch.inference_mode(), torch.autocast("cuda", enabled=self._autocast):
            features = self._model.encode_image(batch)
        return _normalized(features)

    def _input_batch(self, parts: list[Any]) -> Any:
        """One normalized float batch on the model's device, in order, from tensors of any device and
        dtype (one stack, copy and scaling per (device, dtype) kind, not per image)."""
        if self._decode_stream is not None:  # decode_jpegs' crops may come from its stream: kept until
            consumer = torch.cuda.current_stream(self.device)  # this one has read them (a no-op for its own)
            storages = {part.untyped_storage().data_ptr(): part for part in parts if part.is_cuda}
            for part in storages.values():  # crops of one resize call share their storage
                part.record_stream(consumer)
        kinds: dict[tuple[str, Any], list[int]] = {}
        for i, part in enumerate(parts):
            kinds.setdefault((str(part.device), part.dtype), []).append(i)
        blocks = []
        for indices in kinds.values():
            block = torch.stack([parts[i] for i in indices])
            if self.device.startswith("cuda") and block.device.type == "cpu":
                block = block.pin_memory()
            block = block.to(self.device, non_blocking=True)
            if block.dtype == torch.uint8:
                block = (block.float() / 255.0 - self._mean) / self._std
            blocks.append((indices, block))
        if len(blocks) == 1:
            return blocks[0][1]
        rows: list[Any] = [None] * len(parts)
        for indices, block in blocks:
            for i, row in zip(indices, block):
                rows[i] = row
        return torch.stack(rows)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Encodes texts into an (n, dim) float32 array of unit vectors.

        With a causal text tower, positions after the end-of-text token never influence the pooled
        vector, so the batch is cut after its longest real sequence: the same vectors (up to float
        rounding) at a fraction of the full-context cost.
        """
        tokens = self._tokenizer(list(texts))  # on the CPU: cut there, then moved (no device sync)
        with self._lock, torch.inference_mode(), torch.autocast("cuda", enabled=self._autocast):
            if self._truncate_text:
                features = self._encode_text_truncated(tokens)
            else:
                features = self._model.encode_text(tokens.to(self.device))
        return _normalized(features)

    def encode_text_reference(self, texts: Sequence[str]) -> np.ndarray:
        """open_clip's own full-context encode_text, for comparisons."""
        tokens = self._tokenizer(list(texts)).to(self.device)
        with self._lock, torch.inference_mode(), torch.autocast("cuda", enabled=self._autocast):
            return _normalized(self._model.encode_text(tokens))

    def _encode_text_truncated(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self._model
        length = int(tokens.argmax(dim=-1).max()) + 1  # EOT has the highest id: last real position
        text = tokens[:, :length].to(self.device)
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = text_global_pool(x, text, model.text_pool_type)
        if model.text_projection is not None:
            x = (model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear)
                 else x @ model.text_projection)
        return x


class _Uint8Geometry:
    """The geometric steps of open_clip's preprocess (resize, crop, to RGB), ending in a uint8 array."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps

    def __call__(self, image: Image.Image) -> np.ndarray:
        for step in self.steps:
            image = step(image)
        return np.array(image.convert("RGB"), dtype=np.uint8)


def _split_preprocess(preprocess: Any, device: str) -> tuple[list[Any] | None, Any, Any]:
    """Splits open_clip's Compose(geometry..., to-tensor, Normalize) into the geometric steps and the
    normalization constants (as (1, 3, 1, 1) tensors on `device`); (None, None, None) for other pipelines."""
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or type(steps[-1]).__name__ != "Normalize" or "ToTensor" not in type(steps[-2]).__name__:
        return None, None, None
    mean = torch.tensor(steps[-1].mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(steps[-1].std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return steps[:-2], mean, std


def _config_normalization(model: Any, device: str) -> tuple[Any, Any]:
    """(mean, std) as (1, 3, 1, 1) tensors on `device` from the model config (CLIP's defaults)."""
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def _decode_on_device(raw: list[Any], backend: str, device: str) -> list[Any]:
    """JPEG bytes (uint8 tensors) -> (3, H, W) uint8 RGB tensors on `device`, EXIF orientation applied."""
    decoder = _torchcodec_jpeg() if backend in ("auto", "torchcodec") else None
    if backend == "torchcodec" and decoder is None:
        raise ValueError("TorchCodec is not installed (pip install torchcodec)")
    if decoder is not None:
        return list(decoder(raw, mode="RGB", device=device))  # applies EXIF orientation (tested)
    import torchvision.io

    # torchvision.io ignores apply_exif_orientation on CUDA: the orientation is applied here, on every device
    decoded = torchvision.io.decode_jpeg(raw, mode=torchvision.io.ImageReadMode.RGB, device=device)
    return [_upright(image, _exif_orientation(data)) for image, data in zip(decoded, raw)]


_EXIF_ORIENTATION = 0x0112


def _exif_orientation(data: Any) -> int:
    """The EXIF orientation (1-8) of JPEG bytes (a uint8 tensor), 1 when it has none (PIL reads the header only)."""
    try:
        with Image.open(io.BytesIO(data.numpy())) as image:
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - the decoder has already taken these bytes: keep them as they are
        return 1
    return value if value in range(1, 9) else 1


def _upright(image: Any, orientation: int) -> Any:
    """A (C, H, W) image turned as PIL's ImageOps.exif_transpose turns one with that EXIF orientation."""
    if orientation == 2:
        return image.flip(-1)  # mirrored left-right
    if orientation == 3:
        return image.flip((-2, -1))  # rotated 180
    if orientation == 4:
        return image.flip(-2)  # mirrored top-bottom
    if orientation == 5:
        return image.transpose(-2, -1)  # mirrored along the main diagonal
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))  # turned 90 clockwise
    if orientation == 7:
        return image.transpose(-2, -1).flip((-2, -1))  # mirrored along the other diagonal
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))  # turned 90 counter-clockwise
    return image


# The most decoded pixels (uint8 bytes) stacked into one resize call. The call's peak on the device is
# about 4-5x this (the stacked copy, the resize's float intermediates): ~1.2 GiB for a full group.
_GROUP_BYTES = 256 << 20


def _same_size_groups(images: Sequence[Any]) -> list[list[int]]:
    """Indices of images of the same (C, H, W), in groups of at most _GROUP_BYTES of pixels each."""
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for i, image in enumerate(images):
        chunks = groups.setdefault(tuple(image.shape), [[]])
        if chunks[-1] and (len(chunks[-1]) + 1) * image.numel() > _GROUP_BYTES:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


def _scaled_down(image: Any, side: int) -> Any:
    """A (..., 3, H, W) uint8 image tensor scaled so that its longest side is at most `side` (never enlarged)."""
    height, width = image.shape[-2:]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    return tvf.resize(image, size, interpolation=tvf.InterpolationMode.BICUBIC, antialias=True)


def _torchcodec_jpeg() -> Any:
    """TorchCodec's batched JPEG decoder, or None when TorchCodec is missing or cannot load."""
    global _TORCHCODEC
    if _TORCHCODEC is False:
        try:
            from torchcodec.decoders import decode_jpeg

            _TORCHCODEC = decode_jpeg
        except Exception as exc:  # noqa: BLE001 - ImportError, or its native libraries failing to load
            log.info("TorchCodec unavailable (%s); device JPEG decoding uses torchvision.io", exc)
            _TORCHCODEC = None
    return _TORCHCODEC


_TORCHCODEC: Any = False  # not looked up yet


def _normalized(features: Any) -> np.ndarray:
    array = features.float().cpu().numpy().astype(np.float32, copy=False)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def load_encoder(spec: ModelSpec, threads: int | None = None) -> ClipEncoder:
    """Loads the model named by `spec` (downloading weights only for built-in or hf-hub names)."""
    if threads:
        torch.set_num_threads(threads)
    device = _resolve_device(spec.device)
    has_schema = spec.name.startswith((_LOCAL_DIR, _HF_HUB))  # these carry their own weights
    pretrained = None if spec.random_weights or has_schema else spec.pretrained
    if spec.random_weights:
        torch.manual_seed(_RANDOM_SEED)
    model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=pretrained, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.name)
    encoder = ClipEncoder(spec, model, preprocess, tokenizer, device)
    log.info("loaded model %s (dim %d) on %s", encoder.identity, encoder.dim, device)
    return encoder
