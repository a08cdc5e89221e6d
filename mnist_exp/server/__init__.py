"""The team tracking server (``mnist-exp server DIR``, ``mnist-exp server-users DIR``).

Owns: the PostgreSQL cluster (postgres.py), the MLflow server over it with MLflow's basic-auth app (launch.py,
auth.py), the secrets kept in DIR (files.py) and the users and their permissions (users.py). May import
``mnist_exp.tracking``, ``mnist_exp.runtime`` and MLflow; nothing of the search or the model.
"""

from mnist_exp.server.launch import LOOPBACK, Server, start

__all__ = ["LOOPBACK", "Server", "start"]
