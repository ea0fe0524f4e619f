#!/usr/bin/env bash
# The demo on the embedded default: SQLite in ./demo/, the example manifests.
# Extra arguments go to `ffrtmp up` once it exists.
source "$(dirname "$0")/_venv.sh"

mkdir -p demo
if ffrtmp up --help >/dev/null 2>&1; then
    cd demo && exec ffrtmp up --manifests ../manifests "$@"
fi
# Until the controller process lands (issues 4, 6, 7), the demo shows what exists:
# the example manifests checked offline and the database schema created.
ffrtmp validate manifests
ffrtmp db upgrade --db sqlite:///demo/ffrtmp.db
ffrtmp db current --db sqlite:///demo/ffrtmp.db
