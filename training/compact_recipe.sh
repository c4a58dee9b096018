#!/usr/bin/env bash
# The exact commands that produced rp_diffusers/assets/default_model (the compact default model).
#
#   TRAIN=photos/train-sunhays80 VAL=photos/val-set14 bash training/compact_recipe.sh   # full recipe (CPU), writes
#                                                   # rp_diffusers/assets/default_model
#   TRAIN=... VAL=... WORK=/tmp/w DEST=/tmp/model bash training/compact_recipe.sh       # elsewhere
#
# Stage 1: training/train_compact_base.py. No SD teacher is available offline, so the base is a residual one-step
#          restorer trained from scratch: its "VAE" is an AutoencoderTiny (TAESD's class) at factor 1 set to an exact
#          identity (latents = the pixels; no VAE training), and its UNet (4 levels, attention only in the mid block
#          at 1/8 resolution) learns x0 = z + UNet(z) from lightly noised crops (a mild denoiser).
# Stage 2: training/finetune_rp.py, one rate-perception LoRA per (codec, lambda) through the codec's surrogate
#          (DiffJPEG for jpeg, the fitted learned proxy for webp), quality term 1 - MS-SSIM + MSE (LPIPS/DISTS
#          weights are not available offline), rate weighted by the codec's own R-D slope (--rate_weighting
#          codec_slope: lambda = 1 is the codec's trade-off, 2 favours fewer bits).
# Then the adapters are gathered into the one pipeline folder (the pipeline records which adapters exist), validated
# on VAL, and the JPEG dead zone (rp_diffusers.codecs.prequantize, a step before the encoder) gets its threshold there.
# Every knob below can be overridden from the environment; tests/test_compact_model.py runs a tiny version.
set -euo pipefail

TRAIN=${TRAIN:?set TRAIN to a folder of training photographs (the shipped model used train-sunhays80)}
VAL=${VAL:-}  # validation photographs (val-set14); needed when VALIDATE=1
WORK=${WORK:-compact-work}
DEST=${DEST:-rp_diffusers/assets/default_model}
PYTHON=${PYTHON:-python}
SEED=${SEED:-0}
# stage 1
VAE_CHANNELS=${VAE_CHANNELS:-16}
LATENT_CHANNELS=${LATENT_CHANNELS:-3}
UNET_CHANNELS=${UNET_CHANNELS:-"8 16 32 32"}
UNET_STEPS=${UNET_STEPS:-734}  # the shipped run: --unet_steps 3000 --max_minutes 10, which stopped after 734
UNET_RES=${UNET_RES:-176}
UNET_BATCH=${UNET_BATCH:-4}
# stage 2
RP_STEPS=${RP_STEPS:-600}
RP_RES=${RP_RES:-192}
RP_BATCH=${RP_BATCH:-2}
RP_PERCEPTUAL=${RP_PERCEPTUAL:-1.0}
LAMBDAS=${LAMBDAS:-"1 2"}
CODECS=${CODECS:-"jpeg webp"}
VALIDATE=${VALIDATE:-1}
VAL_QUALITIES=${VAL_QUALITIES:-}  # e.g. "jpeg=10,30,50,70 webp=10,30,50,70" (default: validate_adapters' sweeps)
# the JPEG dead zone (a codec step, not trained): thresholds (T or T/TAIL) tried on VAL, and that sweep's qualities
DEADZONE_THRESHOLDS=${DEADZONE_THRESHOLDS:-0.65,0.7,0.75,0.8,0.75/0.85,0.75/0.9,0.75/1.0,0.7/0.9}
DEADZONE_QUALITIES=${DEADZONE_QUALITIES:-15,25,40,60,80}

mkdir -p "$WORK/train/train"
# datasets' imagefolder reads ONE image of a folder whose name starts with "train-" (it is taken for a split
# pattern): link the images into WORK/train/train and train on that folder instead.
for f in "$TRAIN"/*; do ln -sf "$(realpath "$f")" "$WORK/train/train/"; done
VAL_ARGS=()
if [ "$VALIDATE" = 1 ]; then
  VAL_ARGS=(--validation_data_dir "${VAL:?set VAL to a folder of validation photographs (val-set14), or VALIDATE=0}")
fi

# Stage 1: the base (one-step near-identity image-to-image model)
$PYTHON training/train_compact_base.py --train_data_dir "$WORK/train" "${VAL_ARGS[@]}" --seed "$SEED" \
  --vae_type tiny --vae_init identity --vae_channels $VAE_CHANNELS --latent_channels "$LATENT_CHANNELS" \
  --vae_steps 0 --unet_channels $UNET_CHANNELS --num_validation_images 4 \
  --unet_resolution "$UNET_RES" --unet_batch_size "$UNET_BATCH" --unet_steps "$UNET_STEPS" \
  --unet_learning_rate 5e-4 --lr_scheduler constant_with_warmup --lr_warmup_steps 20 --random_flip \
  --output_dir "$WORK/base"

# Stage 2: rate-perception adapters (independent single-thread runs, so they run in parallel)
pids=()
for codec in $CODECS; do
  for lam in $LAMBDAS; do
    OMP_NUM_THREADS=1 $PYTHON training/finetune_rp.py --pretrained_model_name_or_path "$WORK/base" \
      --train_data_dir "$WORK/train" --codec "$codec" --surrogate "$codec" --quality_range 10 80 \
      --lambda_rate "$lam" --rate_weighting codec_slope --surrogate_rounding soft \
      --perceptual_loss ms_ssim --lambda_perceptual "$RP_PERCEPTUAL" --lambda_mse 1.0 \
      --rank 4 --lora_target_modules to_q to_k to_v to_out.0 conv1 conv2 conv_out \
      --resolution "$RP_RES" --train_batch_size "$RP_BATCH" --max_train_steps "$RP_STEPS" --learning_rate 1e-3 \
      --lr_scheduler constant --seed "$SEED" --report_to none --checkpointing_steps 100000 --random_flip \
      --output_dir "$WORK/rp_${codec}_${lam}" &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done  # fails the recipe if any run failed

# Gather: base + every adapter in one folder (each adapter's rp_adapter.json keeps its training record)
ADAPTER_DIRS=()
for codec in $CODECS; do for lam in $LAMBDAS; do ADAPTER_DIRS+=("$WORK/rp_${codec}_${lam}"); done; done
$PYTHON training/gather_adapters.py --base "$WORK/base" --adapters "${ADAPTER_DIRS[@]}" --output "$DEST" --overwrite

# Validate every adapter on the held-out photographs against the codec alone and record the verdict in its
# rp_adapter.json: `--model default` and the Space pick only adapters that win there, else no network runs.
if [ "$VALIDATE" = 1 ]; then
  # shellcheck disable=SC2086  # VAL_QUALITIES is a list of codec=spec words
  $PYTHON training/validate_adapters.py --model "$DEST" --images "$VAL" ${VAL_QUALITIES:+--qualities $VAL_QUALITIES}
fi

# The codec step: the JPEG dead zone's threshold is chosen on the held-out photographs (nothing is trained) and
# stored with its verdict in the model's config (codec_steps); adapter_for runs it only where it won.
if [ "$VALIDATE" = 1 ] && [[ " $CODECS " == *" jpeg "* ]]; then
  $PYTHON benchmarks/jpeg_deadzone.py --images "$VAL" --thresholds "$DEADZONE_THRESHOLDS" \
    --qualities "$DEADZONE_QUALITIES" --select --output "$WORK/jpeg_deadzone_val.json"
  $PYTHON training/set_codec_step.py --model "$DEST" --selection "$WORK/jpeg_deadzone_val.json"
fi
