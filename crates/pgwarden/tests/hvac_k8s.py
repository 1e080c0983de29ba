"""Logs in to pgwarden with hvac's Kubernetes auth method, then generates, renews and revokes
credentials with the returned token."""
import os

import hvac

from hvac_steps import issued, renew_and_revoke

client = hvac.Client(url=os.environ["VAULT_ADDR"])
login = client.auth.kubernetes.login(role="team-a", jwt=os.environ["SA_JWT"])
assert client.token == login["auth"]["client_token"], "hvac did not adopt the login token"
assert client.is_authenticated()

creds = client.secrets.database.generate_credentials(name="appdb-user")
issued(creds, login_metadata=login["auth"]["metadata"])
renew_and_revoke(client, creds["lease_id"])
