"""Steps shared by the hvac compatibility scripts: one JSON line per step on stdout."""
import json
import sys


def say(obj):
    print(json.dumps(obj), flush=True)


def issued(creds, **extra):
    """Reports issued credentials, then waits for the test to log in with them."""
    say({
        "lease_id": creds["lease_id"],
        "lease_duration": creds["lease_duration"],
        "username": creds["data"]["username"],
        "password": creds["data"]["password"],
        **extra,
    })
    sys.stdin.readline()


def renew_and_revoke(client, lease_id):
    """Renews past the max TTL, looks the lease up, revokes it; reports each result."""
    renewed = client.sys.renew_lease(lease_id=lease_id, increment=3600)
    lookup = client.sys.read_lease(lease_id=lease_id)
    say({"renewed_duration": renewed["lease_duration"], "warnings": renewed["warnings"], "lookup_id": lookup["data"]["id"]})
    response = client.sys.revoke_lease(lease_id=lease_id)
    say({"revoke_status": response.status_code})
