#!/usr/bin/env bash
# The Fashion-MNIST finding end to end: baselines, search, confirmation, fidelity, report and the
# README's figures. Every step resumes, so after any stop run it again: finished runs are not
# retrained. Many hours on 2 CPU cores (studies/fmnist.yaml says how many runs).
#
# Usage: bash scripts/fmnist_finding.sh [STUDY_FILE]      (default studies/fmnist.yaml)
# Environment: FIDELITY_TOP (2) and FIDELITY_EPOCHS (10) size the fidelity check;
#              CONDCONV_NAS (default .venv/bin/condconv-nas) is the command to run;
#              FIGURES (default docs/) is where the PNGs go.
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:-studies/fmnist.yaml}
cli=${CONDCONV_NAS:-.venv/bin/condconv-nas}
python=$(dirname "$cli")/python
[ -x "$python" ] || python=python3
name=$(basename "$study" .yaml)

step() { echo "== $(date -u +%H:%M:%S) $*"; }
# Steps that do not need each other run side by side, so that no core waits for the last run of
# a step: the baselines (their two seeds a point measure the seed noise every claim is judged
# against) beside the search, then the confirmation beside the fidelity check (both need the
# search's front). Runs are stored as they finish, so a stop loses at most an epoch of each.
step "baselines and search"
"$cli" baselines "$study" & baselines=$!
"$cli" search "$study"
wait "$baselines"
step "confirm and fidelity"
"$cli" fidelity "$study" --top "${FIDELITY_TOP:-2}" --epochs "${FIDELITY_EPOCHS:-10}" & fidelity=$!
"$cli" confirm "$study"
wait "$fidelity"
step "report"; "$cli" report "$study" -o "reports/$name.html"
"$cli" report "$study" --json > "reports/$name.json"
step "figures"; "$python" scripts/figure_pngs.py "$study" "${FIGURES:-docs/}"
step "done: reports/$name.html, reports/$name.json, ${FIGURES:-docs/}$name-*.png"
