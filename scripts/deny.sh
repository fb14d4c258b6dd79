#!/usr/bin/env bash
# deny.sh - check the dependency tree against deny.toml with cargo-deny.
#
# Usage: scripts/deny.sh [CHECKS...]   default: licenses bans sources
#        scripts/deny.sh advisories    (needs the RustSec database: GitHub)
#
# Installs cargo-deny (the version pinned below, with its own lock file) into
# .dev/tools/ the first time; later runs use that copy. Nothing is installed
# outside the repository.

set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

VERSION=0.20.2
ROOT=.dev/tools
BIN=$ROOT/bin/cargo-deny

if [[ ! -x $BIN ]] || [[ $("$BIN" --version 2>/dev/null) != "cargo-deny $VERSION" ]]; then
  echo "deny: installing cargo-deny $VERSION into $ROOT (a few minutes, once)" >&2
  cargo install --quiet --locked --root "$ROOT" "cargo-deny@$VERSION"
fi

checks=("$@")
(( ${#checks[@]} )) || checks=(licenses bans sources)
PATH="$PWD/$ROOT/bin:$PATH" exec cargo deny --log-level warn check "${checks[@]}"
