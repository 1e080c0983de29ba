"""Drives pgwarden with hvac, a real Vault client, through its own methods only: configure a
connection and a role with the root token, generate credentials, renew and revoke them."""
import os

import hvac

from hvac_steps import issued, renew_and_revoke

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
