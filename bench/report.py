"""The targets table (Markdown) and the plots (PNG, matplotlib Agg) of one `python -m bench` run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, float | None, float, str]  # issue, measure, unit, figure, target, "min"|"max"


def _fig(data: dict[str, Any], suite: str) -> Any:
    return data["suites"].get(suite, {}).get("figures")


def _median(rounds: list[dict[str, Any]], key: str, path: tuple[str, ...]) -> float | None:
    values = []
    for r in rounds:
        value: Any = r.get(key)
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return statistics.median(values) if values else None


def peer_figures(data: dict[str, Any]) -> dict[str, float | None]:
    """Median jobs/s over the rounds, for us and each peer."""
    dp = _fig(data, "dispatch_and_peers") or {"rounds": []}
    rounds = dp["rounds"]
    return {
        "ours_sqlite": _median(rounds, "ours_sqlite", ("burst", "per_s")),
        "ours_postgresql": _median(rounds, "ours_postgresql", ("burst", "per_s")),
        "huey_noop": _median(rounds, "huey_noop", ("per_s",)),
        "huey_spawn_true": _median(rounds, "huey_spawn_true", ("per_s",)),
        "procrastinate": _median(rounds, "procrastinate", ("per_s",)),
        "raw_sqlite3": _median(rounds, "raw_sqlite3", ("per_s",)),
        "spawn_true_limit": _median(rounds, "spawn_true_limit", ("per_s",)),
        "paced_p50": _median(rounds, "ours_sqlite", ("paced", "submit_to_start_ms", "p50")),
        "paced_p99": _median(rounds, "ours_sqlite", ("paced", "submit_to_start_ms", "p99")),
    }


def rows(data: dict[str, Any]) -> list[Row]:
    """Every target of issues 3, 4, 5, 6, 8 and 9 with this run's figure (None: not measured)."""
    out: list[Row] = []
    rec = _fig(data, "reconcile")
    if rec:
        scale = f" ({rec['jobs']:,} jobs / {rec['nodes']:,} nodes)"
        requeued = rec["dead_nodes_pass"]["requeued"] or 1
        out += [
            ("3", "steady pass" + scale, "ms", rec["steady_pass_ms"]["median"], 50, "max"),
            ("3", f"schedule {rec['schedule_pass']['jobs']:,} pending jobs in one pass", "s",
             rec["schedule_pass"]["seconds"], 1.0 * rec["pending"] / 10_000, "max"),
            ("3", f"requeue the jobs of dead nodes ({requeued:,} jobs; target per 10,000)", "s",
             round(rec["dead_nodes_pass"]["seconds"] * 10_000 / requeued, 3), 2.0, "max"),
        ]
    api = _fig(data, "api")
    if api:
        beats = api["heartbeats"]
        # Issue 4's targets are for 1,000 nodes; the other counts are measurements (issue 8).
        largest = next((b for b in beats if b["nodes"] == 1000), max(beats, key=lambda b: b["nodes"]))
        tag = f" ({largest['nodes']:,} nodes, offered {largest['paced']['offered_per_s']:g}/s)"
        sub = api["submissions"]
        one = max(sub["one_by_one_c1"]["per_s"], sub["one_by_one_c16"]["per_s"])
        out += [
            ("4", "heartbeats sustained" + tag, "/s", largest["paced"]["achieved_per_s"], 2000, "min"),
            ("4", "heartbeat p99 latency" + tag, "ms", largest["paced"]["latency_ms"].get("p99"), 50, "max"),
            ("4", "heartbeats, saturated (32 in flight)", "/s", largest["saturated"]["per_s"], 2000, "min"),
            ("4", "nodes falsely declared dead under load", "", largest["false_deaths"], 0, "max"),
            ("4", "submissions one by one (best of 1 and 16 in flight)", "/s", one, 1000, "min"),
            ("4", f"submissions via POST /apply (batches of {sub['apply_batches']['batch']})", "/s",
             sub["apply_batches"]["per_s"], 10_000, "min"),
            ("4", "submit to assignment delivered, idle worker, p50", "ms", api["delivery"]["latency_ms"]["p50"], 20, "max"),
            ("4", "submit to assignment delivered, idle worker, p99", "ms", api["delivery"]["latency_ms"]["p99"], 100, "max"),
        ]
    git = _fig(data, "gitops")
    if git:
        tag = f" ({git['jobs']:,} jobs, {git['files']:,} files)"
        out += [
            ("5", "initial apply" + tag, "s", git["initial_apply_seconds"], 30 * git["jobs"] / 100_000, "max"),
            ("5", "no-change resync" + tag, "s", git["noop_resync_seconds"], 2 * git["jobs"] / 100_000, "max"),
            ("5", "one-file change visible", "s", git["one_file_change_seconds"], 1.0, "max"),
        ]
    p = peer_figures(data)
    if p["ours_sqlite"] is not None:
        out += [
            ("6", "no-op jobs end to end (4 workers x 8 slots, SQLite)", "/s", p["ours_sqlite"], 500, "min"),
            ("6", "submit-to-start p50 (paced, idle capacity)", "ms", p["paced_p50"], 50, "max"),
            ("6", "submit-to-start p99 (paced, idle capacity)", "ms", p["paced_p99"], 250, "max"),
        ]
        if p["huey_noop"]:
            out.append(("8", "dispatch vs huey SqliteHuey no-op tasks (x huey)", "x",
                        round(p["ours_sqlite"] / p["huey_noop"], 3), 1.0, "min"))
        if p["huey_spawn_true"]:
            out.append(("8", "dispatch vs huey tasks that start `true` too (x huey, like for like)", "x",
                        round(p["ours_sqlite"] / p["huey_spawn_true"], 3), 1.0, "min"))
        if p["raw_sqlite3"]:
            out.append(("8", "dispatch vs raw sqlite3 claim-and-complete (share)", "x",
                        round(p["ours_sqlite"] / p["raw_sqlite3"], 4), 0.30, "min"))
        if p["procrastinate"] and p["ours_postgresql"]:
            out.append(("8", "dispatch on PostgreSQL vs procrastinate (x procrastinate)", "x",
                        round(p["ours_postgresql"] / p["procrastinate"], 3), 1.0, "min"))
    rep = _fig(data, "replicas")
    if rep:
        runs = [r for key in ("1", "2") for m in ("heartbeats", "dispatch") for r in rep[m][key]]
        wrong = sum(r["checks"]["completed_twice"] + r["checks"]["assigned_twice_in_one_attempt"]
                    + r["checks"]["failed"] + r["checks"]["nodes_declared_dead"]
                    + (r["checks"]["jobs"] - r["checks"]["completed_once"])
                    for r in runs if "checks" in r)
        wrong += sum(r.get("nodes_declared_dead", 0) + r.get("errors", 0)
                     for key in ("1", "2") for r in rep["heartbeats"][key])
        out += [
            ("9", "heartbeats, two replicas vs one on PostgreSQL (x one)", "x", rep["heartbeats_ratio"], 1.0, "min"),
            ("9", "dispatch, two replicas vs one on PostgreSQL (x one)", "x", rep["dispatch_ratio"], 1.0, "min"),
            ("9", "jobs lost, run twice or assigned twice; nodes falsely dead (all runs)", "", wrong, 0, "max"),
        ]
    else:
        out.append(("9", "two replicas vs one on PostgreSQL (heartbeats, dispatch)", "x", None, 1.0, "min"))
    return out


def _met(figure: float | None, target: float, kind: str) -> str:
    if figure is None:
        return "not measured"
    ok = figure >= target if kind == "min" else figure <= target
    return "met" if ok else "**not met**"


def _ratio(figure: float | None, target: float, kind: str) -> str:
    """How far from the target, >= 1 when met: figure/target for floors, target/figure for ceilings."""
    if figure is None or target == 0:
        return ""
    if kind == "min":
        return f"{figure / target:.3g}"
    return f"{target / figure:.3g}" if figure else "inf"


def markdown(data: dict[str, Any]) -> str:
    """The targets table, the peers table and the run's conditions."""
    loads = [s["load_before"]["1m"] for s in data["suites"].values()] + \
            [s["load_after"]["1m"] for s in data["suites"].values()]
    lines = [
        f"# Benchmark results ({data['mode']} mode, {data['started']})", "",
        f"Machine: {data['machine']['cpus']} cores ({data['machine']['cpu']}), {data['machine']['memory_gib']} GiB; "
        f"shared: 1-minute load average {min(loads, default=0):g} to {max(loads, default=0):g} during the run. "
        f"Python {data['versions']['python']}, SQLite {data['versions']['sqlite']}. "
        f"Durability: {data['durability']['ours_sqlite']} (ours, huey, raw sqlite3); {data['durability']['postgresql']}. "
        f"Auth: {data['auth']}.", "",
        "Ratio: how far from the target, 1 or more when met (figure/target for a floor, target/figure for a ceiling).", "",
        "| issue | measure | figure | target | ratio | status |", "|---|---|---:|---:|---:|---|",
    ]
    for issue, measure, unit, figure, target, kind in rows(data):
        shown = "-" if figure is None else f"{figure:,.4g} {unit}".strip()
        bound = (">= " if kind == "min" else "<= ") + f"{target:,.4g} {unit}".strip()
        lines.append(f"| {issue} | {measure} | {shown} | {bound} | {_ratio(figure, target, kind)} | "
                     f"{_met(figure, target, kind)} |")
    p = peer_figures(data)
    lines += ["", "Throughput, same run, median of the alternated rounds (jobs or tasks per second):", "",
              "| system | durability | per second |", "|---|---|---:|"]
    names = {"ours_sqlite": ("ffrtmp, 4 workers x 8 slots, SQLite", "ours_sqlite"),
             "ours_postgresql": ("ffrtmp, 4 workers x 8 slots, PostgreSQL", "postgresql"),
             "huey_noop": ("huey SqliteHuey, 4 consumers x 8 threads, no-op task", "huey"),
             "huey_spawn_true": ("huey SqliteHuey, 4 x 8, task starts `true`", "huey"),
             "procrastinate": ("procrastinate, 4 workers x 8, PostgreSQL", "postgresql"),
             "raw_sqlite3": ("raw sqlite3 claim-and-complete loop, 1 connection", "raw_sqlite3"),
             "spawn_true_limit": ("starting `true`, 4 processes x 8 threads, no queue", "none")}
    for key, (label, durability) in names.items():
        if p.get(key) is not None:
            lines.append(f"| {label} | {data['durability'].get(durability, 'none: nothing is stored')} | "
                         f"{p[key]:,.1f} |")
    lines += _process_limit(p)
    if data.get("errors"):
        lines += ["", "Suites that failed: " + "; ".join(f"{k}: {v}" for k, v in data["errors"].items())]
    return "\n".join(lines) + "\n"


def _process_limit(p: dict[str, float | None]) -> list[str]:
    """What issue 8's dispatch targets ask of a design that starts a process per job."""
    limit, noop, raw = p.get("spawn_true_limit"), p.get("huey_noop"), p.get("raw_sqlite3")
    if not (limit and noop and raw):
        return []
    share = ", ".join(f"{label} {value / limit:.2f}" for label, value in (
        ("ours", p.get("ours_sqlite")), ("huey starting `true`", p.get("huey_spawn_true"))) if value)
    return ["", f"A process per job: starting `true` with nothing around it peaks at {limit:,.0f}/s on this machine. "
            f"Dispatch at 1.0x huey's no-op tasks asks for {noop:,.0f} no-op jobs/s ({noop / limit:.2f}x that limit), "
            f"30% of the raw sqlite3 loop for {0.3 * raw:,.0f}/s ({0.3 * raw / limit:.2f}x). "
            f"Share of the limit reached: {share}."]


def _save(fig: Any, path: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)


def _labelled(ax: Any, xlabel: str, ylabel: str, title: str, legend_at: str = "best") -> None:
    """Axis labels, title, legend and a light grid: the line plots' common finish."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc=legend_at)
    ax.grid(True, which="both", alpha=0.3)


def _throughput_plot(data: dict[str, Any], out: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt
    bars = [(k, v) for k, v in peer_figures(data).items() if not k.startswith("paced") and v]
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([k.replace("_", "\n") for k, _ in bars], [v for _, v in bars],
           color=["tab:blue" if k.startswith("ours") else "tab:gray" for k, _ in bars])
    ax.set_yscale("log")
    ax.set_ylabel("jobs (tasks) per second, log scale")
    ax.set_title(f"End-to-end dispatch vs peers ({data['mode']}, same run)")
    ax.axhline(500, color="tab:red", linestyle="--", linewidth=1, label="issue 6 target: 500/s")
    ax.legend()
    _save(fig, out / f"throughput-{data['mode']}.png", written)


def _scale_plot(data: dict[str, Any], out: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt
    dp = _fig(data, "dispatch_and_peers")
    points = sorted((dp or {}).get("scale", []), key=lambda p: p["workers"])
    if not points:
        return
    workers = [p["workers"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("ours_sqlite", "ffrtmp, SQLite (a process per job)", "o-"),
                              ("huey_noop", "huey SqliteHuey, no-op task", "s--"),
                              ("huey_spawn_true", "huey SqliteHuey, task starts `true`", "^--")):
        ys = [p.get(key) for p in points]
        if any(y for y in ys):
            ax.plot([w for w, y in zip(workers, ys, strict=True) if y], [y for y in ys if y], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(workers, [str(w) for w in workers])
    ax.set_yscale("log")
    figures = [p[k] for p in points for k in ("ours_sqlite", "huey_noop", "huey_spawn_true") if p.get(k)]
    ax.set_ylim(min(figures) / 1.5, max(figures) * 6)  # room above the lines for the legend
    _labelled(ax, "workers (consumers) x 8 slots (threads)", "jobs (tasks) per second, log scale",
              f"Dispatch vs workers, ours and huey ({data['mode']}, same run)", legend_at="upper center")
    _save(fig, out / f"scale-{data['mode']}.png", written)


def _heartbeat_plot(data: dict[str, Any], out: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt
    api = _fig(data, "api")
    if not api:
        return
    beats = sorted(api["heartbeats"], key=lambda b: b["nodes"])
    nodes = [b["nodes"] for b in beats]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(nodes, [b["paced"]["achieved_per_s"] for b in beats], "o-", label="paced (offered rate), achieved")
    ax.plot(nodes, [b["saturated"]["per_s"] for b in beats], "s-", label="saturated, 32 in flight")
    ax.axhline(2000, color="tab:red", linestyle="--", linewidth=1, label="issue 4 target: 2,000/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("simulated nodes")
    ax.set_ylabel("heartbeats per second")
    ax.set_title(f"Heartbeats vs nodes (SQLite, auth on, {data['mode']})")
    ax.legend()
    _save(fig, out / f"heartbeats-{data['mode']}.png", written)


def _latency_plot(data: dict[str, Any], out: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt
    series = []
    api = _fig(data, "api")
    if api:
        series.append(("submit to delivery, idle long-polling node", api["delivery"]["samples_ms"]))
        series += [(f"heartbeat, {b['nodes']:,} nodes, paced", b["paced"]["samples_ms"])
                   for b in sorted(api["heartbeats"], key=lambda b: b["nodes"])]
    dp = _fig(data, "dispatch_and_peers")
    if dp and dp["rounds"]:
        series.append(("submit to start through workers, paced", dp["rounds"][0]["ours_sqlite"]["paced"]["samples_ms"]))
    series = [(label, s) for label, s in series if s]
    if not series:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, samples in series:
        ordered = sorted(samples)
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    ax.set_xscale("log")
    _labelled(ax, "milliseconds (log)", "fraction of samples (CDF)", f"Latency distributions ({data['mode']})")
    _save(fig, out / f"latency-{data['mode']}.png", written)


def _memory_plot(data: dict[str, Any], out: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt
    mem = _fig(data, "memory")
    if not mem:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([m["stored_jobs"] for m in mem], [m["peak_rss_mib"] for m in mem], "o-")
    ax.set_xscale("log")
    ax.set_xlabel("stored jobs")
    ax.set_ylabel("controller peak RSS (MiB)")
    ax.set_title(f"Controller memory vs stored jobs ({data['mode']})")
    _save(fig, out / f"memory-{data['mode']}.png", written)


def _reconcile_plot(data: dict[str, Any], out: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt
    rec = _fig(data, "reconcile")
    if not rec or not rec.get("scales"):
        return
    scales = sorted(rec["scales"], key=lambda r: r["jobs"])
    jobs = [r["jobs"] for r in scales]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(jobs, [r["steady_pass_ms"]["median"] for r in scales], "o-", label="steady pass (median)")
    ax.plot(jobs, [r["schedule_pass"]["seconds"] * 1000 for r in scales], "s-",
            label="pass scheduling 1% of the stored count as new pending jobs")
    ax.plot(jobs, [r["dead_nodes_pass"]["seconds"] * 1000 for r in scales], "^-",
            label="pass after 10% of the nodes died (requeues)")
    for r in scales:
        ax.annotate(f"{r['nodes']:,} nodes", (r["jobs"], r["steady_pass_ms"]["median"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _labelled(ax, "stored jobs", "pass time (ms, log)",
              f"Reconcile pass vs stored jobs and nodes (SQLite, {data['mode']})")
    _save(fig, out / f"reconcile-{data['mode']}.png", written)


def plots(data: dict[str, Any], out: Path) -> list[Path]:
    """Throughput vs peers, heartbeats vs nodes, latency distributions, memory vs stored jobs,
    the reconcile pass vs stored jobs and nodes."""
    import matplotlib
    matplotlib.use("Agg")
    written: list[Path] = []
    for plot in (_throughput_plot, _scale_plot, _heartbeat_plot, _latency_plot, _memory_plot, _reconcile_plot):
        plot(data, out, written)
    return written


def write(data: dict[str, Any], out: Path) -> None:
    """results-{mode}.md and the PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"results-{data['mode']}.md").write_text(markdown(data))
    plots(data, out)
