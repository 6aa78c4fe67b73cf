#!/usr/bin/env bash
# post-deploy.sh — what ARM cannot do, after `az deployment group create -f infra/main.bicep`:
#
#   1. the signing CA: create it with `iotprov ca init` (or import yours), store the signing
#      bundle in Key Vault with `iotprov ca upload`;
#   2. the data key that seals server-generated private keys at rest;
#   3. DPS: upload the root CA, prove possession of its key (`az iot dps certificate
#      create/generate-verification-code/verify` with `iotprov ca verification-cert`),
#      and create the X.509 enrollment group that trusts it;
#   4. the bootstrap-credential secrets of the enabled methods: SAS group key, Beam PSK,
#      JWT keys, X.509 manufacturer CA.
#
# Idempotent: every step first looks at what exists and leaves it alone, so it can be run
# again after a failure or a redeploy. It never prints a key: generated secrets go to
# Key Vault and to 0600 files in the state folder (--state-dir).
#
# Usage: infra/post-deploy.sh -g RESOURCE_GROUP [options]   (--help for all options)
# Needs: az (logged in, with the azure-iot extension), openssl, and the iotprov CLI
# (bin/iotprov from `make build`, or $IOTPROV). The caller needs Key Vault Secrets Officer
# on the vault (main.bicep's operatorPrincipalId) and Contributor on the resource group.
set -euo pipefail

AZ=${AZ:-az}
IOTPROV=${IOTPROV:-}
GROUP=""
DEPLOYMENT="main"
CA_DIR=""
STATE_DIR=""
ENROLLMENT_ID="iotprov-devices"
DPS_CERT_NAME="iotprov-root-ca"
BEAM_PSK_FILE=""
JWT_KEYS_FILE=""
X509_CA_FILE=""

usage() {
  cat <<'USAGE'
Usage: infra/post-deploy.sh -g RESOURCE_GROUP [options]

  -g, --resource-group RG   resource group of the deployment (required)
  -n, --deployment NAME     deployment name (default: main, as az names a main.bicep deployment)
  --ca-dir DIR              CA files: root-ca.pem, root-ca.key, signing-ca.pem. Existing files
                            are imported as they are; missing ones are created with
                            `iotprov ca init` (default: STATE_DIR/ca)
  --state-dir DIR           where generated material is kept, mode 0700
                            (default: ~/.iotprov/RESOURCE_GROUP)
  --enrollment-id ID        DPS enrollment group ID (default: iotprov-devices)
  --dps-cert-name NAME      name of the root CA in DPS (default: iotprov-root-ca)
  --beam-psk-file FILE      the SORACOM Beam pre-shared key (when beam is enabled; else one is
                            generated and must then be registered in SORACOM)
  --jwt-keys-file FILE      PEM public keys or JWKS that verify device JWTs (when jwt is enabled)
  --x509-ca-file FILE       manufacturer CA bundle for bootstrap certificates (when x509 is enabled)
  -h, --help                this text

Environment: AZ (default az), IOTPROV (default bin/iotprov, built if missing).
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    -g|--resource-group) GROUP=$2; shift 2 ;;
    -n|--deployment) DEPLOYMENT=$2; shift 2 ;;
    --ca-dir) CA_DIR=$2; shift 2 ;;
    --state-dir) STATE_DIR=$2; shift 2 ;;
    --enrollment-id) ENROLLMENT_ID=$2; shift 2 ;;
    --dps-cert-name) DPS_CERT_NAME=$2; shift 2 ;;
    --beam-psk-file) BEAM_PSK_FILE=$2; shift 2 ;;
    --jwt-keys-file) JWT_KEYS_FILE=$2; shift 2 ;;
    --x509-ca-file) X509_CA_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "post-deploy: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$GROUP" ] || { echo "post-deploy: -g RESOURCE_GROUP is required" >&2; usage >&2; exit 2; }

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'post-deploy: %s\n' "$*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "$IOTPROV" ]; then
  IOTPROV="$REPO/bin/iotprov"
  if [ ! -x "$IOTPROV" ]; then
    log "building the iotprov CLI"
    (cd "$REPO" && go build -trimpath -o bin/iotprov ./cmd/iotprov)
  fi
fi
STATE_DIR=${STATE_DIR:-$HOME/.iotprov/$GROUP}
CA_DIR=${CA_DIR:-$STATE_DIR/ca}
mkdir -p "$STATE_DIR" && chmod 700 "$STATE_DIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- deployment outputs ----------------------------------------------------------------------
output() {
  "$AZ" deployment group show -g "$GROUP" -n "$DEPLOYMENT" --query "properties.outputs.$1.value" -o tsv
}
VAULT=$(output keyVaultName)
VAULT_URL=$(output keyVaultUri)
DPS=$(output dpsName)
HUB_HOST=$(output iotHubHostName)
APP=$(output functionAppName)
CA_SECRET=$(output caSecretName)
DATA_KEY_SECRET=$(output dataKeySecretName)
[ -n "$VAULT" ] && [ -n "$DPS" ] && [ -n "$APP" ] || die "deployment $DEPLOYMENT in $GROUP has no keyVaultName/dpsName/functionAppName outputs: deploy infra/main.bicep first"

# What the app actually runs with: the enabled methods and secret names come from its app
# settings, so extraAppSettings and later changes are honoured.
"$AZ" functionapp config appsettings list -g "$GROUP" -n "$APP" --query "[].{k:name,v:value}" -o tsv >"$WORK/settings"
setting() { # NAME DEFAULT
  local v
  v=$(awk -F'\t' -v k="$1" '$1 == k { print $2; exit }' "$WORK/settings")
  printf '%s' "${v:-$2}"
}
METHODS=$(setting IOTPROV_AUTH_METHODS sas)
enabled() { case ",$(echo "$METHODS" | tr -d ' ' | tr 'A-Z' 'a-z')," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

secret_exists() { # NAME
  "$AZ" keyvault secret show --vault-name "$VAULT" --name "$1" --query id -o tsv >/dev/null 2>&1
}
# put_secret NAME FILE: stores FILE's content; the value never appears on a command line.
put_secret() {
  "$AZ" keyvault secret set --vault-name "$VAULT" --name "$1" --file "$2" --encoding utf-8 --query id -o tsv >/dev/null
}
# ensure_secret NAME [SOURCE_FILE] [GENERATOR...]: leaves an existing secret alone; else
# stores SOURCE_FILE, or the generator's output (also kept in STATE_DIR/NAME, 0600).
ensure_secret() {
  local name=$1 source=$2; shift 2
  if secret_exists "$name"; then
    log "secret $name: already in $VAULT, left as it is"
    return
  fi
  if [ -n "$source" ]; then
    [ -r "$source" ] || die "$source: not readable"
    put_secret "$name" "$source"
    log "secret $name: stored from $source"
    return
  fi
  [ $# -gt 0 ] || die "secret $name is missing in $VAULT and no file was given for it"
  local kept="$STATE_DIR/$name"
  if [ ! -s "$kept" ]; then
    (umask 077 && "$@" >"$kept")
  fi
  put_secret "$name" "$kept"
  log "secret $name: generated, stored, copy kept in $kept"
}

# Generators print one line without a newline: Key Vault stores the file as it is, and a
# trailing newline would become part of a key or PSK.
random_base64() { openssl rand "$1" | base64 | tr -d '\n'; }
random_hex() { openssl rand -hex "$1" | tr -d '\n'; }

# --- 1. signing CA ---------------------------------------------------------------------------
if [ -f "$CA_DIR/signing-ca.pem" ] && [ -f "$CA_DIR/root-ca.pem" ]; then
  log "CA: using the existing files in $CA_DIR"
else
  log "CA: creating a root and an intermediate in $CA_DIR"
  mkdir -p "$CA_DIR"
  "$IOTPROV" ca init --dir "$CA_DIR" >&2
fi
if secret_exists "$CA_SECRET"; then
  log "secret $CA_SECRET: already in $VAULT, left as it is (rotate with: $IOTPROV ca upload --vault-url $VAULT_URL --name $CA_SECRET --file $CA_DIR/signing-ca.pem)"
else
  "$IOTPROV" ca upload --vault-url "$VAULT_URL" --name "$CA_SECRET" --file "$CA_DIR/signing-ca.pem" --client-id "" >&2
fi

# --- 2. data key -----------------------------------------------------------------------------
ensure_secret "$DATA_KEY_SECRET" "" random_base64 32

# --- 3. DPS: root CA, proof of possession, enrollment group ------------------------------------
dps_cert() { # QUERY
  "$AZ" iot dps certificate show -g "$GROUP" --dps-name "$DPS" --certificate-name "$DPS_CERT_NAME" --query "$1" -o tsv 2>/dev/null
}
if ! dps_cert name >/dev/null; then
  log "DPS: uploading $CA_DIR/root-ca.pem as $DPS_CERT_NAME"
  "$AZ" iot dps certificate create -g "$GROUP" --dps-name "$DPS" --certificate-name "$DPS_CERT_NAME" \
    --path "$CA_DIR/root-ca.pem" -o none
fi
if [ "$(dps_cert properties.isVerified)" = "true" ]; then
  log "DPS: $DPS_CERT_NAME is verified"
else
  [ -f "$CA_DIR/root-ca.key" ] || die "$CA_DIR/root-ca.key is needed once to prove possession of the root CA to DPS"
  etag=$(dps_cert etag)
  read -r code etag < <("$AZ" iot dps certificate generate-verification-code -g "$GROUP" --dps-name "$DPS" \
    --certificate-name "$DPS_CERT_NAME" --etag "$etag" --query "[properties.verificationCode, etag]" -o tsv | paste -s -d ' ')
  [ -n "$code" ] || die "DPS gave no verification code for $DPS_CERT_NAME"
  "$IOTPROV" ca verification-cert --code "$code" --cert "$CA_DIR/root-ca.pem" --key "$CA_DIR/root-ca.key" --out "$WORK/verification.pem"
  "$AZ" iot dps certificate verify -g "$GROUP" --dps-name "$DPS" --certificate-name "$DPS_CERT_NAME" \
    --path "$WORK/verification.pem" --etag "$etag" -o none
  log "DPS: $DPS_CERT_NAME verified (proof of possession)"
fi
if "$AZ" iot dps enrollment-group show -g "$GROUP" --dps-name "$DPS" --enrollment-id "$ENROLLMENT_ID" --query enrollmentGroupId -o tsv >/dev/null 2>&1; then
  log "DPS: enrollment group $ENROLLMENT_ID exists"
else
  log "DPS: creating enrollment group $ENROLLMENT_ID (X.509, CA $DPS_CERT_NAME, hub $HUB_HOST)"
  "$AZ" iot dps enrollment-group create -g "$GROUP" --dps-name "$DPS" --enrollment-id "$ENROLLMENT_ID" \
    --ca-name "$DPS_CERT_NAME" --provisioning-status enabled --iot-hubs "$HUB_HOST" -o none
fi

# --- 4. bootstrap-credential secrets of the enabled methods ------------------------------------
# A DPS-style group key: 64 random bytes, base64, as DPS generates them.
if enabled sas; then
  ensure_secret "$(setting IOTPROV_SAS_GROUP_KEY_SECRET sas-group-key)" "" random_base64 64
  # More key groups (IOTPROV_SAS_KEY_GROUPS: skn=secret-name,...), one key each.
  IFS=',' read -r -a groups <<<"$(setting IOTPROV_SAS_KEY_GROUPS "")"
  for pair in "${groups[@]}"; do
    pair=$(echo "$pair" | tr -d ' ')
    [ -n "$pair" ] || continue
    ensure_secret "${pair#*=}" "" random_base64 64
  done
fi
if enabled beam; then
  psk_secret=$(setting IOTPROV_BEAM_PSK_SECRET beam-psk)
  if [ -z "$BEAM_PSK_FILE" ] && ! secret_exists "$psk_secret"; then
    log "beam: no --beam-psk-file; generating one: register $STATE_DIR/$psk_secret as the pre-shared key of your SORACOM Beam configuration"
  fi
  ensure_secret "$psk_secret" "$BEAM_PSK_FILE" random_hex 32
fi
if enabled jwt; then
  ensure_secret "$(setting IOTPROV_JWT_KEYS_SECRET jwt-keys)" "$JWT_KEYS_FILE"
fi
if enabled x509; then
  ensure_secret "$(setting IOTPROV_X509_CA_SECRET x509-bootstrap-ca)" "$X509_CA_FILE"
fi

BASE="https://$("$AZ" functionapp show -g "$GROUP" -n "$APP" --query defaultHostName -o tsv)"
log "done. Device base URL: $BASE  (IoT Hub: $HUB_HOST)"
echo "$BASE"
