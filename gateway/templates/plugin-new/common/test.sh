#!/bin/sh
# Builds {{name}} and runs it offline with `mailgate plugin test` (no gateway, no mail sent):
#   ./test              # MAILGATE=/path/to/mailgate to use another binary than `mailgate`
#   WASM=built.wasm ./test   # check a component built before instead of building
# Each check runs the plugin over messages/hello.eml and compares the exit status
# (0 accepted, 1 rejected, 2 tempfailed, 3 plugin failed) and the report.
set -eu
cd "$(dirname "$0")"
mailgate=${MAILGATE:-mailgate}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${WASM:-}" ]; then
    wasm=$WASM
else
    {{build}}
fi
passed=0
failed=0
# check NAME EXPECTED-STATUS [TEXT-IN-REPORT] -- plugin test arguments...
check() {
    name=$1 want=$2 text=$3
    shift 4
    set +e
    "$mailgate" plugin test "$wasm" --message messages/hello.eml "$@" >"$work/out" 2>&1
    got=$?
    set -e
    if [ "$got" -eq "$want" ] && { [ -z "$text" ] || grep -qF -- "$text" "$work/out"; }; then
        passed=$((passed + 1))
        echo "ok: $name"
    else
        failed=$((failed + 1))
        echo "FAILED: $name (exit $got, expected $want${text:+ and \"$text\" in the report}):"
        sed 's/^/    /' "$work/out"
    fi
}
check "a denied recipient is refused at RCPT" 1 "5.1.1" -- \
    --plugin-config 'deny=["nobody@example.net"]' --rcpt nobody@example.net
check "anyone else is accepted, with the header" 0 "X-Checked-By: {{name}}" -- \
    --plugin-config 'deny=["nobody@example.net"]' --rcpt someone@example.net
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
