#!/usr/bin/env bash
# rustvpn demonstration, from nothing: installs what it needs, makes throwaway certificates,
# builds two network namespaces joined by a veth pair, runs a TCP-mode tunnel between them,
# pings across it (IPv4 and IPv6), prints what it saw, and cleans everything up.
# Needs root (namespaces, TUN devices). Touches nothing outside the namespaces it creates.
set -euo pipefail
cd "$(dirname "$0")"
[[ $(id -u) == 0 ]] || { echo "demo.sh: run as root (it creates network namespaces and TUN devices)" >&2; exit 1; }

bash tests/bootstrap.sh
rustvpn=$PWD/.venv/bin/rustvpn

tag=$$
client=rvdemo-c-$tag server=rvdemo-s-$tag
work=$(mktemp -d /tmp/rustvpn-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$client" 2>/dev/null || true
    ip netns del "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "two hosts: namespaces $client (198.18.0.1, fd00:18::1) and $server (198.18.0.2, fd00:18::2)"
ip netns add "$client"; ip netns add "$server"
ip link add "rvd$tag" type veth peer name "rve$tag"
ip link set "rvd$tag" netns "$client"; ip link set "rve$tag" netns "$server"
ip -n "$client" addr add 198.18.0.1/24 dev "rvd$tag"; ip -n "$client" addr add fd00:18::1/64 dev "rvd$tag" nodad
ip -n "$server" addr add 198.18.0.2/24 dev "rve$tag"; ip -n "$server" addr add fd00:18::2/64 dev "rve$tag" nodad
for ns in "$client" "$server"; do ip -n "$ns" link set lo up; done
ip -n "$client" link set "rvd$tag" up; ip -n "$server" link set "rve$tag" up

say "throwaway certificates (CA, server for 198.18.0.2, client)"
"$rustvpn" certs --out "$work" --server-name 198.18.0.2 --server-name fd00:18::2
cd "$work"

say "tunnel: tcpserver in $server, tcpclient in $client"
ip netns exec "$server" "$rustvpn" tcpserver \
    --control-bind-address 0.0.0.0 --control-port 1107 --data-bind-address 0.0.0.0 --data-port 1108 \
    --device rustvpn --ca-bundle ca.pem --server-cert server.pem --server-key server.key \
    --ipv4 198.19.1.1/24 --ipv6 fd00:19::1/64 --route 192.0.2.0/24 --stream-count 5 --mtu 1500 \
    --status-socket "$work/run/server/status.sock" >server.log 2>&1 &
pids+=($!)
# The client once the server listens (started together, its first attempt would be refused and
# retried 2 s later).
for _ in $(seq 50); do grep -q "data plane listening" server.log 2>/dev/null && break; sleep 0.2; done
ip netns exec "$client" "$rustvpn" tcpclient \
    --server 198.18.0.2 --control-port 1107 --data-port 1108 \
    --device rustvpn --ca-bundle ca.pem --client-cert client.pem --client-key client.key \
    --ipv4 198.19.1.2/24 --ipv6 fd00:19::2/64 --route 192.0.2.0/24 --stream-count 5 --mtu 1500 \
    --status-socket "$work/run/client/status.sock" >client.log 2>&1 &
pids+=($!)

for _ in $(seq 100); do grep -q "session up" client.log 2>/dev/null && break; sleep 0.2; done
if ! grep -q "session up" client.log; then
    echo "demo.sh: the tunnel did not come up; logs follow" >&2
    cat server.log client.log >&2
    exit 1
fi

say "client side: device and routes"
ip -n "$client" -brief addr show rustvpn
ip -n "$client" route show dev rustvpn
ip -n "$client" -6 route show dev rustvpn

say "ping across the tunnel (IPv4 then IPv6)"
ip netns exec "$client" ping -c 3 -i 0.2 198.19.1.1
ip netns exec "$client" ping -c 3 -i 0.2 fd00:19::1

say "rustvpn status (both ends, read from their status sockets)"
"$rustvpn" status --runtime-dir "$work/run"

say "what the server logged"
cat server.log
say "what the client logged"
cat client.log

say "demo OK: a TLS tunnel carried IPv4 and IPv6 between two namespaces; cleaning up"
