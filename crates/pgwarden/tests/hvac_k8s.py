"""Logs in to pgwarden with hvac's Kubernetes auth method, then generates, renews and revokes
credentials with the returned token. Prints one JSON line per step; waits for a line on stdin
after issuing credentials."""
import json
import os
import sys

import hvac


def say(obj):
    print(json.dumps(obj), flush=True)


client = hvac.Client(url=os.environ["VAULT_ADDR"])
login = client.auth.kubernetes.login(role="team-a", jwt=os.environ["SA_JWT"])
assert client.token == login["auth"]["client_token"], "hvac did not adopt the login token"
assert client.is_authenticated()

creds = client.secrets.database.generate_credentials(name="appdb-user")
say({
    "login_metadata": login["auth"]["metadata"],
    "lease_id": creds["lease_id"],
    "lease_duration": creds["lease_duration"],
    "username": creds["data"]["username"],
    "password": creds["data"]["password"],
})
sys.stdin.readline()

renewed = client.sys.renew_lease(lease_id=creds["lease_id"], increment=3600)
lookup = client.sys.read_lease(lease_id=creds["lease_id"])
say({"renewed_duration": renewed["lease_duration"], "warnings": renewed["warnings"], "lookup_id": lookup["data"]["id"]})

response = client.sys.revoke_lease(lease_id=creds["lease_id"])
say({"revoke_status": response.status_code})
