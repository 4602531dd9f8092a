#!/usr/bin/env bash
# Train on an offline GPU machine that has JAX but neither TensorFlow nor Keras nor internet (Keras 3
# on its JAX backend); bring back the run folder and the benchmark JSON.
#
# Here, with internet, from the repository root (once):
#   scripts/gpu_machine.sh wheels                      # keras 3.15.1 + the deps such a machine lacks -> .whl/
#   python -m core pack-fields --data DIR --out pack --quality 85   # the real images as a field pack (19 MiB
#                                      # for 757 fields: with the checkout and .whl/ under a lent machine's 64 MiB)
# There, in a copy of the repository with .whl/ and the pack beside it:
#   OUT=/somewhere scripts/gpu_machine.sh run pack [python -m core train options, e.g. --epochs 60 --folds 5 --steps-per-epoch 24]
#   OUT=/somewhere scripts/gpu_machine.sh gan pack [python -m core gan train options, e.g. --steps 20000]
#   OUT=/somewhere scripts/gpu_machine.sh both pack     # both issues' runs in one command (see `both` below)
#   OUT=/somewhere scripts/gpu_machine.sh back FOLDER   # any run folder packed as below (what the others end with)
#
# Both install .whl/*.whl into /tmp/site when Keras is missing (no index, no deps) and set
# KERAS_BACKEND=jax. The training gets TIME_LIMIT seconds (default 480), then SIGTERM, which stops it
# cleanly (a GAN saves its generator and checkpoint for --resume; a fields run keeps the folds it
# finished), so that what it made still comes back before a lent machine's 10-minute command limit.
# `run` runs bench/gpu_train.py (BENCH_ARGS; BENCH_ARGS=skip to skip it), then
# `python -m core train --pipeline fields --data PACK --out $RUN ...`; `gan` runs
# `python -m core gan train --data PACK --out $RUN ...` (a pack's file names are BreakHis names, so
# the GAN selects, splits and scales them as it does the images; its 100X fields are too coarse
# at 350 px for the GAN's 1.5625 um/px and are left out, counted in the card). Both leave in $OUT:
#   gpu_train.json   the benchmark's JSON (run)    train.log   the training's output
#   run.tgz          the run folder (model/, metrics.json, cv.json, progress.jsonl, ...), split into
#                    run.tgz.00, run.tgz.01, ... of 15 MiB when over 16 MiB: `cat run.tgz.* > run.tgz`
#   left_out.txt     only when something stayed there: the fold models' weights, then a GAN's checkpoint
#                    (see MAX_BACK_MB)
# Unpack with `tar xzf run.tgz`: run/model is a model folder; a model trained under JAX loads under
# TensorFlow (the app: `python -m core predict --model run/model IMAGE`; `python -m core gan evaluate`;
# `python -m core make-default --from-run run --command "..."` installs a fields run as models/default).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
KERAS_VERSION=3.15.1
# What Keras needs beyond what the GPU machine holds (absl-py, h5py, ml-dtypes, numpy, packaging,
# rich are there: /work/.library/device/KINDS.md); the project's own needs there (pandas, scipy,
# scikit-learn, scikit-image, pillow) are there too.
WHEELS="keras==$KERAS_VERSION namex optree"

wheels() {
    mkdir -p .whl
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
    echo "Keras' declared needs (each must be in .whl/ or on the GPU machine):"
    unzip -p .whl/keras-*.whl '*/METADATA' | grep ^Requires-Dist | grep -v extra || true
    du -ch .whl/*.whl | tail -1
}

setup() {
    mkdir -p "$OUT" "$(dirname "$RUN_DIR")"
    export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    # XLA's compiled programs on disk, keyed by the program (debug names left out), every program kept
    # however quickly it compiled: the same command again on the same warm machine (a rerun, a GAN's
    # --resume) loads them instead of compiling, and so do the folds and the final model of one fields
    # run when they have the same --steps-per-epoch (the class weights ride on the batches; a
    # schedule's length is in the program). CPU dry run, 2 folds and the final model, JAX: the training
    # step compiled once (4.1 s) and loaded twice (0.3 s); before, once per model.
    export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}
    export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}
    if ! "$PYTHON" -c "import keras" 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PYTHON" -c "import keras, jax; print('keras', keras.__version__, keras.backend.backend(), 'jax', jax.__version__, jax.devices())"
}

# At most 8 files of 16 MiB come back from a lent machine, so run.tgz may take 5 pieces of 15 MiB
# (beside gpu_train.json, train.log and left_out.txt). Five folds of a full-width ResNet-18 are ~45 MB
# each: when the whole run is larger, its fold models stay there (the final model, cv.json, the
# out-of-fold predictions and every card come back; slide-threshold and refit_cv need the fold models).
MAX_BACK_MB=${MAX_BACK_MB:-75}

bring_back() {  # the run folder as run.tgz (split under 16 MiB), then what $OUT holds
    if [ -d "$RUN_DIR" ]; then
        local name tier=0
        name=$(basename "$RUN_DIR")
        # Largest first to stay behind: the fold models' weights, then a GAN's resume checkpoint.
        local -a excludes=()
        while :; do
            tar czf "$OUT/run.tgz" -C "$(dirname "$RUN_DIR")" "${excludes[@]}" "$name"
            [ "$(stat -c %s "$OUT/run.tgz")" -le $((MAX_BACK_MB * 1024 * 1024)) ] && break
            tier=$((tier + 1))
            case $tier in
                1) excludes+=(--exclude='fold-*/model/model.keras' --exclude='fold-*/member-*/model/model.keras')
                   echo "run folder over $MAX_BACK_MB MB compressed: the fold models' model.keras files were left out" \
                       "(their cards, cv.json, the out-of-fold predictions and the final model came back)" \
                       | tee -a "$OUT/left_out.txt" ;;
                2) excludes+=(--exclude='checkpoint.weights.h5')
                   echo "still over: the GAN's checkpoint.weights.h5 (for --resume) was left out too (its generator" \
                       "came back)" | tee -a "$OUT/left_out.txt" ;;
                *) echo "still over $MAX_BACK_MB MB: pieces past the eighth file will not come back" \
                       | tee -a "$OUT/left_out.txt"; break ;;
            esac
        done
        if [ "$(stat -c %s "$OUT/run.tgz")" -gt $((16 * 1024 * 1024)) ]; then
            split -b 15m -d -a 2 "$OUT/run.tgz" "$OUT/run.tgz." && rm "$OUT/run.tgz"
        fi
    fi
    ls -l "$OUT"
}

# limited SECONDS GRACE LOG ARGS...: `python -m core ARGS` with its output in LOG, SIGTERM after SECONDS
# (SIGKILL GRACE seconds later), then LOG's last lines; returns the command's exit status.
limited() {
    local seconds=$1 grace=$2 log=$3 status=0
    shift 3
    timeout --signal=TERM --kill-after="$grace" "$seconds" "$PYTHON" -m core "$@" > "$log" 2>&1 || status=$?
    tail -n 5 "$log"
    return $status
}

run() {
    local pack=${1:?usage: scripts/gpu_machine.sh run PACK [train options]}
    shift
    setup
    if [ "${BENCH_ARGS:-}" != skip ]; then
        # shellcheck disable=SC2086
        "$PYTHON" bench/gpu_train.py ${BENCH_ARGS:---models densenet121@224 --batch-sizes 256 512 --steps 20 --warmup 3} \
            --out "$OUT/gpu_train.json" > /dev/null || echo "bench/gpu_train.py failed (exit $?)" >&2
    fi
    local status=0
    limited "$TIME_LIMIT" 60 "$OUT/train.log" train --pipeline fields --weights none --data "$pack" \
        --out "$RUN_DIR" "$@" || status=$?
    bring_back
    return $status
}

gan() {
    local pack=${1:?usage: scripts/gpu_machine.sh gan PACK [gan train options]}
    shift
    setup
    local status=0
    limited "$TIME_LIMIT" 60 "$OUT/train.log" gan train --data "$pack" --out "$RUN_DIR" "$@" || status=$?
    bring_back
    return $status
}

# One lent session (15 minutes of device time, 10 a command) for both issues: the fields
# cross-validation, then the GAN, each with its own share of the time; both run folders come back in
# one run.tgz (run/fields, run/gan) with fields.log and gan.log beside it. FIELDS_ARGS and GAN_ARGS
# replace the default options; FIELDS_TIME and GAN_TIME the shares (a GAN stopped at its limit keeps
# its generator; its --resume checkpoint comes back only when there is room).
both() {
    local pack=${1:?usage: scripts/gpu_machine.sh both PACK}
    setup
    local status=0
    mkdir -p "$RUN_DIR"
    # shellcheck disable=SC2086
    limited "${FIELDS_TIME:-300}" 30 "$OUT/fields.log" train --pipeline fields --weights none --data "$pack" \
        --out "$RUN_DIR/fields" \
        ${FIELDS_ARGS:---epochs 60 --folds 5 --steps-per-epoch 24 --backbone resnet18 --input-size 160 --band-limit \
            --refit-subtypes} \
        || status=$?
    # shellcheck disable=SC2086
    limited "${GAN_TIME:-180}" 30 "$OUT/gan.log" gan train --data "$pack" --out "$RUN_DIR/gan" \
        ${GAN_ARGS:---steps 20000 --image-size 64 --r1 100 --checkpoint-every 2000 --sample-every 2500} \
        || status=$?
    bring_back
    return $status
}

case "${1:-}" in
    wheels) wheels ;;
    back)  # pack an existing run folder as run/gan/both do at their end
        OUT=${OUT:?set OUT to the folder whose files come back}
        RUN_DIR=${2:?usage: OUT=... scripts/gpu_machine.sh back RUN_FOLDER}
        mkdir -p "$OUT"; bring_back ;;
    run | gan | both)
        OUT=${OUT:?set OUT to the folder whose files come back}
        RUN_DIR=${RUN:-/tmp/gpu-run/run}
        TIME_LIMIT=${TIME_LIMIT:-480}
        command=$1; shift; "$command" "$@" ;;
    *) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 2 ;;  # the header above, whatever its length
esac
