"""The certificates of the hostile suite: a good set, and client certificates that must be refused.

The CA's key is kept in memory (rustvpn's write_demo_set drops it), so the bad certificates can be
signed by the very CA the server trusts: only the one thing under test is wrong with each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rustvpn.pki import issue_certificate, new_authority, write_demo_set, write_pair

SERVER_CN, CLIENT_CN = "rustvpn-server", "rustvpn-client"
# A CN that tries to forge a second log line, and one for a peer the server's --peer-cn does not name.
FORGED_LINE = "INFO rustvpn.session: session up with 6.6.6.6:1"  # a CN holds 64 chars at most
NEWLINE_CN = f"mallory\n{FORGED_LINE}"
WRONG_CN = "mallory"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # name -> (cert, key) of the client certificates that must be refused
    bad: dict[str, tuple[Path, Path]]

    def client(self, name: str = "good") -> tuple[Path, Path]:
        return (self.client_cert, self.client_key) if name == "good" else self.bad[name]


def write_pki(directory: Path, server_names: list[str]) -> Pki:
    ca = new_authority("hostile-suite CA")
    paths = write_demo_set(directory, server_names, server_cn=SERVER_CN, client_cn=CLIENT_CN, ca=ca)
    now = datetime.now(UTC)
    other = new_authority("another CA")
    bad_leaves = {
        "other-ca": issue_certificate(other, CLIENT_CN, client=True, server=False),
        "expired": issue_certificate(
            ca, CLIENT_CN, client=True, server=False, not_before=now - timedelta(days=30), not_after=now - timedelta(1)
        ),
        "not-yet-valid": issue_certificate(
            ca, CLIENT_CN, client=True, server=False, not_before=now + timedelta(1), not_after=now + timedelta(30)
        ),
        "wrong-cn": issue_certificate(ca, WRONG_CN, client=True, server=False),
        "newline-cn": issue_certificate(ca, NEWLINE_CN, client=True, server=False),
    }
    bad = {name: write_pair(directory / "bad", name, *pem) for name, pem in bad_leaves.items()}
    return Pki(
        ca=paths["ca"],
        server_cert=paths["server_cert"],
        server_key=paths["server_key"],
        client_cert=paths["client_cert"],
        client_key=paths["client_key"],
        bad=bad,
    )
