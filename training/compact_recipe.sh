#!/usr/bin/env bash
# The exact commands that produced rp_diffusers/assets/default_model (the compact default model).
#
#   bash training/compact_recipe.sh                 # full recipe (CPU), writes rp_diffusers/assets/default_model
#   WORK=/tmp/w DEST=/tmp/model bash training/compact_recipe.sh   # elsewhere
#
# Stage 1: training/train_compact_base.py (small VAE + residual one-step UNet, from scratch on train-sunhays80).
# Stage 2: training/finetune_rp.py, one rate-perception LoRA per (codec, lambda), MS-SSIM + MSE as the quality
#          term (LPIPS/DISTS weights are not available offline). No learned proxy surrogate was fitted for any
#          codec but JPEG, so the WebP adapters are trained through DiffJPEG AS A STAND-IN (surrogate recorded as
#          "jpeg" in their rp_adapter.json) and validated with the real WebP codec.
# Then the adapters are gathered into the one pipeline folder (the pipeline records which adapters exist).
# Every knob below can be overridden from the environment; tests/test_compact_model.py runs a tiny version.
set -euo pipefail

TRAIN=${TRAIN:-../shared/data/train-sunhays80}
VAL=${VAL:-../shared/data/val-set14}
WORK=${WORK:-compact-work}
DEST=${DEST:-rp_diffusers/assets/default_model}
PYTHON=${PYTHON:-python}
SEED=${SEED:-0}
# stage 1
VAE_CHANNELS=${VAE_CHANNELS:-"16 32"}
UNET_CHANNELS=${UNET_CHANNELS:-"16 32 32"}
LATENT_CHANNELS=${LATENT_CHANNELS:-12}
VAE_STEPS=${VAE_STEPS:-65}  # the shipped run: --vae_steps 200 --max_minutes 8, which stopped after 65
VAE_RES=${VAE_RES:-64}
UNET_STEPS=${UNET_STEPS:-10}
UNET_RES=${UNET_RES:-176}
# stage 2
RP_STEPS=${RP_STEPS:-10}
RP_RES=${RP_RES:-176}
RP_BATCH=${RP_BATCH:-1}
RP_PERCEPTUAL=${RP_PERCEPTUAL:-1.0}
LAMBDAS=${LAMBDAS:-"0.02 0.05"}
CODECS=${CODECS:-"jpeg webp"}
VALIDATE=${VALIDATE:-1}

mkdir -p "$WORK/train/train"
# datasets' imagefolder reads ONE image of a folder whose name starts with "train-" (it is taken for a split
# pattern): link the images into WORK/train/train and train on that folder instead.
for f in "$TRAIN"/*; do ln -sf "$(realpath "$f")" "$WORK/train/train/"; done
VAL_ARGS=()
if [ "$VALIDATE" = 1 ]; then VAL_ARGS=(--validation_data_dir "$VAL"); fi

# Stage 1: the base (one-step near-identity image-to-image model)
$PYTHON training/train_compact_base.py --train_data_dir "$WORK/train" "${VAL_ARGS[@]}" --seed "$SEED" \
  --vae_channels $VAE_CHANNELS --unet_channels $UNET_CHANNELS --latent_channels "$LATENT_CHANNELS" \
  --vae_resolution "$VAE_RES" --vae_batch_size 8 --vae_steps "$VAE_STEPS" --vae_learning_rate 3e-3 \
  --lr_scheduler constant_with_warmup --num_validation_images 4 \
  --unet_resolution "$UNET_RES" --unet_batch_size 1 --unet_steps "$UNET_STEPS" --lr_warmup_steps 5 --random_flip \
  --output_dir "$WORK/base"

# Stage 2: rate-perception adapters (independent runs; they may run in parallel)
for codec in $CODECS; do
  for lam in $LAMBDAS; do
    surrogate=jpeg  # DiffJPEG; for webp a STAND-IN (no fitted webp proxy in rp_diffusers/surrogates/weights)
    $PYTHON training/finetune_rp.py --pretrained_model_name_or_path "$WORK/base" --train_data_dir "$WORK/train" \
      --codec "$codec" --surrogate "$surrogate" --quality_range 10 60 --lambda_rate "$lam" \
      --perceptual_loss ms_ssim --lambda_perceptual "$RP_PERCEPTUAL" --lambda_mse 1.0 \
      --rank 4 --lora_target_modules to_q to_k to_v to_out.0 conv1 conv2 conv_out \
      --resolution "$RP_RES" --train_batch_size "$RP_BATCH" --max_train_steps "$RP_STEPS" --learning_rate 1e-3 \
      --lr_scheduler constant --seed "$SEED" --report_to none --checkpointing_steps 100000 \
      --output_dir "$WORK/rp_${codec}_${lam}" &
  done
done
wait

# Gather: base + every adapter in one folder; the first JPEG adapter is the active one
$PYTHON - "$WORK" "$DEST" $CODECS -- $LAMBDAS <<'EOF'
import json
import shutil
import sys
from pathlib import Path

from rp_diffusers.pipelines import RPPreprocessPipeline

work, dest, rest = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
codecs, lambdas = rest[: rest.index("--")], rest[rest.index("--") + 1 :]
pipe = RPPreprocessPipeline.from_pretrained(work / "base")
for codec in codecs:
    for lam in lambdas:
        pipe.load_lora_weights(str(work / f"rp_{codec}_{lam}"))
names = list(pipe.config.adapters)
pipe.set_adapters([next(n for n in names if n.startswith("rp_jpeg_"))] if any("jpeg" in n for n in names) else names[:1])
if dest.exists():
    shutil.rmtree(dest)
pipe.save_pretrained(dest)
shutil.copy(work / "base" / "stage1_metrics.json", dest / "stage1_metrics.json")
for codec in codecs:  # keep the training record (surrogate, losses, steps) that save_pretrained leaves out
    for lam in lambdas:
        info = json.loads((work / f"rp_{codec}_{lam}" / "rp_adapter.json").read_text())
        info["base_model"] = "stage 1 of training/compact_recipe.sh"
        if info.get("surrogate") != codec:
            info["note"] = f"trained through the {info['surrogate']} surrogate as a STAND-IN for {codec}"
        (dest / "adapters" / info["adapter_name"] / "rp_adapter.json").write_text(json.dumps(info, indent=2) + "\n")
print(f"saved {dest} with adapters {names}")
EOF
