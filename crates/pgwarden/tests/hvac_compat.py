"""Drives pgwarden with hvac, a real Vault client, through its own methods only: configure a
connection and a role with the root token, generate credentials, renew and revoke them; then
define a static role, read its password, rotate it and delete the role."""
import os
import sys

import hvac

from hvac_steps import issued, renew_and_revoke, say

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
issued(creds, role_default_ttl=role["data"]["default_ttl"])
renew_and_revoke(client, creds["lease_id"])

# Static roles: an existing user whose password pgwarden owns.
client.secrets.database.create_static_role(
    name="hvac-static",
    db_name="appdb",
    username=os.environ["STATIC_USER"],
    rotation_statements=["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}';"],
    rotation_period=3600,
)
static_role = client.secrets.database.read_static_role(name="hvac-static")["data"]
listed = client.secrets.database.list_static_roles()["data"]["keys"]
first = client.secrets.database.get_static_credentials(name="hvac-static")["data"]
say({
    "username": first["username"],
    "password": first["password"],
    "ttl": first["ttl"],
    "rotation_period": static_role["rotation_period"],
    "last_vault_rotation": first["last_vault_rotation"],
    "keys": listed,
})
sys.stdin.readline()
client.secrets.database.rotate_static_role_credentials(name="hvac-static")
second = client.secrets.database.get_static_credentials(name="hvac-static")["data"]
say({"password": second["password"]})
sys.stdin.readline()
response = client.secrets.database.delete_static_role(name="hvac-static")
say({"delete_status": response.status_code})

# Root rotation: the administrator's new password is pgwarden's alone; issuing still works.
client.secrets.database.rotate_root_credentials(name="appdb")
creds = client.secrets.database.generate_credentials(name="hvac-reader")
say({"username": creds["data"]["username"], "password": creds["data"]["password"]})
