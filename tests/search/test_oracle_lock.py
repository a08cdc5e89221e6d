"""The oracle's lock (mnist_exp/search/oracle_lock.py): a call that raises inside the oracle releases it, so the
chief goes on answering its other workers (with Keras Tuner 1.4.8's own ``synchronized`` every later call waited
forever)."""

import threading

import pytest

from helpers import ROOT

QUICK = ROOT / "experiments" / "quick.yaml"


def quick_oracle(tmp_path, mixins=()):
    from mnist_exp.model.data import load_data
    from mnist_exp.search import tracked_tuner
    from mnist_exp.spec.experiment import load_experiment
    from mnist_exp.spec.space import load_space

    exp = load_experiment(QUICK, ["data.train_size=200", "data.test_size=100"])
    sw = tracked_tuner.SweepContext(exp, load_data(exp.data, exp.seed), "0", "parent")
    space = load_space(exp.search_space).to_hyperparameters(fixed=exp.hp)
    return tracked_tuner.make_tuner(sw, space, tmp_path, oracle_mixins=mixins).oracle


def in_thread(call, timeout=30.0):
    """``call()`` from another thread (as a chief's gRPC threads call); its result, or a failure if it hangs."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except Exception as e:  # raised again in the test's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the oracle's lock was never released"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_call_that_raises_inside_the_oracle_leaves_it_answering(tmp_path):
    from mnist_exp.search.distributed.trial_leases import TrialLeaseOracleMixin

    oracle = quick_oracle(tmp_path, (TrialLeaseOracleMixin,))
    trial = in_thread(lambda: oracle.create_trial_for("worker0"))
    assert trial.status == "RUNNING"
    with pytest.raises(KeyError):  # a report for a trial the oracle never made
        oracle.update_trial("no-such-trial", {"val_accuracy": 0.5}, step=0)
    with pytest.raises(KeyError):
        in_thread(lambda: oracle.end_trial(type(trial)(trial.hyperparameters, trial_id="no-such-trial")))
    assert in_thread(lambda: oracle.holds("worker0", trial.trial_id))  # another thread still gets in
    second = in_thread(lambda: oracle.create_trial_for("worker1"))
    assert second.status == "RUNNING" and second.trial_id != trial.trial_id
