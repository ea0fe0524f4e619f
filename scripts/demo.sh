#!/usr/bin/env bash
# The demo on the embedded default: a controller on SQLite watching manifests/, two
# local workers, the example jobs run to completion with a live view. Runs in ./demo/
# with a fresh database each time. Extra arguments go to `ffrtmp up`
# (e.g. scripts/demo.sh --workers 4; without --exit-when-done it runs until Ctrl-C).
source "$(dirname "$0")/_venv.sh"

mkdir -p demo
rm -f demo/ffrtmp.db demo/ffrtmp.db-wal demo/ffrtmp.db-shm
cd demo
if [ "$#" -eq 0 ]; then
    set -- --workers 2 --exit-when-done
fi
exec ffrtmp up --manifests ../manifests --port 0 "$@"
