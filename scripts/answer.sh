#!/usr/bin/env bash
# The decisive answer (issue 26; README "The answer"; docs/answer.md), in blocks: each call runs the queue below
# from the top for at most ANSWER_MINUTES, skipping what is done, and ends with the report of everything finished.
# When the minutes are spent the runs in training write a checkpoint and stop (exit 75); the same command, on
# this machine or on another one with the committed results and the runs folder, continues where it stopped.
#
# The queue (experiment=answer: every run trained to convergence by the rule docs/convergence.md measured), one
# latent size of ANSWER_DIMS after the other:
#  1. look 1: every family's answer runs (the registry's, vae_compare/posteriors) at seeds LOOK1_SEEDS, into
#     ANSWER_DIR, each sweep followed by its runs' gaps on the first GAPS_IMAGES test images and the calibration of
#     its seed-0 run (while the run's weights are on this machine). Once every run at the size has finished, look 1
#     has reached it: the report of look 1 at alpha LOOK1_ALPHA, at the sizes it has reached, goes into
#     PUBLISH_DIR/look1.
#  2. look 2, where a comparison is still open (inconclusive) at look 1: the runs of the open variants and diag's
#     again at seeds LOOK2_SEEDS (scripts/looks.py --open); the report of all seeds at alpha LOOK2_ALPHA into
#     PUBLISH_DIR/look2. The looks spend LOOK1_ALPHA + LOOK2_ALPHA = 0.05 in all (Bonferroni); a comparison
#     decided at look 1 keeps that verdict, so its variant gets no more seeds.
# Then LATER_DIMS (latent_dim 2, whose smallest supported margin is reported, not decided) at LOOK1_SEEDS, in look 1.
# Each latent size has its own family-wise alpha, so a look's verdicts at one size stand whatever the runs at the
# others. A look is reported at a latent size once all its runs there have finished (PUBLISH_DIR/look<n>-d<size>.done);
# until look 1 has reached a size, its finished runs are reported as look 1 would, without verdicts that count,
# into PUBLISH_DIR/interim. scripts/looks.py merges the looks into PUBLISH_DIR/verdict.csv (each comparison's verdict
# from the look that decided it) and copies the latest look's report beside it.
#
# Usage: scripts/answer.sh [extra overrides]
#   environment: ANSWER_MINUTES (115), ANSWER_DIR (PUBLISH_DIR/runs), PUBLISH_DIR (outputs/answer), ANSWER_DIMS
#                (8,32), LATER_DIMS (2), LOOK1_SEEDS (0,1,2,3), LOOK2_SEEDS (4,5,6,7), LOOK1_ALPHA (0.005),
#                LOOK2_ALPHA (0.045), GAPS_IMAGES (500), GAPS_OPTIONS (gaps.<key>=value words; gaps.check_steps=0),
#                CALIBRATE_OPTIONS, ANSWER_JOBS (2), END_GRACE (60: seconds between a block's SIGTERM to what is
#                left of a step and SIGKILL), PYTHON (default: the python beside $VAE_COMPARE)
# The runs' result files (not their weights: .gitignore) are committed after each block, so a block on a fresh
# machine skips every finished run; a run cut short there starts again.
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
# the Python that runs vae-compare (the one beside it, in its environment), for the family registry
PYTHON=${PYTHON:-$(dirname "$(command -v "$VAE_COMPARE")")/python}
[ -x "$PYTHON" ] || PYTHON=python3
HERE=$(cd "$(dirname "$0")" && pwd)
MINUTES=${ANSWER_MINUTES:-115}
[[ $MINUTES =~ ^[0-9]*[.]?[0-9]+$ ]] && awk "BEGIN { exit !($MINUTES > 0) }" \
    || { echo "error: ANSWER_MINUTES must be a number of minutes above 0, not '$MINUTES'" >&2; exit 2; }
DEADLINE=$(( $(date +%s) + $(awk "BEGIN { printf \"%d\", $MINUTES * 60 }") ))
PUBLISH_DIR=${PUBLISH_DIR:-outputs/answer}
ANSWER_DIR=${ANSWER_DIR:-$PUBLISH_DIR/runs}
DIMS=${ANSWER_DIMS:-8,32}
LAUNCH=(train.threads=1 hydra/launcher=joblib "hydra.launcher.n_jobs=${ANSWER_JOBS:-2}")
LOOK_SEEDS=("" "${LOOK1_SEEDS:-0,1,2,3}" "${LOOK1_SEEDS:-0,1,2,3},${LOOK2_SEEDS:-4,5,6,7}")
LOOK_ALPHA=("" "${LOOK1_ALPHA:-0.005}" "${LOOK2_ALPHA:-0.045}")
EXTRA=("$@")
status=0

# One step of the queue, stopped at the block's deadline: timeout sends SIGTERM to the whole process group, on
# which a training run writes its checkpoint (docs/interruptions.md), and SIGKILL 2 minutes later to anything left (a
# run killed in its final evaluation is re-evaluated on resume). Once the time is spent the block ends (75).
# timeout runs its command in a process group of its own, which a Ctrl-C at the terminal does not reach: the
# trap hands INT and TERM on to it, waits for the runs' checkpoints, and ends the block.
step() {
    local left=$(( DEADLINE - $(date +%s) ))
    (( left > 0 )) || finish 75
    timeout -k 120 -s TERM "$left" "$@" &
    running=$!
    wait "$running"
    local code=$?
    (( code == 124 )) && { end_step; finish 75; }
    running=
    return $code
}
# A sweep's joblib workers outlive its launcher, and the launcher hands a worker that a signal freed the next job:
# what is left of the step's process group (its id is timeout's pid) gets SIGTERM, which checkpoints a run, and
# SIGKILL after END_GRACE seconds.
end_step() {
    kill -TERM -- "-$running" 2>/dev/null || return 0
    for _ in $(seq "${END_GRACE:-60}"); do
        kill -0 -- "-$running" 2>/dev/null || return 0
        sleep 1
    done
    kill -KILL -- "-$running" 2>/dev/null
    return 0
}
running=
stop() {
    trap - INT TERM
    [ -n "$running" ] && { kill -TERM "$running" 2>/dev/null; wait "$running"; end_step; }
    echo "answer: stopped; run the same command again to continue" >&2
    exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM

reached() {  # the latent sizes look $1 has reached, comma-separated (empty: none)
    local sizes=() marker
    for marker in "$PUBLISH_DIR/look$1"-d*.done; do
        [ -f "$marker" ] && { marker=${marker##*-d}; sizes+=("${marker%.done}"); }
    done
    (IFS=,; echo "${sizes[*]}")
}
# The report of look $1 at the latent sizes it has reached.
publish_look() {
    "$VAE_COMPARE" report "$ANSWER_DIR" --tuned --seeds "${LOOK_SEEDS[$1]}" --latent-dims "$(reached "$1")" \
        --alpha "${LOOK_ALPHA[$1]}" --out "$PUBLISH_DIR/look$1" > "$PUBLISH_DIR/look$1.log" 2>&1
}
# The latent sizes of the finished runs that look 1 has not reached, comma-separated (empty: none).
unreached() {
    local sizes=() config dim reached_sizes=",$(reached 1),"
    for config in "$ANSWER_DIR"/*/.hydra/config.yaml; do
        [ -f "$(dirname "$(dirname "$config")")/summary.json" ] || continue
        dim=$(sed -n 's/^latent_dim: //p' "$config")
        [[ $reached_sizes == *",$dim,"* || " ${sizes[*]} " == *" $dim "* ]] || sizes+=("$dim")
    done
    (IFS=,; echo "${sizes[*]}")
}
# Report each look at the sizes it has reached and merge their verdicts; report the finished runs at the sizes
# look 1 has not reached as look 1 would (PUBLISH_DIR/interim: its verdicts do not count, the look is not
# complete); end the block.
finish() {
    if [ -n "$(reached 1)" ]; then
        for look in 1 2; do
            [ -n "$(reached "$look")" ] && { publish_look "$look" || status=1; }
        done
        "$PYTHON" "$HERE/looks.py" "$PUBLISH_DIR" > /dev/null || status=1
    fi
    local sizes
    sizes=$(unreached)
    if [ -n "$sizes" ]; then
        "$VAE_COMPARE" report "$ANSWER_DIR" --tuned --seeds "${LOOK_SEEDS[1]}" --latent-dims "$sizes" \
            --alpha "${LOOK_ALPHA[1]}" --out "$PUBLISH_DIR/interim" > "$PUBLISH_DIR/interim.log" 2>&1 || status=1
    else
        rm -rf "$PUBLISH_DIR/interim"
    fi
    [ "$1" = 75 ] && echo "answer: this block's $MINUTES minutes are spent; run the same command again to continue"
    exit "$1"
}

# The sweeps (one line of overrides each) of look $1 at latent size $2: every family's answer runs at look 1; at
# look 2 those of the comparisons look 1 left open there, and diag's (none when it decided them all).
sweeps_of() {
    if [ "$1" = 1 ]; then
        "$PYTHON" -m vae_compare.posteriors answer "$2"
    else
        "$PYTHON" "$HERE/looks.py" --open "$PUBLISH_DIR" "$2"
    fi
}
# Sweeps $1 (lines) at seeds $2, each sweep then measured. Fails when a run failed (its failed.txt stays until a
# later call runs it again), so that a look is only done once all its runs have finished.
runs() {
    local sweeps failed=0
    mapfile -t sweeps <<< "$1"
    for sweep in "${sweeps[@]}"; do
        # shellcheck disable=SC2086  # the overrides are words
        step "$VAE_COMPARE" train -m $sweep experiment=answer "seed=$2" "${LAUNCH[@]}" "hydra.sweep.dir=$ANSWER_DIR" \
            "${EXTRA[@]}" || { status=1; failed=1; }
        measure
    done
    return $failed
}
measure() {  # the gaps of every finished run (measured ones are skipped), then calibrate the seed-0 runs not yet
    # calibrated (without starting the command for each one that is)
    # shellcheck disable=SC2086  # GAPS_OPTIONS: more gaps.<key>=value words; by default no continuation check
    # (docs/answer.md: it cost over 15 minutes per run here, and q* then stops 0.02-0.07 nat short)
    step "$VAE_COMPARE" gaps "$ANSWER_DIR" "gaps.images=${GAPS_IMAGES:-500}" ${GAPS_OPTIONS-gaps.check_steps=0} || status=1
    for config in $(grep -l "^seed: 0$" "$ANSWER_DIR"/*/.hydra/config.yaml 2>/dev/null); do
        folder=$(dirname "$(dirname "$config")")
        [ -f "$folder/summary.json" ] && [ ! -f "$folder/calibration.json" ] || continue
        # shellcheck disable=SC2086
        step "$VAE_COMPARE" calibrate "$folder" ${CALIBRATE_OPTIONS:-} || status=1
    done
}

# Look $1 at latent size $2 (its runs at seeds $3), reported once it has reached the size.
look() {
    if [ -f "$PUBLISH_DIR/look$1-d$2.done" ]; then
        echo "answer: look $1 at latent_dim $2 is done"
        return
    fi
    local sweeps
    sweeps=$(sweeps_of "$1" "$2") || finish 2
    if [ -z "$sweeps" ]; then
        echo "answer: look 1 decided every comparison at latent_dim $2"
        return
    fi
    runs "$sweeps" "$3" || { echo "answer: look $1 at latent_dim $2 has a failed run (failed.txt in $ANSWER_DIR)" >&2
                             finish 1; }
    touch "$PUBLISH_DIR/look$1-d$2.done"
    publish_look "$1" || status=1
}

mkdir -p "$PUBLISH_DIR"
for dim in ${DIMS//,/ }; do
    look 1 "$dim" "${LOOK_SEEDS[1]}"
    look 2 "$dim" "${LOOK2_SEEDS:-4,5,6,7}"
done
later=${LATER_DIMS-2}
for dim in ${later//,/ }; do
    look 1 "$dim" "${LOOK_SEEDS[1]}"
done
finish "$status"
