"""Quiet by default: the libraries' informational lines (store creation, Ray's token notice, Optuna's study, Tune's
configuration box and TensorBoard hint, torch.export's shape notes) are silenced through each library's own switch
-- its logger's level or its documented environment variable -- never by filtering text. `-v` keeps them all.
MLflow's registration lines ("Successfully registered model", "Created version") have no switch: kdsearch
registers through MlflowClient, which does not print them (tracking.register_student).

Warnings a user must act on keep their level: kdsearch's own (sizes over the limit, skipped files, the teacher
check) and every library's errors.
"""

from __future__ import annotations

import logging
import os

_verbose = False

LOGGERS = {
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # "Token authentication is enabled"
    "ray.tune.tune": logging.ERROR,  # Tune's stop/resume notices: kdsearch says them in its own words
    "torch._export": logging.ERROR,  # "dimension inputs[0].shape[0] 0/1 specialized" while exporting
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,  # MLflow's schema migrations
    "urllib3": logging.WARNING,
    "filelock": logging.WARNING,
}
ENVIRONMENT = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow sets its loggers from this at import: no "Creating initial tables"
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's classic reporter, which honours verbose=0: no configuration box, no
    # "View detailed results here" / TensorBoard lines (kdsearch prints where the results are)
}


def configure(verbose: bool) -> None:
    """Called once by the CLI before any library is imported."""
    global _verbose
    _verbose = verbose
    if verbose:
        return
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name, level in LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def verbose() -> bool:
    return _verbose


def quiet_optuna() -> None:
    """Optuna sets its own logger's level when it is imported; its switch is `set_verbosity`."""
    if not _verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
