"""rustvpn: a point-to-point VPN over QUIC or TLS/TCP, wire-compatible with rust-vpn."""

__version__ = "0.1.0"

# The build id sent in the config exchange. The reference peer sends its git commit; ours is fixed
# per release and can be overridden (--build-id) so a deployment can match any peer.
DEFAULT_BUILD_ID = f"rustvpn-{__version__}"
