#!/usr/bin/env bash
# Re-fetch the vendored GraphiQL assets from the npm registry into assets/.
#
# The page must work with no internet, so these files ship inside the Python package
# instead of coming from a CDN. Running this again gives byte-for-byte the same files
# for the same versions; to update, change a version below, run it, and review the diff
# (pytest's tests/unit/test_graphiql.py checks the result is still self-contained).
# Needs node and npm, and access to the npm registry.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
assets="$here/assets"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# package@version, file inside the package, name it ships under.
vendored=(
  "react@18.2.0 umd/react.production.min.js react.production.min.js"
  "react-dom@18.2.0 umd/react-dom.production.min.js react-dom.production.min.js"
  "graphiql@3.8.3 graphiql.min.js graphiql.min.js"
  "graphiql@3.8.3 graphiql.min.css graphiql.min.css"
  "graphql-ws@6.4.2 umd/graphql-ws.min.js graphql-ws.min.js"
)

mkdir -p "$assets/licenses"
versions="$work/VERSIONS"
{
  echo "# Vendored from the npm registry by update_assets.sh; do not edit these files by hand."
  echo "# The only change made to them: sourceMappingURL comments are removed, so browser"
  echo "# devtools do not ask the server (or anyone else) for maps that are not shipped."
  echo "#"
  echo "# file	package	version	licence	npm integrity"
} >"$versions"

for entry in "${vendored[@]}"; do
  read -r spec inner shipped <<<"$entry"
  name="${spec%@*}"
  unpacked="$work/$name"
  if [ ! -d "$unpacked" ]; then
    tarball="$(cd "$work" && npm pack --silent "$spec" | tail -n 1)"
    mkdir -p "$unpacked"
    tar -xzf "$work/$tarball" -C "$unpacked" --strip-components=1
    integrity="$(cd "$work" && npm view "$spec" dist.integrity)"
    license="$(node -p "require('$unpacked/package.json').license")"
    version="$(node -p "require('$unpacked/package.json').version")"
    for candidate in LICENSE LICENSE.md LICENSE.txt; do
      if [ -f "$unpacked/$candidate" ]; then
        cp "$unpacked/$candidate" "$assets/licenses/$name.LICENSE"
        break
      fi
    done
    [ -f "$assets/licenses/$name.LICENSE" ] || { echo "no licence file in $spec" >&2; exit 1; }
    printf '%s\n' "$integrity" >"$unpacked/.integrity"
    printf '%s\t%s\n' "$version" "$license" >"$unpacked/.meta"
  fi
  IFS=$'\t' read -r version license <"$unpacked/.meta"
  sed -e '/^\/\/# sourceMappingURL=/d' -e '/^\/\*# sourceMappingURL=.*\*\/$/d' \
    "$unpacked/$inner" >"$assets/$shipped"
  printf '%s\t%s\t%s\t%s\t%s\n' "$shipped" "$name" "$version" "$license" \
    "$(cat "$unpacked/.integrity")" >>"$versions"
done

cp "$versions" "$assets/VERSIONS"
echo "updated $(grep -vc '^#' "$assets/VERSIONS") files in $assets"
