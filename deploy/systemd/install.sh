#!/usr/bin/env bash
# Installs or upgrades the Proof-Messenger relay as a systemd service. Safe to run again: it
# creates what is missing, upgrades the package, and never overwrites an existing config, env
# file or key.
#
#   sudo deploy/systemd/install.sh                    # install this checkout
#   sudo deploy/systemd/install.sh 'proof-messenger==0.1.0'   # install a released version
#
# Then: edit /etc/proof-messenger/{relay.yaml,env}, and
#   systemctl enable --now proof-messenger
#
# Environment overrides (for packaging or staging): PYTHON, PREFIX, CONF_DIR, STATE_DIR,
# UNIT_DIR, SERVICE_USER, RELOAD_SYSTEMD=auto|no. The units name /opt/proof-messenger,
# /etc/proof-messenger and /var/lib/proof-messenger: use a drop-in if you move these.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"

PYTHON="${PYTHON:-python3}"
PREFIX="${PREFIX:-/opt/proof-messenger}"
CONF_DIR="${CONF_DIR:-/etc/proof-messenger}"
STATE_DIR="${STATE_DIR:-/var/lib/proof-messenger}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
SERVICE_USER="${SERVICE_USER:-proof-messenger}"
RELOAD_SYSTEMD="${RELOAD_SYSTEMD:-auto}"
package="${1:-$repo_root}"

log() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it creates a system user and writes to $PREFIX, $CONF_DIR, $UNIT_DIR)"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3.11 or newer"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is older than 3.11"
"$PYTHON" -c 'import venv' 2>/dev/null || die "the Python venv module is missing (Debian: apt-get install python3-venv)"

# 1. System user and group, no login, no home of its own.
if ! getent group "$SERVICE_USER" >/dev/null; then
    log "creating group $SERVICE_USER"
    groupadd --system "$SERVICE_USER"
fi
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    log "creating user $SERVICE_USER"
    useradd --system --gid "$SERVICE_USER" --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "Proof-Messenger relay" "$SERVICE_USER"
fi

# 2. Virtualenv owned by root: the service can run the code but not change it.
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    log "creating virtualenv $PREFIX/venv"
    install -d -m 0755 -o root -g root "$PREFIX"
    "$PYTHON" -m venv "$PREFIX/venv"
fi
log "installing $package"
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check --upgrade "$package"
"$PREFIX/venv/bin/proof-messenger" --help >/dev/null

# 3. Configuration: readable by the service, writable only by root; never overwritten.
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [ ! -e "$CONF_DIR/relay.yaml" ]; then
    log "writing $CONF_DIR/relay.yaml"
    install -m 0640 -o root -g "$SERVICE_USER" "$here/relay.yaml" "$CONF_DIR/relay.yaml"
fi
if [ ! -e "$CONF_DIR/env" ]; then
    log "writing $CONF_DIR/env"
    install -m 0640 -o root -g "$SERVICE_USER" "$here/env.example" "$CONF_DIR/env"
fi

# 4. State directory (systemd's StateDirectory= also creates it; this covers `db upgrade` runs
#    before the first start). Keys are generated here at first start and must be backed up.
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"

# 5. Units.
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$here/proof-messenger.service" "$UNIT_DIR/proof-messenger.service"
install -m 0644 "$here/proof-messenger@.service" "$UNIT_DIR/proof-messenger@.service"
if [ "$RELOAD_SYSTEMD" != no ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    if systemctl is-active --quiet proof-messenger; then
        log "proof-messenger is running: restart it to load the new version (migrations run at start)"
    fi
else
    log "systemd not reloaded; units installed to $UNIT_DIR"
fi

log "done. Next: edit $CONF_DIR/relay.yaml and $CONF_DIR/env, then: systemctl enable --now proof-messenger"
