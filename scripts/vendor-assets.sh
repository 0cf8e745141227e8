#!/bin/sh
# The portal's browser assets, fetched from the npm registry at build time and copied into the
# package (no CDN at run time: the portal works offline). Versions are pinned here.
set -eu
HTMX=2.0.11
UPLOT=1.6.32
AXE=4.14.1        # accessibility checks in the browser tests (not shipped)
SODIUM=0.7.15     # libsodium (Argon2id, secretbox): passphrase-protected key files in the browser
SWAGGER=5.36.0    # the API's /docs page, served from here rather than a CDN
FHIRCLIENT=2.6.3  # SMART's JavaScript client, driven in the browser by the SMART tests (not shipped)
SHCSDK=0.0.8      # PathCheck's SMART Health Card verifier, run by node in the card tests (not shipped)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/src/careledger/web/static/vendor"
WORK="$ROOT/build/npm"
mkdir -p "$WORK" "$OUT"
cd "$WORK"
[ -f package.json ] || echo '{"name": "careledger-portal-assets", "private": true}' > package.json
npm install --silent --no-audit --no-fund "htmx.org@$HTMX" "uplot@$UPLOT" \
  "axe-core@$AXE" "libsodium-wrappers-sumo@$SODIUM" "swagger-ui-dist@$SWAGGER" \
  "fhirclient@$FHIRCLIENT" "@pathcheck/shc-sdk@$SHCSDK" >/dev/null
cp node_modules/htmx.org/dist/htmx.min.js "$OUT/htmx.min.js"
cp node_modules/uplot/dist/uPlot.iife.min.js "$OUT/uPlot.iife.min.js"
cp node_modules/uplot/dist/uPlot.min.css "$OUT/uPlot.min.css"
cp node_modules/htmx.org/LICENSE "$OUT/LICENSE-htmx.txt"
cp node_modules/uplot/LICENSE "$OUT/LICENSE-uplot.txt"
cp node_modules/libsodium-wrappers-sumo/dist/modules-sumo/libsodium-wrappers.js "$OUT/libsodium-wrappers.js"
cp node_modules/libsodium-sumo/dist/modules-sumo/libsodium-sumo.js "$OUT/libsodium-sumo.js"
cp node_modules/libsodium-wrappers-sumo/LICENSE "$OUT/LICENSE-libsodium.txt"
cp node_modules/swagger-ui-dist/swagger-ui-bundle.js "$OUT/swagger-ui-bundle.js"
cp node_modules/swagger-ui-dist/swagger-ui.css "$OUT/swagger-ui.css"
cp node_modules/swagger-ui-dist/LICENSE "$OUT/LICENSE-swagger-ui.txt"
echo "htmx.org $HTMX, uplot $UPLOT, libsodium-wrappers-sumo $SODIUM, swagger-ui-dist $SWAGGER" > "$OUT/VERSIONS"
