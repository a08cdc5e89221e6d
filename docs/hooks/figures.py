"""MkDocs hook: tables of measurements, rendered at every build from the JSON files the benchmarks and the real runs
write (``benchmarks/*.json``), never typed by hand.

A page line ``<!-- figures: KIND FILE [FILE ...] -->`` becomes the table ``FIGURES[KIND]`` makes from those files,
with each file's machine, date and command. ``tests/test_docs.py`` renders every marker of every page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")  # a commit: provenance stays in the JSON


def _load(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / name).read_text())


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _minutes(s) -> str:
    if not isinstance(s, (int, float)):
        return ""
    return f"{int(s) // 3600} h {int(s) % 3600 // 60:02d} min" if s >= 3600 else f"{int(s) // 60} min {int(s) % 60:02d} s"


def _machine(d: dict) -> str:
    m = d.get("machine", {})
    simd = {True: "AVX-512", False: "AVX2, no AVX-512"}.get(m.get("avx512"))  # two "AMD EPYC" seen, 1.5× apart
    return ", ".join(str(x) for x in (m.get("cpu"), simd, m.get("gpu"), f"{m['cores']} cores" if "cores" in m else None,
                                     f"TensorFlow {m['tensorflow']}" if "tensorflow" in m else None) if x)


def _date(d: dict) -> str:
    return d.get("date") or min(d.get("measured", {"": ""}).values())[:10]


def _source(name: str, d: dict) -> str:
    """One line: the file, its machine, its date and the command that wrote it."""
    return f"`benchmarks/{name}`: {_machine(d)}; {_date(d)}; `{_cell(d.get('command', ''))}`"


def tests_table(last: str = "10") -> str:
    """The ``last`` measured runs of CI and the fast tier's (benchmarks/tests.json holds every one)."""
    d = _load("tests.json")
    m = d["machine"]
    head = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, TensorFlow "
            f"{m['tensorflow']}, pip cache {m['pip_cache']}; fresh git clones.\n\n"
            "| date | machine | command | tests (passed) | pytest | whole command | note |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n")
    rows = []
    for r in [*d["runs"][-int(last):], *d["fast_tier"][-3:]]:
        note = HASH.sub("", re.sub(r",? ?\(?(fixed|then) in [0-9a-f]{7,40}\)?", "", r.get("note", r.get("source", ""))))
        note = re.sub(r"\(\s*\)|\s+(?=[,;:)])", "", note)
        pytest_s = f"{r['pytest_s']} s" if "pytest_s" in r else ""
        cpu = r.get("cpu", m["cpu"].split(" (")[0]) + (f", Python {r['python']}" if "python" in r else "")
        rows.append(f"| {r['date']} | {_cell(cpu)} | `{_cell(r['command'])}` | "
                    f"{r['tests']} ({r.get('passed', '–')}) | {pytest_s} | {_minutes(r.get('whole_s'))} | {_cell(note)} |")
    return head + "\n".join(rows) + "\n"


def runs_table(name: str, part: str = "") -> str:
    """Real runs written by benchmarks/results_runs.py (``part``: a nested set of runs, e.g. ``earlier``)."""
    d = _load(name)
    runs = (d[part] if part else d)["runs"]
    head = (f"{_source(name, d)}{' (' + part + ')' if part else ''}"
            + (f"; {_cell(d['conditions'])}" if d.get("conditions") else "") + "\n\n")
    refits = any(r.get("refit") for r in runs)
    rows = ["| seed | champion | champion's test accuracy | best single trial (by validation): test accuracy "
            + ("| refit of the best trial: test accuracy " if refits else "") + "| trials | whole command (sweep + promote) |",
            "| --- " * (6 + refits) + "|"]
    for r in sorted(runs, key=lambda r: r["seed"]):
        best = r.get("best_single_trial", {})
        refit = f"{r['refit'][0]['test_accuracy']:.4f} | " if r.get("refit") else ("— | " if refits else "")
        rows.append(f"| {r['seed']} | {r.get('champion', '')} | **{r['champion_test_accuracy']:.4f}** | "
                    f"{best.get('test_accuracy', float('nan')):.4f} (trial {best.get('trial', '?')}) | {refit}"
                    f"{r.get('trials_finished', '')} | {r['whole_command_s']:.0f} s ({r.get('sweep_s', 0):.0f} + "
                    f"{r.get('promote_s', 0):.0f}) |")
    return head + "\n".join(rows) + "\n"


def costs_table(name: str) -> str:
    """Size and latency per image of each run's ensemble against its best single model (results_runs.py)."""
    d = _load(name)
    rows = ["| seed | ensemble size | single model size | ensemble, batch 1 | single, batch 1 | ensemble, batch 256 "
            "| single, batch 256 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(d["runs"], key=lambda r: r["seed"]):
        c = r.get("ensemble_costs") or {}
        if not c:
            continue
        rows.append(f"| {r['seed']} | {c.get('size_bytes', 0) / 1e6:.1f} MB | {c.get('single_size_bytes', 0) / 1e6:.1f} MB | "
                    f"{c.get('latency_ms_per_image_batch1', 0):.1f} ms | {c.get('single_latency_ms_per_image_batch1', 0):.1f} ms"
                    f" | {c.get('latency_ms_per_image_batch256', 0):.3f} ms | "
                    f"{c.get('single_latency_ms_per_image_batch256', 0):.3f} ms |")
    return f"{_source(name, d)}\n\n" + "\n".join(rows) + "\n"


def _mean(v) -> float:
    return sum(v) / len(v) if isinstance(v, list) else v


def _bench_rows(d: dict) -> list[tuple[str, str, str, str, str, bool | None]]:
    """(part, suite, reference, ratio, target, met) for each part benchmarks/bench.py measured in ``d``."""
    rows = []
    if "a_throughput" in d:
        a = d["a_throughput"]
        n = sum(r["path"] == "suite" for r in a.get("rounds", [])) or "?"
        ok = a["speedup"] >= 1.3 and abs(a["accuracy_delta_pp"]) <= 0.1
        rows.append((f"(a) training throughput, batch 16, {d['n_train']} digits, {d['epochs']} epoch, median of {n} "
                     "fresh processes: the suite against the seed's code",
                     f"{a['suite']['images_per_s']:.0f} images/s, test acc {a['suite']['test_accuracy']:.4f}",
                     f"{a['seed']['images_per_s']:.0f} images/s, test acc {a['seed']['test_accuracy']:.4f}",
                     f"{a['speedup']:.2f}×, {a['accuracy_delta_pp']:+.2f} pp", "≥ 1.3×, accuracy within 0.1 pp", ok))
    if "b_flops" in d:
        b = d["b_flops"]
        rows.append(("(b) training FLOP/s against the float32 matmul peak", f"{b['suite_training_gflops']:.0f} GFLOP/s",
                     f"{b['matmul_peak_gflops']:.0f} GFLOP/s", f"{b['utilisation']:.0%}", "", None))
    if "c_tracking" in d:
        c = d["c_tracking"]
        rows.append((f"(c) tracking overhead, one trial fitting {c['n_train']:,} digits: tracked against untracked",
                     f"{c['tracked_s']:.1f} s", f"{c['untracked_s']:.1f} s", f"{c['overhead']:+.1%}", "≤ 2%",
                     c["overhead"] <= 0.02))
    for key, size, target in (("d_sweep", "tiny", None), ("d_sweep_30s", "~30-s", 0.05), ("d_sweep_5min", "~5-min", 0.02)):
        if key in d:
            s = d[key]
            epochs = f" × {s['epochs']} epoch(s) × {s['n_fit']:,} digits" if "n_fit" in s else ""
            rows.append((f"(d) `mnist-exp sweep` against bare Keras Tuner, {s['trials']} {size} trial(s){epochs}",
                         f"{_mean(s.get('suite_mean_s', s['suite_s'])):.1f} s",
                         f"{_mean(s.get('bare_mean_s', s['bare_keras_tuner_s'])):.1f} s", f"{s['overhead']:+.1%}",
                         f"≤ {target:.0%}" if target else "", s["overhead"] <= target if target else None))
    if "e_parallel_trials" in d:
        e = d["e_parallel_trials"]
        rows.append((f"(e) one sweep, {e['trials']} trials × {e['epochs']} epoch(s) × {e['n_fit']:,} digits: "
                     "`--parallel 2` against one at a time", f"{e['workers_2']['images_per_s']:.0f} images/s",
                     f"{e['workers_1']['images_per_s']:.0f} images/s", f"{e['speedup']:.2f}×", "≥ 1.3×",
                     e["speedup"] >= 1.3))
    if "f_latency" in d:
        f = d["f_latency"]
        rows.append(("(f) `mnist-exp --help`", f"{f['help_s_median']:.2f} s", "", "", "≤ 0.5 s",
                     f["help_s_median"] <= 0.5))
        rows.append(("(f) `mnist-exp compare` over 1,000 runs, whole process, against MLflow's client search alone",
                     f"{f['compare_1000_runs_s_median']:.2f} s", f"{f['mlflow_client_search_1000_runs_s']:.2f} s",
                     f"{f['compare_1000_runs_s_median'] / f['mlflow_client_search_1000_runs_s']:.2f}×", "≤ 2 s",
                     f["compare_1000_runs_s_median"] <= 2))
    return rows


def bench_table(*names: str) -> str:
    """benchmarks/bench.py's parts (a)-(f), from each file named, one row per part measured there (``FILE:d,e``: only
    those parts of that file)."""
    sources, rows = [], ["| part | mnist-exp | reference | ratio | target | met | file |",
                         "| --- | --- | --- | --- | --- | --- | --- |"]
    for spec in names:
        name, _, only = spec.partition(":")
        d = _load(name)
        sources.append(f"- {_source(name, d)}")
        for part, suite, ref, ratio, target, met in _bench_rows(d):
            if only and part[1] not in only.split(","):
                continue
            verdict = "" if met is None else ("yes" if met else "**no**")
            rows.append(f"| {part} | {suite} | {ref} | {ratio} | {target} | {verdict} | `{name}` |")
    return "\n".join(sources) + "\n\n" + "\n".join(rows) + "\n"


def recipes_table(speed: str, curves: str) -> str:
    """Candidate recipes: test accuracy after each epoch (``curves``, hardware-independent up to seed noise) beside
    their training speed on the CPU (``speed``), both written by scripts/time_to_accuracy.py."""
    s, c = _load(speed), _load(curves)
    rows = ["| recipe (changes to the baseline) | test accuracy after each epoch | CPU images/s | s per 60,000-digit epoch |",
            "| --- | --- | --- | --- |"]
    for name, changes in s["recipes"].items():
        what = ", ".join(f"{k} {v}" for k, v in changes.items())
        curve = " ".join(f"{a:.4f}" for a in c["result"].get(name, []))
        rows.append(f"| {what} | {curve} | {s['result'][name]:.0f} | {60000 / s['result'][name]:.0f} |")
    return f"- {_source(speed, s)}\n- {_source(curves, c)}\n\n" + "\n".join(rows) + "\n"


def profile_table(name: str) -> str:
    """Where one trial's time goes: benchmarks/profile_trial.py's phases (indented: inside the phase above)."""
    d = _load(name)
    rows = ["| phase | seconds |", "| --- | --- |"]
    for phase, secs in d["phases_s"].items():
        depth = (len(phase) - len(phase.lstrip())) // 2
        rows.append(f"| {'— ' * depth}{_cell(phase)} | {secs:.2f} |")
    rows += [f"| — {_cell(phase)} | {secs:.2f} |" for phase, secs in d.get("derived_s", {}).items()]
    return (f"{_source(name, d)}; one trial of {d['n_train']:,} digits × {d['epochs']} epoch, under cProfile\n\n"
            + "\n".join(rows) + "\n")


def resume_table(name: str) -> str:
    """A long fit uninterrupted against the same fit killed with SIGKILL and run again (benchmarks/resume.py)."""
    d = _load(name)
    u, i, c = d["uninterrupted"], d["interrupted"], d["checkpoint"]

    def span(epochs: list[int]) -> str:
        return f"{epochs[0]}–{epochs[-1]}" if epochs else "none"

    rows = ["| fit | epochs each process trained | epochs trained twice | runs | test accuracy | wall |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| uninterrupted | {span(list(range(1, u['epochs_logged'] + 1)))} | — | 1 | {u['test_accuracy']:.4f} | "
            f"{u['wall_s']:,.0f} s |",
            f"| killed after epoch {d['kill_at_epoch']}'s checkpoint, then the same command | "
            f"{span(i['epochs_killed_process'])} (and {d['kill_at_epoch']}, killed before its line), then "
            f"{span(i['epochs_resumed_process'])} | {span(i['epochs_trained_twice'])} | {i['runs']} ({i['status']}) | "
            f"{i['test_accuracy']:.4f} | {i['killed_process_wall_s']:,.0f} s + {i['resumed_process_wall_s']:,.0f} s |"]
    return (f"{_source(name, d)}; {_cell(d['fit'])}; a checkpoint: {c['version_bytes'] / 1e6:.1f} MB, "
            f"{c['write_s_median']:.3f} s a write (median of {len(c['write_s'])})\n\n" + "\n".join(rows) + "\n")


def search_table(name: str) -> str:
    """Search strategies in the same budget (benchmarks/search.py), then per seed the comparisons its targets ask."""
    d = _load(name)
    rows = ["| seed | strategy | trials | pruned | epochs | best val | its test | min to random's best | wall |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {}
    for r in d["results"]:
        strategy = r["kind"] + ("" if r["pruner"] == "none" else f" + {r['pruner']}")
        by[(r["seed"], strategy)] = r
        rows.append(f"| {r['seed']} | {strategy} | {r['trials_finished']} | {r['trials_pruned']} | {r['epochs_trained']} | "
                    f"{r['best_val_accuracy']:.4f} | {r['best_test_accuracy']:.4f} | {r.get('minutes_to_unpruned_best', '')} | "
                    f"{r['wall_s']:.0f} s |")
    checks = ["| seed | trials, random + asha / random (target ≥ 2×) | best val, random + asha against random "
              "| best val, tpe + asha against random + asha |", "| --- | --- | --- | --- |"]
    for seed in sorted({s for s, _ in by}):
        rnd, asha, tpe = (by.get((seed, k)) for k in ("random", "random + asha", "tpe + asha"))
        if not (rnd and asha and tpe):
            continue
        checks.append(f"| {seed} | {asha['trials_finished'] / rnd['trials_finished']:.1f}× | "
                      f"{asha['best_val_accuracy']:.4f} vs {rnd['best_val_accuracy']:.4f} | "
                      f"{tpe['best_val_accuracy']:.4f} vs {asha['best_val_accuracy']:.4f} |")
    tail = "\n\n" + "\n".join(checks) if len(checks) > 2 else ""
    return f"{_source(name, d)}\n\n" + "\n".join(rows) + tail + "\n"


def selection_table(name: str) -> str:
    """Ensemble selection criteria replayed on a kept sweep's probabilities (benchmarks/ensemble_selection.py)."""
    d = _load(name)
    parts = [_source(name, d)]
    for res in d["results"]:
        rows = [f"Sweep `{res['sweep']}`; its trials: " + ", ".join(
                    f"{t['trial']} (validation {t['val_accuracy']:.4f}, test {t['test_accuracy']:.4f}"
                    + (", its refit's" if t.get("refit_on_test") else "") + ")" for t in res["library"]),
                "", "| selection on the validation digits | validation accuracy | test accuracy | members (times chosen) |",
                "| --- | --- | --- | --- |"]
        for how, sel in res["selections"].items():
            members = ", ".join(f"{t} ×{n}" for t, n in sel["members"].items())
            rows.append(f"| {how} | {sel['val_accuracy']:.4f} | {sel['test_accuracy']:.4f} | {members} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


def train_table(name: str) -> str:
    """One tracked training run (``mnist-exp train``)."""
    d = _load(name)
    return (f"{_source(name, d)}; {_cell(d.get('conditions', ''))}; {_cell(d.get('source', ''))}\n\n"
            f"| run | test accuracy | test loss | wall |\n"
            f"| --- | --- | --- | --- |\n| {_cell(d['what'])} | **{d['test_accuracy']:.4f}** | {d['test_loss']:.4f} | "
            f"{_minutes(d['wall_s'])} |\n")


def summary_table(*specs: str) -> str:
    """One row per shipped experiment against its target: ``FILE[,FILE...]:ACCURACY:SECONDS`` (the real runs of
    benchmarks/results_runs.py; a target is met when every run reaches the accuracy within the seconds)."""
    rows = ["| experiment | target | runs (seed: champion's test accuracy, whole command) | met | machine, date |",
            "| --- | --- | --- | --- | --- |"]
    for spec in specs:
        names, acc, secs = spec.split(":")
        data = [_load(n) for n in names.split(",")]
        runs = [r for d in data for r in d["runs"]]
        met = all(r["champion_test_accuracy"] >= float(acc) and r["whole_command_s"] <= float(secs) for r in runs)
        listed = ", ".join(f"{r['seed']}: {r['champion_test_accuracy']:.4f} in {_minutes(r['whole_command_s'])}"
                           for r in sorted(runs, key=lambda r: r["seed"]))
        rows.append(f"| `{data[0].get('experiment', '')}` | ≥ {float(acc):.2%} in ≤ {_minutes(float(secs))} | {listed} "
                    f"({', '.join(f'`{n}`' for n in names.split(','))}) | {'yes' if met else '**no**'} | "
                    + "; ".join(f"{_machine(d)}, {_date(d)}" for d in data) + " |")
    return "\n".join(rows) + "\n"


def _gpu_source(name: str, d: dict, date: str = "2026-11-26") -> str:
    dev = d.get("device") or ", ".join(d.get("devices", []))
    return (f"`benchmarks/{name}`: {dev} (lent), Keras {d.get('keras')} on {d.get('backend')}, Python {d.get('python')}, "
            f"steps_per_execution {d.get('spe')}; {d.get('date', date)}" + (f"; `{d['command']}`" if d.get("command") else ""))


def gpu_table(name: str) -> str:
    """Images/s by batch size and precision policy (scripts/gpu_check.py)."""
    d = _load(name)
    policies = list(dict.fromkeys(r["policy"] for r in d["rows"]))
    rows = ["| batch | " + " | ".join(policies) + " | test accuracy |", "| --- " * (len(policies) + 2) + "|"]
    for batch in sorted({r["batch"] for r in d["rows"]}):
        got = {r["policy"]: r for r in d["rows"] if r["batch"] == batch}
        accs = [got[p]["test_accuracy"] for p in policies if p in got]
        rows.append(f"| {batch} | " + " | ".join(f"{got[p]['images_per_s']:,.0f}" if p in got else "" for p in policies)
                    + f" | {min(accs):.4f}–{max(accs):.4f} |")
    return (f"{_gpu_source(name, d)}; {d['n_train']:,} digits × {d['epochs']} epochs; images/s\n\n"
            + "\n".join(rows) + "\n")


def gpu_power_table(name: str) -> str:
    """Seconds of training to test-accuracy levels, and trials sharing one GPU (scripts/gpu_power.py)."""
    d = _load(name)
    calls = [d[k] for k in sorted(d) if k.startswith("call")]
    fits = ["| model | images/s | seconds of training to test accuracy ≥ 99.1% / 99.5% / 99.6% | after the last epoch |",
            "| --- | --- | --- | --- |"]
    share = ["| processes | trials | wall | trials per hour | training images/s | vs one |",
             "| --- | --- | --- | --- | --- | --- |"]
    one = None
    for call in calls:
        for part, r in call["parts"].items():
            if part == "share":
                for run in r["runs"]:
                    one = one or run["train_images_per_s"]
                    share.append(f"| {run['processes']} | {run['trials']} | {run['wall_s']:.1f} s | {run['trials_per_hour']} | "
                                 f"{run['train_images_per_s']:,} | {run['train_images_per_s'] / one:.2f}× |")
                continue
            to = " / ".join("never" if r.get(f"train_s_to_{lvl}") is None else f"{r[f'train_s_to_{lvl}']:.1f}"
                            for lvl in ("0.991", "0.995", "0.996"))
            what = (f"{part}, batch {r['batch']}, {r['epochs_planned']} epochs"
                    + (", without its augmentation" if call.get("champion_augmentation") is False else ""))
            fits.append(f"| {what} | {r['images_per_s']:,} | {to} | {r['final_test_accuracy']:.4f} |")
    return (f"{_gpu_source(name, calls[0])}; {_cell(d.get('note', ''))}\n\n" + "\n".join(fits) + "\n\n"
            + "\n".join(share) + "\n")


def cluster_table(*names: str) -> str:
    """A chief and 1, 2, 4 workers on one machine (benchmarks/cluster.py), one file per store."""
    parts = []
    for name in names:
        d = _load(name)
        c = d["config"]
        store = f"a tracking server on PostgreSQL (--workers {c['server_workers']})" if c["postgres"] else "a sqlite store"
        rows = ["| workers | trials | trials/h (over the trials' window) | chief handler ms per trial | RPCs per trial "
                "| heartbeat p50 / p99 under load | server requests per trial |", "| --- " * 7 + "|"]
        for r in d["rows"]:
            reqs = f"{r['server_requests_per_trial']:.0f}" if "server_requests_per_trial" in r else ""
            rows.append(f"| {r['workers']} | {r['trials_finished']} | {r['trials_per_hour_wall']:,.0f} "
                        f"({r['trials_per_hour_window']:,.0f}) | {r['chief_handler_ms_per_trial']:.1f} | "
                        f"{r['rpcs_per_trial']:.1f} | {r['hb_load_p50_ms']:.2f} / {r['hb_load_p99_ms']:.2f} ms | {reqs} |")
        parts.append(f"{_source(name, c)}; {store}; {c['trials']} trials of {c['train_size']} digits × {c['epochs']} "
                     f"epoch\n\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


def load_table(name: str) -> str:
    """A tracking server under simulated workers (benchmarks/tracking_load.py)."""
    d = _load(name)
    rows = ["| load | requests/s | `log-batch` p50 / p99 | errors | runs FINISHED |", "| --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        lost = "" if r["runs_finished"] == r["runs_expected"] else " (**lost**)"
        rows.append(f"| {_cell(r['load'])} | {r['requests_per_s']:g} | "
                    f"{r['log_batch_p50_ms']:,.0f} / {r['log_batch_p99_ms']:,.0f} ms | {r['errors']} | "
                    f"{r['runs_finished']}/{r['runs_expected']}{lost} |")
    return (f"{_source(name, d)}; {_cell(d['server'])}" + (f"; {_cell(d['source'])}" if d.get("source") else "")
            + "\n\n" + "\n".join(rows) + "\n")


def bytes_table(name: str) -> str:
    """What one trial keeps in the store, by part."""
    d = _load(name)
    rows = ["| part | MB |", "| --- | --- |", *(f"| {k} | {v:g} |" for k, v in d["parts_mb"].items()),
            f"| **all** | **{d['total_mb']:g}** |"]
    return f"{_source(name, d)}; {_cell(d['what'])}; {_cell(d.get('source', ''))}\n\n" + "\n".join(rows) + "\n"


def server_start_table(name: str) -> str:
    """An MLflow server started with its job runner off (as mnist-exp starts one) and on (benchmarks/server_start.py):
    medians of the rounds in one run."""
    d = _load(name)
    rows = ["| MLflow server | `/health` after | processes | CPU used | memory |", "| --- | --- | --- | --- | --- |"]
    for variant, m in d["median"].items():
        rows.append(f"| {_cell(variant)} | {m['health_s']:.1f} s | {m['processes']:g} | {m['cpu_s']:.1f} s | "
                    f"{m['rss_mib']:,.0f} MiB |")
    n = len(next(iter(d["rounds"].values())))
    return (f"{_source(name, d)}; medians of {n} starts each, measured {d['settle_s']:g} s after `/health` answered"
            "\n\n" + "\n".join(rows) + "\n")


def interpreters_table(name: str) -> str:
    """Two Python 3.11 builds on the suite's typical work (benchmarks/interpreters.py): medians of the rounds in one run."""
    d = _load(name)
    rows = ["| interpreter | build | importing TensorFlow, Keras Tuner, MLflow: CPU | tiny sweep: CPU | tiny sweep: wall |",
            "| --- | --- | --- | --- | --- |"]
    for py, m in d["median"].items():
        build = d["interpreters"][py]
        rows.append(f"| `{_cell(py)}` | {_cell(build['version'])}, {_cell(build['build'].partition('[')[2].rstrip(']'))} | "
                    f"{m['import']['cpu_s']:.1f} s | {m['sweep']['cpu_s']:.1f} s | {m['sweep']['wall_s']:.1f} s |")
    n = len(next(iter(d["rounds"].values())))
    return f"{_source(name, d)}; medians of {n} rounds, alternating\n\n" + "\n".join(rows) + "\n"


FIGURES = {"tests": tests_table, "runs": runs_table, "costs": costs_table, "bench": bench_table, "recipes": recipes_table,
           "profile": profile_table, "resume": resume_table, "search": search_table, "selection": selection_table,
           "train": train_table, "summary": summary_table, "gpu": gpu_table, "gpu-power": gpu_power_table,
           "cluster": cluster_table, "load": load_table, "bytes": bytes_table, "server-start": server_start_table,
           "interpreters": interpreters_table}


def on_page_markdown(markdown, page, config, files):
    """``<!-- figures: KIND FILE ... -->`` lines replaced by their tables."""
    return re.sub(r"^<!-- figures: ([\w-]+)((?: \S+)*) -->$", lambda m: FIGURES[m.group(1)](*m.group(2).split()),
                  markdown, flags=re.M)
