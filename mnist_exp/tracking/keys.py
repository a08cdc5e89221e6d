"""Every key mnist-exp writes to MLflow or reads back: run statuses, tag keys, shared metric names.

The contract between the modules that write a record and those that read it, and with the stores earlier
releases wrote: a key's text never changes (a renamed constant is fine). No ``"mnist_exp.…"`` tag string is
written anywhere else in the package (tests/test_layout.py checks).
"""

# Run statuses, as MLflow names them.
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"

# --- MLflow's own tags, as its UI reads them -------------------------------------------------------------
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"  # what the UI shows (and edits) as a run's or version's description
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # on the experiment: which UI mode opens it

# --- every run ----------------------------------------------------------------------------------------
TAG_KIND = "mnist_exp.kind"  # train | sweep | trial | refit | ensemble
TAG_VERSION = "mnist_exp.version"  # the mnist-exp release that wrote the run (or registered the version)
TAG_TENSORFLOW = "mnist_exp.tensorflow"
TAG_KERAS = "mnist_exp.keras"
TAG_MLFLOW = "mnist_exp.mlflow"
TAG_ERROR = "mnist_exp.error"  # why a run ended FAILED or KILLED
TAG_FINGERPRINT = "mnist_exp.data_fingerprint"  # sha256 of the training + validation digits
TAG_TEST_FINGERPRINT = "mnist_exp.test_fingerprint"
TAG_MODEL_URI = "mnist_exp.model_uri"
TAG_GC = "mnist_exp.gc"  # trial: its model and plots were deleted by `mnist-exp gc` (when, and what); never a candidate
TAG_EXPERIMENT_FILE = "mnist_exp.experiment_file"  # `mnist-exp train`: the experiment file it ran
PROBABILITIES_DIR = "probabilities"  # artifact folder: <split>.npy, the model's class probabilities (ensembles)

# --- resumable fits: train, trial and refit runs (tracking/checkpoints.py, model/resume.py) ----------------
TAG_CHECKPOINT = "mnist_exp.checkpoint"  # pointer (JSON) to the newest complete checkpoint version; removed at the end
TAG_FIT_IDENTITY = "mnist_exp.fit_identity"  # sha256 of what the fit trains (hyperparameters, data, seed, epochs)
TAG_RESUMED_FROM_EPOCH = "mnist_exp.resumed_from_epoch"  # the last completed epoch (1-based) the run resumed after

# --- liveness: which process holds a RUNNING run (tracking/liveness.py) ---------------------------------
TAG_PID = "mnist_exp.pid"
TAG_HOST = "mnist_exp.host"
TAG_PROC_START = "mnist_exp.proc_start"  # <boot id>:<start ticks>: a reused pid is not the run's process
TAG_HEARTBEAT = "mnist_exp.heartbeat"  # epoch seconds, refreshed while the run's process lives

# --- sweeps: parent, trial and refit runs ----------------------------------------------------------------
TAG_SWEEP = "mnist_exp.sweep"
TAG_TRIAL = "mnist_exp.trial_id"
TAG_PRUNED = "mnist_exp.pruned"  # trial: the epoch (1-based) after which the sweep's pruner stopped it
TAG_TUNER_ID = "mnist_exp.tuner_id"  # which Keras Tuner worker ran the trial (tuner0 when not parallel)
TAG_TUNER = "mnist_exp.tuner"  # parent: the tuner kind
TAG_OBJECTIVE = "mnist_exp.objective"  # parent and version: "<max|min>:<metric>"
TAG_BEST_TRIAL = "mnist_exp.best_trial_id"  # parent
TAG_SEARCHED = "mnist_exp.searched"  # parent: its searched hyperparameters, comma-separated (the UI view)
TAG_SUPERSEDED = "mnist_exp.superseded"  # why an earlier parent run of a sweep name (and its trials) is history
TAG_TUNER_STATE = "mnist_exp.tuner_state"  # parent: "<slot> <version> <sha256>" of its Keras Tuner state's archive
TAG_WARM_START = "mnist_exp.warm_start"  # parent: the earlier sweeps whose configurations it began with
TAG_BUDGET_STOP = "mnist_exp.budget_stop"  # parent, while the budget left trials unstarted
TAG_REFIT_OF = "mnist_exp.refit_of"  # refit run (and its version): the trial run whose configuration it trained
TAG_REFIT_RUN_ID = "mnist_exp.refit_run_id"  # parent: the sweep's refit run
TAG_REFIT_ERROR = "mnist_exp.refit_error"  # parent: why the refit failed (the sweep still finished)
TAG_ENSEMBLE_OF = "mnist_exp.ensemble_of"  # ensemble run (and its version): the members' run ids, comma-separated
TAG_ENSEMBLE_IDENTITY = "mnist_exp.ensemble_identity"  # ensemble run: sha256 of its members and weights
TAG_ENSEMBLE_RUN_ID = "mnist_exp.ensemble_run_id"  # parent: the ensemble promote built from the sweep

# --- registered model versions (results/promote.py) -------------------------------------------------------
TAG_RUN_ID = "mnist_exp.run_id"  # the run whose model the version is
TAG_HYPERPARAMETERS = "mnist_exp.hyperparameters"  # JSON
TAG_PROMOTED_AT = "mnist_exp.promoted_at"
TAG_FORCED = "mnist_exp.forced"  # why a guard was overridden with --force
TAG_PROMOTED_BY = "mnist_exp.promoted_by"  # the signed-in user who promoted it (a server with auth)

# --- locks kept as registered models (tracking/registry_lock.py) ------------------------------------------
TAG_LOCK_TOKEN = "mnist_exp.lock.token"
TAG_LOCK_SINCE = "mnist_exp.lock.since"
TAG_LOCK_SWEEP = "mnist_exp.lock.sweep"  # promotion lock: the sweep being promoted
TAG_LOCK_COMMAND = "mnist_exp.lock.command"  # sweep lock: the command holding it

# --- the team roster of a server with auth (tracking/team.py, server/users.py) ----------------------------
TEAM_MODEL = "mnist-exp.team"  # a registered model the admin keeps: one tag per user who may run sweeps
TAG_TEAM_PREFIX = "mnist_exp.team."  # + a username: its level (run, promote, admin)

# --- metrics written by one module and read by others -----------------------------------------------------
METRIC_OBJECTIVE = "objective"  # a trial's objective value (its best epoch's)
METRIC_TEST_ACCURACY = "test_accuracy"
METRIC_EPOCHS_RUN = "epochs_run"  # fewer than planned when early stopping ended the fit
METRIC_TRIAL_TIME = "trial_time_s"
METRIC_ENSEMBLE_TEST_ACCURACY = "ensemble_test_accuracy"  # parent: the test accuracy of its ensemble
METRIC_IMPORTANCE_PREFIX = "importance."  # + a hyperparameter: its importance for the objective, on a sweep's parent
