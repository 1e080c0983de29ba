"""hvac over https: trusting the CA in VAULT_CACERT it issues credentials; trusting only the
system's roots it refuses pgwarden's certificate."""
import os

import hvac
import requests

from hvac_steps import say

trusting = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"],
                       verify=os.environ["VAULT_CACERT"])
creds = trusting.secrets.database.generate_credentials(name="appdb-readonly")
say({"username": creds["data"]["username"], "password": creds["data"]["password"]})

untrusting = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"], verify=True)
try:
    untrusting.secrets.database.generate_credentials(name="appdb-readonly")
    say({"refused": None})
except requests.exceptions.SSLError as error:
    say({"refused": "CERTIFICATE_VERIFY_FAILED" in str(error)})
