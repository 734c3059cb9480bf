#!/usr/bin/env bash
# Installs what rustvpn needs on this machine: Debian packages (when missing) and a virtual
# environment in .venv with the package (and, with --test, its test tools). Needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# iproute2/iputils-ping: namespaces and ping; libsystemd-dev, pkg-config, gcc, python3-dev: to build
# systemd-python; iperf3: throughput checks.
packages=(iproute2 iputils-ping iperf3 libsystemd-dev pkg-config gcc python3-dev python3-venv)
# >>> systemd host tests (tests/systemd, tests/ansible): systemd-container gives systemd-nspawn,
# debootstrap builds the Debian root filesystem the test hosts boot from, openssh-client is how the
# Ansible controller reaches them. Only needed for the `systemd` and `ansible` marked tests.
((want_test)) && packages+=(systemd-container debootstrap openssh-client)
# <<< systemd host tests
# >>> benchmark (bench/run.py): openvpn is the reference tunnel it compares rustvpn with (iperf3,
# above, measures throughput). bench/run.py skips the OpenVPN rows when it is missing.
((want_test)) && packages+=(openvpn)
# <<< benchmark
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own python3 (the one python3-dev and python3-venv above are for, and the one the Ansible
# role deploys on), built with PGO and LTO, before whatever `python3` is first on the PATH: a
# self-built interpreter without them (pyenv's default build) made an idle ping 0.08 ms slower
# through TCP mode and 0.17 ms through QUIC mode. PYTHON=... chooses another.
python=${PYTHON:-$([[ -x /usr/bin/python3 ]] && echo /usr/bin/python3 || echo python3)}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ((want_test)); then
    .venv/bin/python -m pip install -q -e '.[test]'
else
    .venv/bin/python -m pip install -q -e .
fi
