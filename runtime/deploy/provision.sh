#!/usr/bin/env bash
# Provision a Debian-based board (BeagleBone, Raspberry Pi, any Linux box) as a thingssim
# worker: a venv with the runtime (paho-mqtt only, no numpy/pandas/SimPy), a config,
# a systemd unit.  Run as root on the board:
#
#   sudo bash provision.sh --broker mqtt://192.168.1.10:1883 --id bbb-1 \
#        --device beaglebone-black --username bbb-1 --password secret [--source DIR|--wheel F]
#   sudo bash provision.sh --broker-setup      # on the broker machine: mosquitto + ACLs
#   bash provision.sh ... --dry-run            # print what would be done
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
broker="" id="" device="generic" username="" password="" source="" wheel=""
memory=1000 dry=0 broker_setup=0
usage() { sed -n '2,12p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --broker) broker="$2"; shift 2 ;;
    --id) id="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --username) username="$2"; shift 2 ;;
    --password) password="$2"; shift 2 ;;
    --memory-limit) memory="$2"; shift 2 ;;
    --source) source="$2"; shift 2 ;;
    --wheel) wheel="$2"; shift 2 ;;
    --broker-setup) broker_setup=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage ;;
    *) echo "provision.sh: unknown option $1" >&2; usage ;;
  esac
done

run() { if [ "$dry" = 1 ]; then echo "+ $*"; else "$@"; fi; }

if [ "$broker_setup" = 1 ]; then
  run apt-get install -y mosquitto mosquitto-clients
  run install -m 0644 "$here/mosquitto-thingssim.conf" /etc/mosquitto/conf.d/thingssim.conf
  run install -m 0644 "$here/mosquitto-thingssim.acl" /etc/mosquitto/thingssim.acl
  run touch /etc/mosquitto/thingssim.passwd
  run chown mosquitto: /etc/mosquitto/thingssim.passwd
  echo "now add users: mosquitto_passwd /etc/mosquitto/thingssim.passwd dispatcher (and one per worker id), then: systemctl restart mosquitto"
  exit 0
fi

[ -n "$broker" ] && [ -n "$id" ] || { echo "provision.sh: --broker and --id are required" >&2; usage; }
case "$id" in */*|*+*|*#*) echo "provision.sh: --id must not contain / + #" >&2; exit 2 ;; esac
if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then echo "provision.sh: run as root" >&2; exit 1; fi

run apt-get install -y python3 python3-venv
id -u thingssim >/dev/null 2>&1 || run useradd --system --home /opt/thingssim --shell /usr/sbin/nologin thingssim
run python3 -m venv /opt/thingssim
if [ -n "$wheel" ]; then pkg="$wheel"; elif [ -n "$source" ]; then pkg="$source"; else pkg="thingssim"; fi
run /opt/thingssim/bin/pip install --upgrade "$pkg"
run install -d -m 0750 -o root -g thingssim /etc/thingssim
config=$(python3 -c 'import json, sys
b, i, d, m, u, p = sys.argv[1:]
print(json.dumps({"pubsub_url": b, "id": i, "device": d, "memory_limit": float(m),
                  "keepalive": 10, "username": u or None, "password": p or None,
                  "on_shutdown": "migrate"}, indent=2))' "$broker" "$id" "$device" "$memory" "$username" "$password")
if [ "$dry" = 1 ]; then echo "+ write /etc/thingssim/worker.json: $config"; else
  printf '%s\n' "$config" > /etc/thingssim/worker.json
  chown root:thingssim /etc/thingssim/worker.json; chmod 0640 /etc/thingssim/worker.json
fi
run install -m 0644 "$here/thingssim-worker.service" /etc/systemd/system/thingssim-worker.service
run systemctl daemon-reload
run systemctl enable --now thingssim-worker
echo "worker $id provisioned; logs: journalctl -u thingssim-worker -f"
