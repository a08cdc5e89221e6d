"""The team of a tracking server with MLflow's basic-auth app: who is signed in, and who may break a lease.

MLflow gives the creator of a registered model MANAGE on it, and nobody else. A sweep lease (a registered model,
sweep_lock.py) left by a holder that died must still be breakable by the next teammate who resumes the sweep, so
its holder shares it at once: it grants MANAGE on the lease to every user on the team roster, a registered model
(``keys.TEAM_MODEL``) whose tags the admin keeps (``mnist-exp server-users``) and everyone may read. On a server
without auth, or one whose admin keeps no roster, there is nothing to share.
"""

from __future__ import annotations

from mnist_exp.tracking import keys


def signed_in_user(uri: str) -> str | None:
    """The username MLflow sends to ``uri`` (MLFLOW_TRACKING_USERNAME or ~/.mlflow/credentials), or None."""
    if not uri.startswith(("http://", "https://")):
        return None
    from mnist_exp.tracking.server_store import credentials

    return credentials()[0] or None


def auth_client(uri: str):
    """MLflow's client of the auth app's REST API at ``uri`` (its import of MLflow's server warns about Starlette:
    nothing a user of mnist-exp can act on, so kept off their terminal)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient
    return AuthServiceClient(uri)


def roster(client) -> dict[str, str]:
    """{username: level} of the team roster; empty when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(keys.TEAM_MODEL)
    except MlflowException:
        return {}
    return {k[len(keys.TAG_TEAM_PREFIX):]: v for k, v in model.tags.items() if k.startswith(keys.TAG_TEAM_PREFIX)}


def share(client, uri: str, name: str, users=None) -> None:
    """Grant MANAGE on registered model ``name`` (a lease this user just took) to the roster's users (or ``users``)
    but oneself. Best effort: a grant refused or a server without auth leaves the lease to its holder and admins."""
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.exceptions import MlflowException

    me = signed_in_user(uri)
    auth = auth_client(uri)
    for user in users if users is not None else roster(client):
        if user == me:
            continue
        try:
            auth.grant_user_permission(user, "registered_model", name, "MANAGE")
        except MlflowException:
            return


def may_promote(uri: str, model_name: str) -> bool:
    """Whether the signed-in user may move an alias of ``model_name`` (MANAGE or EDIT on it). True on a server
    without auth and on local stores. Asked before anything is written: MLflow lets any signed-in user create a
    registered model, so a reader's first promotion to a model nobody has made yet would otherwise succeed."""
    user = signed_in_user(uri)
    if user is None:
        return True
    from mlflow.exceptions import MlflowException

    try:
        answer = auth_client(uri).get_user_permission(user, "registered_model", model_name)
    except MlflowException as e:
        if "error code 404" in str(e) or getattr(e, "error_code", "") == "ENDPOINT_NOT_FOUND":
            return True  # no auth app on this server
        raise
    return answer.permission in ("EDIT", "MANAGE")
