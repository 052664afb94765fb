#!/usr/bin/env bash
# Where the wall clock at 64 keep-alive connections goes: CPU time, context switches and system
# calls per request of the daemon and of the bare hyper server, each under `wrk -t2 -c64`, read
# with `perf stat` on the server's process only (2 rounds, the servers alternating).
#
#   xtask/callgrind/wallclock-perf.sh DAEMON_BIN XTASK_BIN
#
# DAEMON_BIN: a release metadataproxy; XTASK_BIN: a release xtask (its bench-bare-server).
# Needs perf, wrk, curl and moto_server (MOTO_SERVER, default .venv/bin/moto_server) with boto3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
daemon=$1; xtask=$2
moto_bin=${MOTO_SERVER:-$here/../../.venv/bin/moto_server}
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
path=/latest/meta-data/iam/security-credentials/web
"$moto_bin" -p 46400 > "$work/moto.log" 2>&1 &
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:46400/ && break; sleep 0.2; done
"$(dirname "$moto_bin")/python" -c "
import boto3
boto3.client('iam', endpoint_url='http://127.0.0.1:46400', region_name='us-east-1',
  aws_access_key_id='t', aws_secret_access_key='t').create_role(RoleName='web', AssumeRolePolicyDocument='{}')"
echo '{"127.0.0.1": "web"}' > "$work/map.json"
env -i PATH="$PATH" HOME="$HOME" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  AWS_ENDPOINT_URL_STS=http://127.0.0.1:46400 AWS_ENDPOINT_URL_IAM=http://127.0.0.1:46400 \
  AWS_EC2_METADATA_DISABLED=true PORT=46401 HOST=127.0.0.1 EBPF=off DOCKER_URL=off MOCK_API=true \
  ROLE_MAPPING_FILE="$work/map.json" DEFAULT_ACCOUNT_ID=123456789012 ADMIN_LISTEN=off CONTAINERD=off \
  LOG_LEVEL=warn "$daemon" > "$work/daemon.log" 2>&1 &
daemon_pid=$!
# The bare server answers the daemon's own credentials document, byte for byte.
sleep 3
curl -sf -o "$work/body.json" "http://127.0.0.1:46401$path"
"$xtask" bench-bare-server 127.0.0.1:46402 "$work/body.json" > "$work/bare.log" 2>&1 &
bare_pid=$!
sleep 1
for round in 1 2; do
  for who in "daemon:$daemon_pid:46401" "bare:$bare_pid:46402"; do
    IFS=: read -r name pid port <<<"$who"
    wrk -t2 -c64 -d2s "http://127.0.0.1:$port$path" > /dev/null
    perf stat -x, -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter \
      -p "$pid" -o "$work/perf.txt" -- sleep 5 &
    perf_pid=$!
    rate=$(wrk -t2 -c64 -d5s "http://127.0.0.1:$port$path" | awk '/Requests\/sec/ {print $2}')
    wait $perf_pid
    echo "$name round $round: $rate req/s"
    grep -v '^#' "$work/perf.txt" | grep -v '^$' |
      awk -F, -v r="$rate" '{printf "  %-24s %12s  per request %.4f\n", $3, $1, $1 / (r * 5)}'
  done
done
