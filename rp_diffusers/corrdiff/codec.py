"""``CorrDiffCodec``: the learned codec with real bitstreams, registered as ``get_codec("corrdiff", model=...)``.

Quality: an index into the model's quantisation gains (``config.gains``, ascending: higher = more bits; the
shipped model has 7, qualities 0-6, default 4); one variable-rate model serves every quality.
``distortion_weight`` (0-1) trades realism for distortion in the encoder's choice of corrections; ``seed`` seeds
the diffusion noise.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import constriction
import torch
from PIL import Image

from ..codecs.base import Codec, CodecError
from ..codecs.registry import register_codec
from ..utils.assets import ASSETS_DIR
from ..utils.image import load_image, pil_to_tensor, tensor_to_pil
from ..utils.tiling import crop_to_size, pad_to_multiple
from . import bitstream
from .bitstream import BitstreamError, Header
from .diffusion import corrected_sample
from .entropy import SYMBOL_LIMIT, decode_choices, encode_choices
from .loading import load_model, save_model
from .models import CorrDiffConfig, CorrDiffModel

# The model ``get_codec("corrdiff")`` uses when no ``model`` is given: trained here (see its README.md).
DEFAULT_MODEL_DIR = ASSETS_DIR / "corrdiff_model"


@dataclass
class CorrDiffEncoding:
    """Everything one encode produces (images (1, 3, h, w) in [0, 1]; ``bits`` counts every byte of ``data``)."""

    data: bytes
    reconstruction: torch.Tensor
    x_e2e: torch.Tensor
    uncorrected: torch.Tensor | None
    choices: torch.Tensor | None
    bits: dict[str, int]


def _stream_bytes(encoder) -> bytes:
    return bitstream.words_to_bytes(encoder.get_compressed())


@register_codec("corrdiff")
class CorrDiffCodec(Codec):
    """CorrDiff (Ma et al., ICML 2024, arXiv:2404.04916; our reading): scale-hyperprior codec, end-to-end decoder
    and a diffusion decoder corrected by encoder-chosen per-block weights sent as side information.

    Args:
        model: a folder or Hub repo id written by ``save_pretrained``, or a ``CorrDiffModel``; ``None``: the
            model shipped with the package (``DEFAULT_MODEL_DIR``: a codec, its end-to-end decoder and a diffusion
            decoder that is off by default, trained on this project's photographs; see its model card).
        distortion_weight: in [0, 1]; ``None`` uses the model's config (1 = choose corrections by MSE alone).
        seed: seed of the diffusion noise (stored in the header).
        num_inference_steps: DDIM steps; 0 sends no side information and decodes ``x_e2e``; ``None``: the model's
            (its config's ``num_inference_steps``, or 0 where its ``diffusion_by_default`` is false, as in the
            shipped model, whose diffusion decoder measured worse than its end-to-end decoder).
        device: torch device of the networks (the entropy coding runs on the CPU).
        refine_steps: encoder-side refinement (``CorrDiffModel.refine_latents``): Adam steps on this image's
            latents against the model's rate-distortion loss before coding. The decoder and the format are unchanged
            (any copy of the model reads the file). 40 steps lower the shipped model's PSNR BD-rate against JPEG on
            Kodak from -30.8 % to -34.8 % and take 15 s per 768x512 image on 2 CPU threads, against 0.33 s without
            (``benchmarks/results/corrdiff_refined.json``); 10 steps: -32.3 % at 4.2 s
            (``benchmarks/results/corrdiff_refined10.json``). 0 (default): the analysis transform's latents.

    Example:
        >>> codec = CorrDiffCodec.from_pretrained("path/to/corrdiff")  # doctest: +SKIP
        >>> data = codec.compress(image, quality=2)  # doctest: +SKIP
        >>> codec.decompress(data).size == image.size, 8 * len(data) / (image.width * image.height)  # doctest: +SKIP
    """

    extension = ".crdf"
    # the shipped model's; an instance takes its own model's
    quality_range = (0, 6)
    default_quality = 4
    sweep_qualities = (0, 1, 2, 3, 4, 5, 6)
    default_settings = {
        "model": None,
        "distortion_weight": None,
        "seed": 0,
        "num_inference_steps": None,
        "device": "cpu",
        "refine_steps": 0,
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        source = self.settings["model"]
        if source is None:  # the model shipped with the package
            if not (DEFAULT_MODEL_DIR / "config.json").is_file():
                raise ValueError(
                    f"the shipped CorrDiff model is missing from {DEFAULT_MODEL_DIR} (reinstall rp-diffusers), or "
                    "pass a trained one: get_codec('corrdiff', model='folder or org/name')"
                )
            source = str(DEFAULT_MODEL_DIR)
        self.model = source if isinstance(source, CorrDiffModel) else load_model(source, self.settings["device"])
        self.model.eval()
        config = self.model.config
        self.quality_range = (0, len(config.gains) - 1)
        self.sweep_qualities = tuple(range(len(config.gains)))
        self.default_quality = config.default_quality_index

    def _check_settings(self) -> None:
        weight = self.settings["distortion_weight"]
        if weight is not None and not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"distortion_weight must lie in [0, 1], got {weight}")
        steps = self.settings["num_inference_steps"]
        if steps is not None and not 0 <= int(steps) <= bitstream.MAX_NUM_STEPS:
            raise ValueError(f"num_inference_steps must be an integer in [0, {bitstream.MAX_NUM_STEPS}], got {steps}")
        refine = self.settings["refine_steps"]
        if isinstance(refine, bool) or not isinstance(refine, int) or not 0 <= refine <= 10_000:
            raise ValueError(f"refine_steps must be an integer in [0, 10000], got {refine!r}")
        if not 0 <= int(self.settings["seed"]) < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.settings['seed']}")

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **settings: Any) -> CorrDiffCodec:
        """Load from a folder or a Hub repo id (``huggingface_hub.snapshot_download``); see the class args."""
        return cls(model=str(path_or_repo), **settings)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json``, ``codec.safetensors`` and ``unet/`` to ``path``."""
        save_model(self.model, path)

    # --- settings ---------------------------------------------------------------------------------------------

    def _steps(self) -> int:
        steps, config = self.settings["num_inference_steps"], self.model.config
        if steps is None:
            steps = config.num_inference_steps if config.diffusion_by_default else 0
        steps = int(steps)
        if not 0 <= steps <= bitstream.MAX_NUM_STEPS:  # a file its own reader would refuse
            raise ValueError(
                f"the model asks for {steps} DDIM steps; the CorrDiff format allows 0 to {bitstream.MAX_NUM_STEPS}: "
                "pass num_inference_steps"
            )
        return steps if self.model.unet is not None else 0

    def _distortion_weight(self) -> float:
        weight = self.settings["distortion_weight"]
        return float(self.model.config.distortion_weight if weight is None else weight)

    def encoder_settings(self, quality: int) -> dict[str, Any]:
        config = self.model.config
        source = self.settings["model"]
        decoder = self.model.decoder_id(self._steps() > 0).hex()  # two models sharing a codec differ here
        return {
            "model": (
                f"default:{decoder}"
                if source is None
                else f"{source}:{decoder}"
                if isinstance(source, str)
                else decoder
            ),
            "gain": config.gains[quality],
            "num_inference_steps": self._steps(),
            "block_size": config.block_size,
            "strength": config.strength,
            "sigma_data": config.sigma_data,
            "codebook": list(config.codebook),
            "distortion_weight": self._distortion_weight(),
            "seed": int(self.settings["seed"]),
            "refine_steps": int(self.settings["refine_steps"]),
        }

    @property
    def description(self) -> str:
        config = self.model.config
        return (
            f"CorrDiff (decoder {self.model.decoder_id(self._steps() > 0).hex()}, N={config.channels}, M={config.latent_channels}, "
            f"{self._steps()} DDIM steps at strength {config.strength:g}, {config.block_size}px blocks, codebook {list(config.codebook)}, "
            f"distortion_weight {self._distortion_weight()}"
            + (f", encoder refinement {self.settings['refine_steps']} steps" if self.settings["refine_steps"] else "")
            + ")"
        )

    # --- coding -----------------------------------------------------------------------------------------------

    @property
    def _device(self) -> torch.device:
        return self.model.g_a[0].weight.device

    def _e2e(self, y_symbols: torch.Tensor, quality: int) -> torch.Tensor:
        """Integer y symbols -> x_e2e in [0, 1] (the same code on both sides)."""
        y_hat = y_symbols.to(self._device) / self.model.gain(quality)
        return self.model.g_s(y_hat).clamp(0, 1)

    def _indexes(self, z_symbols: torch.Tensor, quality: int) -> torch.Tensor:
        return self.model.integer_h_s.cpu().indexes(z_symbols.cpu(), quality)

    @torch.no_grad()
    def encode_details(self, image, quality: int | None = None) -> CorrDiffEncoding:
        """Compress ``image`` and return the bytes together with the intermediate images and bit counts."""
        quality = self.check_quality(quality)
        pil = load_image(image)
        x, size = pad_to_multiple(pil_to_tensor(pil).to(self._device), CorrDiffConfig.pad_multiple)
        model, config = self.model, self.model.config
        refine = int(self.settings["refine_steps"])
        y = model.refine_latents(x, quality, refine, seed=int(self.settings["seed"]), size=size)
        z_symbols = torch.round(model.h_a(torch.abs(y))).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT).cpu()
        y_symbols = torch.round(y * model.gain(quality)).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT).cpu()
        z_coder, y_coder, side_coder = (constriction.stream.queue.RangeEncoder() for _ in range(3))
        model.entropy_bottleneck.compress(z_coder, z_symbols)
        model.gaussian_conditional.compress(y_coder, y_symbols, self._indexes(z_symbols, quality))
        x_e2e = self._e2e(y_symbols, quality)
        steps, reconstruction, uncorrected, choices = self._steps(), x_e2e, None, None
        if steps > 0:
            result = corrected_sample(
                model.unet, x_e2e, int(self.settings["seed"]), steps, config.block_size, config.codebook, size,
                target=x, distortion_weight=self._distortion_weight(), strength=config.strength,
                sigma_data=config.sigma_data,
            )  # fmt: skip
            reconstruction, uncorrected, choices = result.image, result.uncorrected, result.choices
            encode_choices(side_coder, choices.cpu().numpy(), len(config.codebook))
        streams = tuple(_stream_bytes(coder) for coder in (z_coder, y_coder, side_coder))
        header = Header(
            magic=bitstream.MAGIC, version=bitstream.VERSION, flags=int(steps > 0),
            model_hash=model.decoder_id(steps > 0),
            quality=quality, height=size[0], width=size[1], pad_h=x.shape[-2] - size[0], pad_w=x.shape[-1] - size[1],
            y_h=y.shape[-2], y_w=y.shape[-1], z_h=z_symbols.shape[-2], z_w=z_symbols.shape[-1],
            seed=int(self.settings["seed"]), num_steps=steps, block_size=config.block_size,
            codebook_size=len(config.codebook), z_len=0, y_len=0, side_len=0,
        )  # fmt: skip
        data = bitstream.pack(header, streams)
        bits = {"header": 8 * bitstream.HEADER_SIZE, "z": 8 * len(streams[0]), "y": 8 * len(streams[1])}
        bits["side"] = 8 * len(streams[2])
        crop = lambda t: None if t is None else crop_to_size(t, size)  # noqa: E731
        return CorrDiffEncoding(data, crop(reconstruction), crop(x_e2e), crop(uncorrected), choices, bits)

    def compress(self, image, quality: int | None = None) -> bytes:
        """Compress an image (anything ``load_image`` reads) to the bytes of a ``.crdf`` file."""
        return self.encode_details(image, quality).data

    @torch.no_grad()
    def decompress(self, data: bytes, decoder: str = "corrected") -> Image.Image:
        """Decode a ``.crdf`` file to an RGB PIL image of the original size.

        Args:
            data: the file's bytes.
            decoder: ``"corrected"`` (the diffusion trajectory the encoder chose, when the file carries one) or
                ``"e2e"`` (the end-to-end decoder alone, skipping the diffusion decoder).

        Raises:
            BitstreamError: not a CorrDiff file, truncated, corrupt, or written by another model.
        """
        if decoder not in ("corrected", "e2e"):
            raise ValueError(f"decoder must be 'corrected' or 'e2e', got {decoder!r}")
        header, (z_stream, y_stream, side_stream) = bitstream.unpack(data)
        model, config = self.model, self.model.config
        qualities = self._check_decoder(header, decoder)
        if header.quality >= len(qualities) or header.codebook_size != len(config.codebook):
            raise BitstreamError(f"header does not fit the loaded model (quality {header.quality}, codebook)")
        quality = qualities[header.quality]
        if (header.z_h * 4, header.z_w * 4) != (header.y_h, header.y_w):
            raise BitstreamError(f"inconsistent CorrDiff header: z shape does not match y shape ({header})")
        try:
            z_symbols = model.entropy_bottleneck.decompress(
                constriction.stream.queue.RangeDecoder(bitstream.bytes_to_words(z_stream)), (header.z_h, header.z_w)
            )
            indexes = self._indexes(z_symbols, quality)
            y_decoder = constriction.stream.queue.RangeDecoder(bitstream.bytes_to_words(y_stream))
            y_symbols = model.gaussian_conditional.decompress(y_decoder, indexes)
        except (ValueError, RuntimeError) as error:
            raise BitstreamError(f"corrupt CorrDiff stream: entropy decoding failed ({error})") from error
        x_e2e = self._e2e(y_symbols, quality)
        size, image = (header.height, header.width), x_e2e
        if header.has_diffusion and decoder == "corrected":
            if model.unet is None:
                raise BitstreamError("this file needs the diffusion decoder, which the loaded model lacks")
            grid = (header.num_steps, -(-header.height // header.block_size), -(-header.width // header.block_size))
            side_decoder = constriction.stream.queue.RangeDecoder(bitstream.bytes_to_words(side_stream))
            try:
                choices = torch.from_numpy(decode_choices(side_decoder, grid, header.codebook_size))
            except (ValueError, RuntimeError) as error:
                raise BitstreamError(f"corrupt CorrDiff side information ({error})") from error
            image = corrected_sample(
                model.unet, x_e2e, header.seed, header.num_steps, header.block_size, config.codebook, size,
                choices=choices, strength=config.strength, sigma_data=config.sigma_data,
            ).image  # fmt: skip
        return tensor_to_pil(crop_to_size(image, size))[0]

    def _check_decoder(self, header: Header, decoder: str) -> list[int]:
        """Refuse a file whose decoder is not the loaded model's (warn where a version-1 file cannot say).

        Returns the loaded model's quality for each quality of the model that wrote the file: the identity, or
        the map in ``config.earlier_decoders`` for a file of a model this one was made from (``with_gains``).
        """
        model = self.model
        qualities = list(range(len(model.config.gains)))
        if header.version == 1:  # model_hash named the integer tables only
            tables = model.table_hash().hex()
            known = {
                tables: qualities,
                **{e["table_hash"]: list(e["qualities"]) for e in model.config.earlier_decoders},
            }
            if header.model_hash.hex() not in known:
                raise BitstreamError(
                    f"this file was written by CorrDiff model {header.model_hash.hex()}, but the loaded model is "
                    f"{tables}: load the model that wrote it"
                )
            if header.has_diffusion and decoder == "corrected" and model.unet is not None:
                warnings.warn(
                    "this CorrDiff file is format version 1, which does not name its diffusion decoder: it is "
                    "decoded with the loaded model's, which may not be the one that wrote it (pass "
                    "decoder='e2e' for the end-to-end image, which the file does identify)",
                    stacklevel=3,
                )
            return known[header.model_hash.hex()]
        e2e_written, diffusion_written = header.model_hash[:4], header.model_hash[4:]
        e2e_loaded = model.decoder_id(False)[:4]
        known = {
            e2e_loaded.hex(): qualities,
            **{e["e2e_decoder"]: list(e["qualities"]) for e in model.config.earlier_decoders},
        }
        if e2e_written.hex() not in known:
            raise BitstreamError(
                f"this file was written by CorrDiff end-to-end decoder {e2e_written.hex()}, but the loaded model's "
                f"is {e2e_loaded.hex()}: load the model that wrote it"
            )
        if header.has_diffusion and decoder == "corrected" and model.unet is not None:
            diffusion_loaded = model.decoder_id(True)[4:]
            if diffusion_written != diffusion_loaded:
                raise BitstreamError(
                    f"this file was written by CorrDiff diffusion decoder {diffusion_written.hex()}, but the loaded "
                    f"model's is {diffusion_loaded.hex()} (its UNet, strength, sigma_data or codebook differ): load "
                    "the model that wrote it, or pass decoder='e2e' for the end-to-end image"
                )
        return known[e2e_written.hex()]

    def _encode(self, image, quality: int) -> bytes:
        return self.compress(image, quality)

    def _decode(self, data: bytes) -> Image.Image:
        try:
            return self.decompress(data)
        except BitstreamError as error:
            raise CodecError(f"corrdiff: {error}") from error
