#!/bin/sh
# Build the web console's front-end assets: htmx and its SSE extension, from the npm registry at
# the versions console/package-lock.json pins, copied into softudc/console/static/vendor/ (ignored
# by git). The manager serves them itself: nothing comes from a CDN at run time.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/console"
npm ci --no-audit --no-fund --ignore-scripts --silent
out="$root/softudc/console/static/vendor"
mkdir -p "$out"
cp node_modules/htmx.org/dist/htmx.min.js "$out/htmx.min.js"
cp node_modules/htmx-ext-sse/dist/sse.min.js "$out/sse.min.js" 2>/dev/null || cp node_modules/htmx-ext-sse/sse.js "$out/sse.min.js"
echo "console assets: $(ls "$out" | tr '\n' ' ')in $out"
