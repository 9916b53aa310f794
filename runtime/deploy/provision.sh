#!/usr/bin/env bash
# Provision a Debian-based board (BeagleBone, Raspberry Pi, any Linux box) as a thingssim
# worker: a venv with the runtime (paho-mqtt only, no numpy/pandas/SimPy), a config,
# a systemd unit.  Run as root on the board:
#
#   sudo bash provision.sh --broker mqtt://192.168.1.10:1883 --id bbb-1 \
#        --device beaglebone-black --username bbb-1 --password secret [--source DIR|--wheel F]
#        [--snapshot-key-file F] [--migrate-peers ID,ID] [--no-snapshot-key]
#   sudo bash provision.sh --broker-setup      # on the broker machine: mosquitto + ACLs
#   bash provision.sh ... --dry-run            # print what would be done
#
# Snapshot signing is on by default: the worker gets the fleet's shared snapshot_key from
# --snapshot-key-file (default /etc/thingssim/fleet.key).  If that file does not exist, a
# new random key is written there (mode 0600): copy it to every other board before
# provisioning it, since workers with different keys refuse each other's migrations.
# --no-snapshot-key turns signing off; the worker then accepts migrations only from
# --migrate-peers (none given: from no one).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
broker="" id="" device="generic" username="" password="" source="" wheel=""
memory=1000 dry=0 broker_setup=0
signing=1 key_file=/etc/thingssim/fleet.key peers="" peers_given=0
usage() { sed -n '2,19p' "$0"; exit 2; }
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
    --snapshot-key-file) key_file="$2"; shift 2 ;;
    --no-snapshot-key) signing=0; shift ;;
    --migrate-peers) peers="$2"; peers_given=1; shift 2 ;;
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
IFS=, read -r -a peer_list <<< "$peers"
for peer in ${peer_list[@]+"${peer_list[@]}"}; do
  case "$peer" in ""|*/*|*+*|*#*|*\ *)
    echo "provision.sh: --migrate-peers is a comma-separated list of engine ids (no / + # or spaces): '$peers'" >&2; exit 2 ;;
  esac
done
key="" new_key=0
if [ "$signing" = 1 ]; then
  if [ -e "$key_file" ]; then
    [ -r "$key_file" ] || { echo "provision.sh: cannot read the snapshot key file $key_file" >&2; exit 1; }
    key="$(tr -d ' \t\r\n' < "$key_file")"
    if [ "${#key}" -lt 32 ]; then
      echo "provision.sh: $key_file: a snapshot key is one line of at least 32 characters (e.g. 64 hex digits from /dev/urandom)" >&2; exit 1
    fi
  else
    key="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"  # 256 random bits, in hex
    new_key=1
  fi
else
  echo "provision.sh: --no-snapshot-key: snapshots are not signed, so this worker accepts migrations only from --migrate-peers (${peers:-none: it refuses every migration})" >&2
fi
if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then echo "provision.sh: run as root" >&2; exit 1; fi

run apt-get install -y python3 python3-venv
id -u thingssim >/dev/null 2>&1 || run useradd --system --home /opt/thingssim --shell /usr/sbin/nologin thingssim
run python3 -m venv /opt/thingssim
if [ -n "$wheel" ]; then pkg="$wheel"; elif [ -n "$source" ]; then pkg="$source"; else pkg="thingssim"; fi
run /opt/thingssim/bin/pip install --upgrade "$pkg"
run install -d -m 0750 -o root -g thingssim /etc/thingssim
if [ "$new_key" = 1 ]; then
  if [ "$dry" = 1 ]; then echo "+ write $key_file (a new fleet snapshot key, mode 0600)"; else
    (umask 077; printf '%s\n' "$key" > "$key_file")
  fi
fi
# the secrets (password, snapshot_key) reach python3 on stdin, not on its command line
config=$(printf '%s\n%s\n' "$password" "$key" | python3 -c 'import json, sys
b, i, d, m, u, signing, peers_given, peers = sys.argv[1:]
p, k = sys.stdin.read().split("\n")[:2]
config = {"pubsub_url": b, "id": i, "device": d, "memory_limit": float(m),
          "keepalive": 10, "username": u or None, "password": p or None,
          "on_shutdown": "migrate", "state_dir": "/var/lib/thingssim"}
if signing == "1":
    config["snapshot_key"] = k
if peers_given == "1" or signing != "1":
    config["migrate_peers"] = [x for x in peers.split(",") if x]
print(json.dumps(config, indent=2))' "$broker" "$id" "$device" "$memory" "$username" "$signing" "$peers_given" "$peers")
if [ "$dry" = 1 ]; then echo "+ write /etc/thingssim/worker.json (mode 0600, owner thingssim): $config"; else
  (umask 077; printf '%s\n' "$config" > /etc/thingssim/worker.json)
  chown thingssim:thingssim /etc/thingssim/worker.json; chmod 0600 /etc/thingssim/worker.json
fi
run install -m 0644 "$here/thingssim-worker.service" /etc/systemd/system/thingssim-worker.service
run systemctl daemon-reload
run systemctl enable --now thingssim-worker
echo "worker $id provisioned; logs: journalctl -u thingssim-worker -f"
if [ "$new_key" = 1 ] && [ "$dry" = 0 ]; then
  echo "NEW fleet snapshot key in $key_file: copy that file (mode 0600) to every other board before provisioning it, at the same path or with --snapshot-key-file; workers with different keys refuse each other's migrations"
fi
