#!/usr/bin/env bash
# Instructions per request under callgrind, the daemon and the bare hyper server with the same
# client: (total after N requests - total after 0) / N, so start-up cancels out.
#
#   xtask/callgrind/measure.sh DAEMON_BIN XTASK_BIN [N]
#
# DAEMON_BIN: a release metadataproxy; XTASK_BIN: a release xtask (its bench-bare-server).
# Needs valgrind, python3 and moto_server (MOTO_SERVER, default .venv/bin/moto_server) with
# boto3 beside it. Prints one line per (server, sequence): GET of cached credentials (IMDSv1)
# and the IMDSv2 PUT + GET sequence.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
daemon=$1; xtask=$2; n=${3:-10000}
moto_bin=${MOTO_SERVER:-$here/../../.venv/bin/moto_server}
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
path=/latest/meta-data/iam/security-credentials/web
moto_port=46300; port=46301
"$moto_bin" -p $moto_port > "$work/moto.log" 2>&1 &
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$moto_port/" && break; sleep 0.2; done
"$(dirname "$moto_bin")/python" -c "
import boto3
boto3.client('iam', endpoint_url='http://127.0.0.1:$moto_port', region_name='us-east-1',
  aws_access_key_id='t', aws_secret_access_key='t').create_role(RoleName='web', AssumeRolePolicyDocument='{}')"
echo '{"127.0.0.1": "web"}' > "$work/map.json"
printf '{\n  "Code" : "Success",\n  "LastUpdated" : "2026-12-05T22:30:00Z",\n  "Type" : "AWS-HMAC",\n  "AccessKeyId" : "ASIAEXAMPLEEXAMPLE12",\n  "SecretAccessKey" : "secretsecretsecretsecretsecretsecretsecr",\n  "Token" : "%s",\n  "Expiration" : "2026-12-05T23:30:00Z"\n}' "$(head -c 600 /dev/zero | tr '\0' 'T')" > "$work/body.json"

# Total instructions of SERVER (daemon|bare) after N sequences of MODE (get|v2).
total() {
  local server=$1 client=$2 count=$3 out="$work/cg.$1.$2.$3"
  if [ "$server" = daemon ]; then
    env -i PATH="$PATH" HOME="$HOME" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
      AWS_ENDPOINT_URL_STS=http://127.0.0.1:$moto_port AWS_ENDPOINT_URL_IAM=http://127.0.0.1:$moto_port \
      AWS_EC2_METADATA_DISABLED=true PORT=$port HOST=127.0.0.1 EBPF=off DOCKER_URL=off MOCK_API=true \
      ROLE_MAPPING_FILE="$work/map.json" DEFAULT_ACCOUNT_ID=123456789012 ADMIN_LISTEN=off CONTAINERD=off \
      LOG_LEVEL=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$daemon" > "$work/server.log" 2>&1 &
  else
    valgrind --tool=callgrind --callgrind-out-file="$out" "$xtask" bench-bare-server 127.0.0.1:$port \
      "$work/body.json" > "$work/server.log" 2>&1 &
  fi
  local pid=$!
  for _ in $(seq 1 300); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), timeout=0.2)" 2>/dev/null && break
    sleep 0.2
  done
  sleep 1
  python3 "$here/client.py" "$client" 127.0.0.1 $port $path 200 "$count"
  kill -TERM $pid; wait $pid 2>/dev/null || true
  awk '/^summary:/ {print $2}' "$out"
}

for client in get v2; do
  for server in bare daemon; do
    zero=$(total $server $client 0); many=$(total $server $client "$n")
    echo "$server $client $(( (many - zero) / n )) instructions per sequence"
  done
done
