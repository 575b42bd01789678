#!/bin/sh
# Install the system tools the labs use, when missing.
# Debian/Ubuntu as root: apt-get installs them. Elsewhere: say what is missing and how to get it.
set -eu

# command:debian-package pairs; the command tells whether the package is there.
NEEDS="ip:iproute2 nft:nftables tcpdump:tcpdump ethtool:ethtool nginx:nginx-light haproxy:haproxy wrk:wrk curl:curl docker-compose:docker-compose"

missing_pkgs=""
missing_cmds=""
for pair in $NEEDS; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
        missing_pkgs="$missing_pkgs $pkg"
        missing_cmds="$missing_cmds $cmd"
    fi
done

[ -z "$missing_pkgs" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing system packages:$missing_pkgs"
    # Packages such as nginx and haproxy start their service on install; a lab
    # machine wants them stopped (lbkit starts its own instances), so forbid
    # service starts for the duration of the install (policy-rc.d, exit 101).
    restore=""
    if [ -e /usr/sbin/policy-rc.d ]; then
        cp -p /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.lbkit-saved
        restore=1
    fi
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    status=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing_pkgs
    } >/tmp/lbkit-system-deps.log 2>&1 || status=$?
    if [ -n "$restore" ]; then
        mv /usr/sbin/policy-rc.d.lbkit-saved /usr/sbin/policy-rc.d
    else
        rm -f /usr/sbin/policy-rc.d
    fi
    if [ "$status" != 0 ]; then
        tail -n 20 /tmp/lbkit-system-deps.log >&2
        echo "system-deps: apt-get failed (exit $status); full log in /tmp/lbkit-system-deps.log" >&2
        exit "$status"
    fi
    echo "==> system packages installed"
    exit 0
fi

echo "system-deps: missing commands:$missing_cmds"
echo "  The course and the 'local' lab run without them; the netns lab and the"
echo "  nginx/HAProxy engines need them. To install:"
echo "    Debian/Ubuntu: sudo apt-get install$missing_pkgs"
echo "    macOS:         brew install nginx haproxy wrk curl (the netns lab needs Linux)"
exit 0
