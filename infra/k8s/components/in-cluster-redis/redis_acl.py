"""Write the ACL file of the in-cluster Redis: the stack's users and KEDA's, passwords hashed.

The services' users and what each may touch come from iris_shared.redis_acl, as for compose:
this adds only the user KEDA's redis scaler logs in as. The scaler measures the queue with a
Lua script (EVAL of TYPE and LLEN on `listName`), so `keda` may run EVAL with those two
commands on the queue's key and nothing else: Redis checks the commands a script calls
against the caller's, and EVAL wants read-write access to the keys it names.

Runs in an init container of the Redis pod, in the gateway's image (it holds iris_shared):

    python redis_acl.py --namespace iris --passwords /run/secrets/redis-users > users.acl

where the folder holds one file per user (predictor, gateway, trainer, flower, exporter,
admin, keda) with its password; a user without a file is left out.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from iris_shared.jobs import JobKeys
from iris_shared.redis_acl import USERS, acl_file

KEDA_USER = "keda"


def keda_rules(namespace: str) -> str:
    keys = JobKeys(namespace)
    return f"~{keys.broker_prefix}{keys.queue} resetchannels +@connection +select +eval +type +llen"


def users_acl(namespace: str, passwords: dict[str, str]) -> str:
    text = acl_file(namespace, passwords)
    keda_password = passwords.get(KEDA_USER)
    if keda_password:
        digest = hashlib.sha256(keda_password.encode()).hexdigest()
        text += f"user {KEDA_USER} on #{digest} resetkeys -@all {keda_rules(namespace)}\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", required=True, help="JOBS_NAMESPACE of the deployment.")
    parser.add_argument("--passwords", type=Path, required=True, help="One file per user.")
    arguments = parser.parse_args()
    passwords = {
        user: (arguments.passwords / user).read_text().strip()
        for user in (*USERS, KEDA_USER)
        if (arguments.passwords / user).is_file()
    }
    print(users_acl(arguments.namespace, passwords), end="")


if __name__ == "__main__":
    main()
