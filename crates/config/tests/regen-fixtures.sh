#!/bin/bash
# Regenerate the golden fixtures from Debian's real Xen 4.17 xl.
#
#   apt-get install -y --no-install-recommends xenstore-utils xen-utils-4.17 gcc
#   crates/config/tests/regen-fixtures.sh
#
# 1. (Re)writes the generated edge-case inputs and cases.tsv (gen-edge-cases.py).
# 2. Starts a private C xenstored via tools/xen-ref/run-reference.sh (xl insists on reaching
#    one) unless XENSTORED_PATH is already set, and stops it on exit.
# 3. Runs `xl ARGS` for every line of cases.tsv (name<TAB>arg<TAB>arg...) from the fixtures
#    directory (so file names in messages are relative) and records expected/NAME.{out,err,rc}.
#    Random UUIDs in the output are replaced by "<uuid>".
# The same cases are replayed against rxen by crates/xl/tests/golden.rs and
# crates/config/tests/golden.rs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
fx="$here/fixtures"
cd "$fx"
python3 gen-edge-cases.py
if [ -z "${XENSTORED_PATH:-}" ]; then
  export R=${R:-/tmp/xenref-config-regen}
  "$top/tools/xen-ref/run-reference.sh" cxenstored >/dev/null 2>&1 &
  xs_pid=$!
  trap 'kill $xs_pid 2>/dev/null || true' EXIT
  for _ in $(seq 50); do [ -S "$R/c/socket" ] && break; sleep 0.1; done
  export XENSTORED_PATH=$R/c/socket
fi
rm -rf expected && mkdir expected
while IFS= read -r line || [ -n "$line" ]; do
  IFS=$'\t' read -r -a f <<< "$line"
  name=${f[0]}; args=("${f[@]:1}")
  set +e
  "$top/tools/xen-ref/run-reference.sh" xl "${args[@]}" >"expected/$name.out" 2>"expected/$name.err" </dev/null
  echo $? > "expected/$name.rc"
  set -e
  sed -i -E 's/"uuid": "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"/"uuid": "<uuid>"/' "expected/$name.out"
done < cases.tsv
# the real binary prints its own path in getopt errors
sed -i "s#^/usr/lib/xen-4.17/bin/xl:#xl:#" expected/*.err
echo "recorded $(ls expected/*.rc | wc -l) cases"
