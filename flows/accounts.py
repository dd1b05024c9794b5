"""Team mode's MLflow accounts: who may do what on a tracking server run with ``--app-name basic-auth``.

| account | experiment | registered model | why |
|---|---|---|---|
| ``approver`` | READ | MANAGE | moves the ``champion`` alias in the UI: that is the approval |
| ``retrain`` | EDIT | EDIT | the retrain flow: runs, their artifacts, versions with their tags, ``challenger`` |
| ``watcher`` | READ | EDIT | the approval watcher: downloads the approved model, tags ``serving.*`` |
| anyone else | READ | READ | the server's ``default_permission`` (infra/compose.yaml): sees, cannot approve |

MLflow grants per resource, not per call: the EDIT the watcher needs for its tags would also let it move an
alias (there is no finer grant), so the watcher's account is a service account nobody logs in with. Deleting an
alias takes MANAGE, which also manages the model's permissions: the watcher does not get it, so with these
accounts an approved version keeps ``challenger`` until the next version that passes the gate takes it.

The flows authenticate as their own account (``use_account``): retrain as ``retrain``, promote and rollback as
``watcher``. ``faceforge accounts`` runs ``provision`` as the server's admin (``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``). Each account's name and password come from the environment, never from a file
in the repository: ``FACEFORGE_MLFLOW_<ACCOUNT>_USERNAME`` (default ``faceforge-<account>``) and ``..._PASSWORD``, or
``..._PASSWORD_FILE`` naming a secret file (Docker and Kubernetes secrets). Running it again updates the
passwords and grants: it is how a password is rotated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GRANTS = {"approver": ("READ", "MANAGE"), "retrain": ("EDIT", "EDIT"), "watcher": ("READ", "EDIT")}


@dataclass(frozen=True)
class Account:
    role: str
    username: str
    password: str


def secret(name: str) -> str | None:
    """``NAME`` from the environment, else the contents of the file ``NAME_FILE`` names (trailing newline
    dropped), else None."""
    if os.environ.get(name):
        return os.environ[name]
    path = os.environ.get(f"{name}_FILE")
    return Path(path).read_text().rstrip("\n") if path else None


def account(role: str, service: str = "mlflow") -> Account | None:
    """``role``'s account of ``service`` (``mlflow``, or ``gallery``: flows/gallery.py) from the environment
    (``FACEFORGE_<SERVICE>_<ROLE>_*``), or None when its password is not there."""
    prefix = f"FACEFORGE_{service.upper()}_{role.upper()}"
    password = secret(f"{prefix}_PASSWORD")
    return Account(role, os.environ.get(f"{prefix}_USERNAME", f"faceforge-{role}"), password) if password else None


def use_account(role: str) -> str | None:
    """Authenticate this process's MLflow calls as ``role``'s account when the environment holds its password
    (a worker running both the retrain and the watcher flows holds both; each flow run takes its own);
    otherwise leave ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` as they are. Returns the account name used."""
    own = account(role)
    if own is None:
        return None
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = own.username, own.password
    return own.username


def accounts_from_environment() -> list[Account]:
    found = []
    for role in GRANTS:
        own = account(role)
        if own is None:
            prefix = f"FACEFORGE_MLFLOW_{role.upper()}"
            raise ValueError(f"{prefix}_PASSWORD (or {prefix}_PASSWORD_FILE) is not set: every account needs "
                             "a password from the environment or a secret file")
        found.append(own)
    return found


def provision(tracking_uri: str, experiment: str, registered_model: str, accounts: list[Account]) -> dict[str, Any]:
    """Create (or update) the accounts and grant each its permissions on the experiment and the model,
    creating both first so that they can be granted on; returns who got what (no passwords)."""
    import mlflow
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.server import get_app_client

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    try:
        client.create_registered_model(registered_model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    granted: dict[str, Any] = {}
    for account in accounts:
        try:
            auth.create_user(account.username, account.password)
        except RestException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.update_user_password(account.username, account.password)
        on_experiment, on_model = GRANTS[account.role]
        auth.grant_user_permission(account.username, "experiment", experiment_id, on_experiment)
        auth.grant_user_permission(account.username, "registered_model", registered_model, on_model)
        granted[account.username] = {"role": account.role, "experiment": on_experiment,
                                     "registered_model": on_model}
    return {"tracking_uri": tracking_uri, "experiment": experiment, "registered_model": registered_model,
            "accounts": granted}
