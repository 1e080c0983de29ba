#!/usr/bin/env python3
"""Writes rds_tokens.json: RDS IAM auth tokens made by botocore's generate_db_auth_token.

The clock is frozen by patching botocore.auth.get_current_datetime (the one clock SigV4 reads),
so every token is reproducible; the script checks that the frozen time reached the token.
Run it in a venv with botocore installed:

    python3 -m venv /tmp/aws-venv && /tmp/aws-venv/bin/pip install botocore
    /tmp/aws-venv/bin/python make_vectors.py > rds_tokens.json
"""

import datetime
import json
import sys
from unittest import mock

import botocore
import botocore.session

# Example credentials in the shape AWS documents; none of them is real.
AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
# A session token with the characters that need percent-encoding (+ / =).
TOKEN = (
    "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+abc/def+ghi="
    "FwoGZXIvYXdzEBYaDH+/=="
)

CASES = [
    # name, host, port, user, region, session token, signing time (UTC)
    ("plain", "mydb.123456789012.us-east-1.rds.amazonaws.com", 5432, "app_user",
     "us-east-1", None, "2026-11-25T12:00:00Z"),
    ("session-token", "mydb.123456789012.us-east-1.rds.amazonaws.com", 5432, "app_user",
     "us-east-1", TOKEN, "2026-11-25T12:00:00Z"),
    ("user-needs-encoding", "mydb.cluster-abc.eu-west-1.rds.amazonaws.com", 5432,
     "user@name/with+chars ü", "eu-west-1", None, "2026-01-02T03:04:05Z"),
    ("user-needs-encoding-with-token", "mydb.cluster-abc.eu-west-1.rds.amazonaws.com", 5432,
     "a=b&c;d%e~f-g_h.i*j'k(l)m!n", "eu-west-1", TOKEN, "2026-01-02T03:04:05Z"),
    ("non-default-port", "proxy.proxy-xyz.ap-southeast-2.rds.amazonaws.com", 6543,
     "reporting", "ap-southeast-2", None, "2025-06-30T23:59:59Z"),
    ("port-443-not-signed-in-host", "db.example.internal", 443, "svc",
     "us-west-2", None, "2026-02-28T00:00:00Z"),
    ("china-region", "mydb.abc.cn-north-1.rds.amazonaws.com.cn", 3306, "IAM_User",
     "cn-north-1", TOKEN, "2024-12-31T23:59:59Z"),
    ("govcloud-region", "mydb.abc.us-gov-west-1.rds.amazonaws.com", 5432, "postgres",
     "us-gov-west-1", None, "2027-07-04T16:20:00Z"),
    ("mixed-case-host", "MyDB.Cluster-ABC.us-east-2.rds.amazonaws.com", 5432, "app",
     "us-east-2", None, "2026-03-15T08:30:00Z"),
    ("mixed-case-host-port-443", "MyDB.Cluster-ABC.us-east-2.rds.amazonaws.com", 443, "app",
     "us-east-2", TOKEN, "2026-03-15T08:30:00Z"),
    ("ip-address-host", "10.0.12.34", 5432, "app", "eu-central-1", None,
     "2026-11-25T12:00:00Z"),
]


def token(host, port, user, region, session_token, when):
    session = botocore.session.get_session()
    session.set_credentials(AKID, SECRET, session_token)
    client = session.create_client("rds", region_name=region)
    frozen = datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=frozen):
        made = client.generate_db_auth_token(
            DBHostname=host, Port=port, DBUsername=user, Region=region
        )
    stamp = frozen.strftime("X-Amz-Date=%Y%m%dT%H%M%SZ&")
    if stamp not in made:
        raise SystemExit(f"the clock was not frozen: {stamp} missing from {made}")
    return made


def main():
    vectors = []
    for name, host, port, user, region, session_token, when in CASES:
        vectors.append(
            {
                "name": name,
                "hostname": host,
                "port": port,
                "username": user,
                "region": region,
                "access_key_id": AKID,
                "secret_access_key": SECRET,
                "session_token": session_token,
                "signing_time": when,
                "token": token(host, port, user, region, session_token, when),
            }
        )
    json.dump(
        {"generator": f"botocore {botocore.__version__}", "vectors": vectors},
        sys.stdout,
        indent=2,
        ensure_ascii=False,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
