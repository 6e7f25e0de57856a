"""Who may touch what in one deployment's Redis: an ACL user per service.

Every key and pub/sub channel of a deployment starts with its namespace (`JOBS_NAMESPACE`, see
iris_shared.jobs and iris_shared.feedback); each service's user may touch only the keys its
code uses, with the commands that code sends, and the default user is off (nobody can be it;
Redis alone uses it, to replay its append-only file). So a predictor
that anyone could talk to still cannot queue a job, read a job record or change a label, and
the gateway can read the answers kept for feedback but never write one.

    predictor   kept answers and shadow counts (read and write)
    gateway     jobs, the broker's keys (to queue), promotion lock, feedback; answers read only
    trainer     jobs, the broker's keys and channels, feedback (add-feedback), shadow counts
    flower      the broker's keys and channels (task events, inspect)

Celery's users may use every channel: Redis compares a pattern subscription with the allowed
patterns literally, and kombu's patterns depend on the database number and the worker's
options. Channels hold no data; a deployment's Redis serves that deployment only.
    exporter    sizes of the queue and of the pending jobs, server INFO; nothing else
    admin       everything, for operators (redis-cli); no service uses it

`acl_file` writes the users in Redis's ACL file format, with passwords as SHA-256 hashes, so
the file reveals no password. Compose and Kubernetes give it to redis-server (`--aclfile`):

    python -m iris_shared.redis_acl --namespace iris --passwords DIR > users.acl

where DIR holds one file per user, named after it, with its password.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from iris_shared.feedback import FeedbackKeys
from iris_shared.jobs import JobKeys

USERS: Final = ("predictor", "gateway", "trainer", "flower", "exporter", "admin")

# What a client library sends on its own: AUTH, HELLO, PING, CLIENT SETINFO, SELECT.
_CONNECTION: Final = "+@connection +select"
# What the services' own code sends (EVALSHA for their scripts), minus the admin commands.
_SERVICE: Final = f"{_CONNECTION} +@read +@write +@scripting +@transaction +time -@dangerous"
# Celery's workers and Flower block on the queue and subscribe to events and replies.
_CELERY: Final = f"{_SERVICE} +@blocking +@pubsub"
# redis_exporter: server facts and the sizes of the keys it is told to check.
_EXPORTER: Final = (
    f"{_CONNECTION} +info +config|get +client|list +dbsize +latency|latest +latency|histogram "
    "+slowlog|get +slowlog|len +memory|usage +type +exists +llen +scard +zcard +hlen +strlen "
    "+xlen +pfcount"
)


def user_rules(namespace: str) -> dict[str, str]:
    """Each service user's permissions (keys, channels, commands) in ACL syntax."""
    jobs, feedback = JobKeys(namespace), FeedbackKeys(namespace)
    answers = f"~{feedback.prediction_prefix}* ~{feedback.predictions_index} "
    answers += f"~{feedback.predictions_index}:*"
    shadow = f"~{feedback.shadow_counts('*')}"
    labels = f"~{feedback.namespace}:feedback:*"
    job_keys = f"~{jobs.record('*')} ~{jobs.index} ~{jobs.index}:* ~{namespace}:idempotency:*"
    broker = f"~{jobs.broker_prefix}*"
    lock = f"~{namespace}:promotion-lock"
    read_only_answers = " ".join(f"%R{pattern}" for pattern in answers.split())
    return {
        "predictor": f"{answers} {shadow} resetchannels {_SERVICE}",
        "gateway": f"{job_keys} {broker} {lock} {labels} {read_only_answers} "
        f"resetchannels {_SERVICE}",
        "trainer": f"{job_keys} {broker} {labels} {shadow} allchannels {_CELERY}",
        "flower": f"{broker} allchannels {_CELERY}",
        "exporter": f"%R~{jobs.broker_prefix}* %R~{jobs.index}:* resetchannels {_EXPORTER}",
        "admin": "~* &* +@all",
    }


def acl_file(namespace: str, passwords: Mapping[str, str]) -> str:
    """The ACL file of a deployment: the default user off, and one user per service that has
    a password in `passwords` (user name -> password)."""
    # Off: no connection can be the default user. But Redis replays its append-only file as
    # that user and checks every EXEC against its permissions (redis/redis#14541, fixed only
    # in later releases): refused everything, it drops each transaction and script a service
    # wrote, and a restart loses the jobs' ends. Nobody can log in as it, so its permissions
    # open no door.
    lines = ["user default off resetpass ~* &* +@all"]
    for user, rules in user_rules(namespace).items():
        password = passwords.get(user)
        if password:
            digest = hashlib.sha256(password.encode()).hexdigest()
            lines.append(f"user {user} on #{digest} resetkeys -@all {rules}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Print a deployment's Redis ACL file.")
    parser.add_argument("--namespace", required=True, help="JOBS_NAMESPACE of the deployment.")
    parser.add_argument(
        "--passwords",
        type=Path,
        required=True,
        help="Folder with one file per user (predictor, gateway, ...) holding its password.",
    )
    arguments = parser.parse_args()
    passwords = {
        user: (arguments.passwords / user).read_text().strip()
        for user in USERS
        if (arguments.passwords / user).is_file()
    }
    print(acl_file(arguments.namespace, passwords), end="")


if __name__ == "__main__":
    main()
