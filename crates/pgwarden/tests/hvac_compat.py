"""Drives pgwarden with hvac, a real Vault client, through its own methods only.

Prints one JSON line per step; waits for a line on stdin after issuing credentials so the
Rust test can log in with them before they are renewed and revoked.
"""
import json
import os
import sys

import hvac


def say(obj):
    print(json.dumps(obj), flush=True)


client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
assert client.is_authenticated(), "hvac could not authenticate"

client.secrets.database.configure(
    name="appdb",
    plugin_name="postgresql-database-plugin",
    allowed_roles=["hvac-*"],
    connection_url=os.environ["APPDB_URL"],
    username=os.environ["APPDB_ADMIN"],
    password=os.environ["APPDB_ADMIN_PASSWORD"],
)
client.secrets.database.create_role(
    name="hvac-reader",
    db_name="appdb",
    creation_statements=[
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";",
    ],
    default_ttl="1m",
    max_ttl="2m",
)
role = client.secrets.database.read_role(name="hvac-reader")
creds = client.secrets.database.generate_credentials(name="hvac-reader")
say({
    "role_default_ttl": role["data"]["default_ttl"],
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
