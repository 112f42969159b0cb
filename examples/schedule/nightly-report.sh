#!/usr/bin/env bash
# Nightly evaluation report: runs a notebook (03_evaluate by default) through `workbench report`
# into the reports folder, which rebuilds reports/index.html. Started by workbench-report.timer
# (systemd) or the crontab line next to this script; see README.md in this folder.
#
# Environment (all optional):
#   WORKBENCH_HOME             the workbench checkout (default: two folders above this script)
#   WORKBENCH_REPORTS          root of the reports, relative to WORKBENCH_HOME or absolute (default: reports)
#   WORKBENCH_REPORT_NOTEBOOK  notebook to run; it must declare bundle and data (default: 03_evaluate)
#   BUNDLE                     the model bundle (default: models/reference, the Makefile's REF_MODEL)
#   DATA                       the dataset (default: data/reference-mix, the Makefile's REF_DATA)
#   WORKBENCH_REPORT_ARGS      more arguments, split on spaces, e.g. "-p max_servers 2 -p progress false"
#
# Exits with the report's status (non-zero when it fails, so systemd and cron show it), or 0
# with a message on stderr when the previous run still holds the lock.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKBENCH_HOME="${WORKBENCH_HOME:-$(cd "$here/../.." && pwd)}"
cd "$WORKBENCH_HOME"

reports="${WORKBENCH_REPORTS:-reports}"
notebook="${WORKBENCH_REPORT_NOTEBOOK:-03_evaluate}"
bundle="${BUNDLE:-models/reference}"
data="${DATA:-data/reference-mix}"
read -r -a extra <<<"${WORKBENCH_REPORT_ARGS:-}"

mkdir -p "$reports"
lock="$reports/.nightly-report.lock"
exec 9>>"$lock"
if ! flock -n 9; then
    echo "nightly-report: another run holds $WORKBENCH_HOME/$lock; already running, nothing to do" >&2
    exit 0
fi

echo "nightly-report: $(date -u +%Y-%m-%dT%H:%M:%SZ) $notebook bundle=$bundle data=$data ${extra[*]}" >&2
status=0
# 9>&-: the report (and its kernel) do not inherit the lock; this shell holds it until it exits.
.venv/bin/workbench report "$notebook" -p bundle "$bundle" -p data "$data" "${extra[@]}" \
    --reports-dir "$reports" --no-progress 9>&- || status=$?
echo "nightly-report: $(date -u +%Y-%m-%dT%H:%M:%SZ) $notebook finished with status $status" >&2
exit "$status"
