#!/bin/bash
# Regenerate crates/xl/data/ from Debian's real xl 4.17 (the command table, help texts and the
# can_dryrun flag of every subcommand). Needs a reachable xenstored, e.g.:
#   R=/tmp/xenref-helper tools/xen-ref/run-reference.sh cxenstored &
#   XENSTORED_PATH=/tmp/xenref-helper/c/socket crates/xl/tools/capture-help.sh
set -e
top=$(cd "$(dirname "$0")/../../.." && pwd)
X="$top/tools/xen-ref/run-reference.sh xl"
D="$top/crates/xl/data"
mkdir -p "$D/help"
$X help > "$D/help-all.txt"
: > "$D/dryrun.txt"
for c in $(grep -E '^ [a-z]' "$D/help-all.txt" | awk '{print $1}'); do
  $X help "$c" > "$D/help/$c.txt" 2>&1 || true
  r=$(timeout 5 $X -N "$c" </dev/null 2>&1 | head -1) || true
  case "$r" in "command does not implement"*) d=0;; *) d=1;; esac
  echo "$c $d" >> "$D/dryrun.txt"
done
