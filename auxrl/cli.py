"""``auxrl`` command line: train, eval, config, tasks, plot (thin: parse, then call the library)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from auxrl.config import Config, ConfigError
from auxrl.configfile import from_dict, load_config, load_dict, shipped_config_names
from auxrl.errors import EnvWorkerDied


def _describe(err: OSError) -> str:
    """An OSError as one line: what failed, on which file."""
    what = err.strerror or str(err)
    return f"{what}: {err.filename}" if err.filename else what


def _resume_target(resume: str, run_dir: str | None) -> Path:
    """The run directory of ``--resume RUN_DIR``."""
    path = Path(resume)
    if path.is_file():  # a checkpoint: resuming "its run" would silently use another file
        run = path.parent.parent
        if path.parent.name == "checkpoints" and (run / "config.yaml").is_file():
            raise ValueError(
                f"--resume takes a run directory, not a checkpoint file: `auxrl train --resume {run}` "
                f"continues from its latest checkpoint (to go back to {path.name}, write that name into "
                f"{path.parent / 'latest'} first)."
            )
        raise ValueError(
            f"--resume takes a run directory, not a file ({path}). To start a new run from that "
            f"checkpoint's weights, train with model.init_from={path}."
        )
    target = path
    if run_dir is not None and Path(run_dir).resolve() != target.resolve():
        raise ValueError(
            f"--resume {resume} continues the run in {target}, but --run-dir says {run_dir}. A resumed "
            f"run stays in its directory: drop --run-dir (or copy the run there first)."
        )
    return target


def _resume_config(run_dir: Path) -> dict[str, Any]:
    """The config to resume with: the latest checkpoint's, or config.yaml of a run that died
    before its first checkpoint (that run then starts again from step 0)."""
    from auxrl import checkpoint, rundir

    # Refuses what cannot be resumed, with the way forward; "restart": a dead run's config.yaml.
    if rundir.plan(run_dir, resume=True) == "restart":
        return load_dict(run_dir / "config.yaml")
    return checkpoint.load(run_dir, run_id=rundir.run_id(run_dir))["config"]


def _check_resume_overrides(
    saved: dict[str, Any], cfg: Config, overrides: list[str], seed: int | None
) -> None:
    """What a resumed run cannot change: its seed (one run, one seed), and heads it does not train
    (resume applies overrides literally; a config file's ``aux.enabled: false`` stays off)."""
    changed = [f"--seed {seed}"] if seed is not None and seed != saved.get("seed") else []
    changed += [f"seed={cfg.seed}"] if cfg.seed != saved.get("seed") else []
    if changed:
        raise ConfigError(
            f"{changed[0]}: a resumed run keeps its seed ({saved.get('seed')}); train another seed as a "
            f"new run (another --run-dir)."
        )
    from auxrl.curriculum import plan_stages

    named = [t.split("=", 1)[0] for t in overrides if t.startswith("aux.tasks") and "enabled=" not in t]
    if named and not any(stage.cfg.aux.enabled for stage in plan_stages(cfg)):  # heads of any stage are built
        raise ConfigError(
            f"{named[0]}: this run trains without auxiliary heads (aux.enabled=false) and a resumed run "
            f"cannot add them (its checkpoint has none). Start a new run (model.init_from=RUN keeps "
            f"this run's torso), or drop the override."
        )


def cmd_train(args: argparse.Namespace) -> int:
    from auxrl import rundir

    if args.resume:
        # The saved config is the run's config; overrides on resume change it (e.g. total_steps).
        overrides = list(args.overrides)
        if args.config is not None:
            if "=" not in args.config:
                raise ConfigError(
                    f"--resume continues a run with its saved config; drop {args.config!r} (give "
                    f"only key=value overrides, e.g. ppo.total_steps=20000000)."
                )
            overrides.insert(0, args.config)  # argparse put the first override in CONFIG's slot
        run_dir = _resume_target(args.resume, args.run_dir)
        saved = _resume_config(run_dir)
        cfg = from_dict(saved, overrides)
        _check_resume_overrides(saved, cfg, overrides, args.seed)
    else:
        if args.config is None:
            raise ConfigError(
                "auxrl train needs a CONFIG (a YAML path or a shipped name) or --resume RUN_DIR."
            )
        overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
        cfg = load_config(args.config, overrides)
        if args.run_dir == "":
            raise ValueError(
                "--run-dir is empty: give a directory, or leave the option out for runs/<name>__..."
            )
        if args.run_dir is None:  # made now: a run started in the same second gets another directory
            with rundir.default_run_dir(cfg.name, cfg.seed) as run_dir:
                return _train_in(args, cfg, run_dir)
        run_dir = Path(args.run_dir)
    return _train_in(args, cfg, run_dir)


def _train_in(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    from auxrl import checkpoint
    from auxrl.trainer import train

    if args.nproc < 1:
        raise ValueError(f"--nproc {args.nproc}: give 1 or more processes.")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args, cfg, run_dir)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0 and _LAUNCHED not in os.environ:  # under --nproc the launcher said it already
        print(f"Run directory: {run_dir}  (tensorboard --logdir {run_dir})")
    try:
        result = train(
            cfg,
            run_dir,
            device=args.device,
            progress=not args.no_progress,
            resume=bool(args.resume),
            overwrite=args.overwrite,
        )
    except EnvWorkerDied as err:  # not the user's input (exit 1), but one line and how to go on
        try:
            since = f"from its checkpoint {checkpoint.find(run_dir).name}"
        except FileNotFoundError:
            since = "from the start: no checkpoint was saved yet"
        how = f"`auxrl train --resume {run_dir}` continues it ({since})"
        raise EnvWorkerDied(f"{err}. The run stopped; {how}.") from None
    except OSError as err:  # disk full, permissions, ...: say so, and how to go on
        if (run_dir / "config.yaml").is_file():
            raise ValueError(
                f"{_describe(err)}. Nothing of the run is lost: fix that, then continue with "
                f"`auxrl train --resume {run_dir}`."
            ) from None
        about = Path(err.filename).absolute() if err.filename else None
        if about is not None and (about == run_dir.absolute() or run_dir.absolute() in about.parents):
            raise ValueError(
                f"--run-dir {run_dir}: {_describe(err)}. Give a --run-dir whose existing part is a "
                f"folder you can write to."
            ) from None
        raise
    if not rank0:
        return 0
    recent = "n/a" if result.recent_return is None else f"{result.recent_return:.2f}"
    print(
        f"Done: {result.global_step:,} steps, {result.episodes} episodes, mean return of the last "
        f"{cfg.log.return_window} episodes {recent}. Checkpoint: {checkpoint.find(run_dir)}"
    )
    return 0


_LAUNCHED = "AUXRL_NPROC_LAUNCHER"  # set for the workers that `auxrl train --nproc N` starts


def _launch(args: argparse.Namespace, cfg: Config, run_dir: Path) -> int:
    """``--nproc N``: check the config and run directory once here, then run ``auxrl train`` in N
    workers through auxrl's launcher (``auxrl.distributed.launch``), all with the same (explicit)
    run directory."""
    from auxrl import rundir
    from auxrl.distributed import WorkerFailed, check_gpus, launch

    check_gpus(args.nproc, args.device)
    rundir.plan(run_dir, resume=bool(args.resume), overwrite=args.overwrite)  # refuse before spawning
    child = ["train"]
    if args.resume:
        child += ["--resume", str(run_dir), *args.overrides]
        if args.config is not None:
            child.insert(3, args.config)  # an override argparse put in CONFIG's slot
    else:
        child += [args.config, *args.overrides, "--run-dir", str(run_dir)]
        child += ["--seed", str(args.seed)] if args.seed is not None else []
    child += ["--device", args.device] + (["--no-progress"] if args.no_progress else [])
    child += ["--overwrite"] if args.overwrite else []
    print(f"Run directory: {run_dir}  ({args.nproc} processes; tensorboard --logdir {run_dir})")
    os.environ[_LAUNCHED] = "1"  # the workers inherit it
    try:
        launch(args.nproc, child)
    except WorkerFailed as err:
        print(f"auxrl train: error: {err}", file=sys.stderr)
        return 1
    return 0


def _check_writable(path: Path, option: str) -> None:
    """Fail before any work when an output file (``--video``, ``--out``) cannot be written there
    (creates nothing)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(folder))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(
            f"{option} {path}: cannot write there ({_describe(err)}); give a path in a folder you "
            f"can write to."
        ) from None


def _screen_available(cfg: Config) -> bool:
    """Whether this machine can render the env's game screen; says why not (and the fix) if not."""
    from auxrl.envs import make_envs
    from auxrl.envs.gym import UserEnvError

    probe = cfg.env.model_copy(update={"num_envs": 1})
    try:
        with make_envs(probe, training=False, render=True) as envs:
            envs.reset(seed=0)
            if envs.render() is None:
                raise RuntimeError("the env returned no frame")
    except UserEnvError:  # the env fails whether rendered or not: its error, not a note
        raise
    except Exception as err:  # a missing renderer (pygame, OpenCV, OpenGL) must not stop the eval
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fix = (
            "set MUJOCO_GL=egl (or osmesa) for off-screen MuJoCo rendering"
            if "mujoco" in reason.lower() or "opengl" in reason.lower() or "gl" in type(err).__name__.lower()
            else 'pip install "auxrl[video]" (pygame and OpenCV render the screens)'
        )
        print(
            f"auxrl eval: note: cannot render the screen of {cfg.env.id} ({reason}); recording what the "
            f"agent sees instead (--video-view agent). To get the screen: {fix}.",
            file=sys.stderr,
        )
        return False
    return True


def cmd_eval(args: argparse.Namespace) -> int:
    from auxrl.evaluate import evaluate
    from auxrl.inference import load_agent

    if args.episodes < 1 or args.num_envs < 1:
        raise ValueError(
            f"--episodes ({args.episodes}) and --num-envs ({args.num_envs}) must be >= 1, e.g. --episodes 10."
        )
    if not 0 <= args.seed <= 2**32 - 1:
        raise ValueError(f"--seed {args.seed}: must be an integer in [0, 2**32 - 1], e.g. --seed 12345.")
    if args.video and (Path(args.video).is_dir() or args.video.endswith(("/", os.sep))):
        run = Path(args.run).resolve()  # a folder: the video is named after the run
        if run.is_file():  # a checkpoint: its run's name when it sits in one
            run = run.parent.parent if run.parent.name == "checkpoints" else run.with_suffix("")
        args.video = str(Path(args.video) / f"{run.name}.mp4")
    if args.video:
        _check_writable(Path(args.video), "--video")
    agent = load_agent(args.run, args.device)
    cfg = agent.config
    # A multi-task agent: each task in turn (its own env, heads and video).
    for task in agent.task_names or [None]:
        env_id = cfg.env.id if task is None else agent.model.tasks[agent.task_index(task)].env_id
        env_cfg = (
            cfg
            if task is None
            else cfg.model_copy(update={"env": cfg.env.model_copy(update=dict(id=env_id, tasks=[]))})
        )
        recorder, render = None, False
        if args.video:
            from auxrl.video import VideoRecorder

            video = Path(args.video)
            recorder = VideoRecorder(str(video if task is None else video.with_stem(f"{video.stem}-{task}")))
            render = args.video_view == "screen" and _screen_available(env_cfg)
        result = evaluate(
            agent,
            args.episodes,
            deterministic=args.deterministic,
            num_envs=1 if recorder else args.num_envs,
            seed=args.seed,
            on_step=recorder.on_step if recorder else None,
            render=render,
            task=task,
        )
        if recorder is not None:
            path, frames = recorder.close(result.returns)
            print(f"Video: {path} ({frames} frames, {'game screen' if render else 'agent input'})")
        print(
            f"{env_id}: {len(result.returns)} episodes, score {result.mean:.2f} +- {result.std:.2f} "
            f"(min {min(result.returns):.1f}, max {max(result.returns):.1f})"
        )
        for name, value in {**result.scores, **result.metrics}.items():  # e.g. Crafter's score, achievements
            print(f"  {name}: {value:.4g}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from auxrl.tasks.registry import describe

    rows = describe()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    print("\nAlso: any AuxTask subclass by import path, e.g. aux.tasks.mine.type=my_pkg.tasks:MyTask")
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    """``auxrl task check NAME``: can the task's head learn on a fixed set of real samples?"""
    from auxrl.taskcheck import CheckOptions, check_task, report

    options = CheckOptions(args.steps, args.batches, args.collect, args.measure_chance, args.device)
    result = check_task(
        args.name, args.overrides, args.config, options, log=lambda message: print(message, flush=True)
    )
    print(report(result))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from auxrl.plot import out_file, plot_runs

    def split(text: str | None) -> list[str] | None:
        return None if text is None else [part.strip() for part in text.split(",")]

    if args.out:
        _check_writable(out_file(args.out), "--out")  # a folder: its curves.png
    out = plot_runs(
        args.runs,
        args.out,
        smoothing=args.smoothing,
        tag=args.tag,
        labels=split(args.labels),
        group_by=split(args.group_by),
    )
    print(f"Wrote {out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import uuid

    from auxrl import checkpoint, rundir

    if not args.trust:
        raise ValueError(
            "converting unpickles each file fully, which runs any code it holds: add --trust to confirm "
            "that you trust where these checkpoints came from (e.g. `auxrl convert --trust RUN_DIR`)."
        )
    for given in map(Path, args.paths):
        if given.is_file():
            parent = given.parent.parent
            in_run = given.parent.name == checkpoint.CHECKPOINT_DIR and (
                (parent / rundir.MARKER).is_file() or (parent / rundir.CONFIG_FILE).is_file()
            )
            run, files = (parent if in_run else None), [given]
        elif given.is_dir():
            run, files = given, checkpoint.candidates(given)
            if not files:
                raise ValueError(
                    f"{given}: no checkpoints/step_*.pt in it; give a run directory or a .pt file."
                )
        else:
            raise ValueError(
                f"{given}: no such file or directory; give a run directory or a checkpoint .pt file."
            )
        # A run's checkpoints take its id (a run from before ids gets one, in its marker), so that
        # resume keeps taking them as the run's own; a loose file gets an id of its own.
        run_id = rundir.run_id(run) if run is not None else None
        if run is not None and run_id is None:
            run_id = uuid.uuid4().hex
            rundir.write_marker(run, run_id)
        for path in files:
            done = checkpoint.convert(path, run_id or uuid.uuid4().hex)
            print(f"{path}: {'converted' if done else 'already in the safe format, left as it is'}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from auxrl import probe

    if not Path(args.run).exists():
        raise ValueError(
            f"{args.run}: no such run directory or checkpoint file; give what `auxrl train` wrote."
        )
    folder = probe.output_dir(args.run, args.out)
    probe.check_writable(folder, "--out " if args.out else "")
    settings = probe.ProbeSettings(epochs=args.epochs, patience=args.patience, lr=args.lr)
    result = probe.probe(
        args.run,
        frames=args.frames,
        policy=args.policy,
        labels=args.label,
        seed=args.seed,
        num_envs=args.num_envs,
        epsilon=args.epsilon,
        device=args.device,
        settings=settings,
        log=lambda message: print(message, flush=True),
    )
    probe.print_report(result)
    md, js = probe.write_outputs(result, folder)
    print(
        f"Wrote {md} and {js}; TensorBoard scalars probe/* at step {result.meta['global_step']:,} in {folder}"
    )
    return 0


def _option_value(text: str) -> Any:
    """A --slurm value as submitit wants it: an integer, a number, true / false, else the text
    (``time=01:00:00`` stays a string, where YAML would read a base-60 number)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _backend_options(args: argparse.Namespace) -> tuple[Any, list[list[str]]]:
    """``auxrl study``'s backend options, and the ones given (for the command recorded)."""
    from auxrl.perf import available_cores
    from auxrl.study.backends import BackendOptions

    if args.ray_address is not None and args.backend != "ray":
        raise ValueError(f"--ray-address is for --backend ray (this study runs on {args.backend}).")
    if args.slurm and args.backend != "slurm":
        raise ValueError(f"--slurm KEY=VALUE is for --backend slurm (this study runs on {args.backend}).")
    if args.cpus_per_run is not None and args.cpus_per_run < 1:
        raise ValueError(f"--cpus-per-run {args.cpus_per_run}: give 1 or more.")
    if args.gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run {args.gpus_per_run}: give 0 or more.")
    slurm: dict[str, Any] = {}
    for text in args.slurm:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm {text}: give KEY=VALUE, e.g. --slurm partition=gpu.")
        slurm[key.strip()] = _option_value(value.strip())
    given = [["--cpus-per-run", str(args.cpus_per_run)]] if args.cpus_per_run is not None else []
    given += [["--gpus-per-run", f"{args.gpus_per_run:g}"]] if args.gpus_per_run else []
    given += [["--ray-address", args.ray_address]] if args.ray_address is not None else []
    given += [["--slurm", text] for text in args.slurm]
    options = BackendOptions(
        cpus_per_run=args.cpus_per_run or max(1, available_cores() // max(1, args.jobs)),
        gpus_per_run=args.gpus_per_run,
        ray_address=args.ray_address or "auto",
        slurm=slurm,
    )
    return options, given


def cmd_study(args: argparse.Namespace) -> int:
    """``auxrl study SPEC`` runs a study, then reports it; ``auxrl study report DIR`` reports."""
    import shlex

    from auxrl.study.report import summary_lines, write_report

    if args.spec == "report":
        if args.dir is None:
            raise ValueError("auxrl study report needs the study's output folder: auxrl study report DIR.")
        if args.reps < 1:
            raise ValueError(f"--reps {args.reps}: give 1 or more bootstrap resamples, e.g. --reps 2000.")
        path = write_report(args.dir, reps=args.reps, spec_file=args.report_spec, out=args.out)
        for line in summary_lines(path.parent):
            print(line)
        print(f"Wrote {path}")
        return 0
    if args.dir is not None:
        raise ValueError(
            f"auxrl study takes one SPEC ({args.spec}); {args.dir!r} is extra: give the output folder "
            f"with --out."
        )
    if args.report_spec is not None:
        raise ValueError(
            f"--spec is for auxrl study report DIR --spec SPEC; to run a study: auxrl study "
            f"{args.report_spec}."
        )
    from auxrl.study.analysis import rliable
    from auxrl.study.backends import check_backend
    from auxrl.study.runner import run_study, say
    from auxrl.study.spec import load_spec

    study = load_spec(args.spec)
    options, given = _backend_options(args)
    check_backend(args.backend, options)
    out = Path(args.out) if args.out else Path("studies") / Path(args.spec).stem
    try:
        rliable()
        can_report = True
    except ImportError as err:
        say(f"note: no report at the end ({err}); the runs train all the same.")
        can_report = False
    command = shlex.join(["auxrl", "study", args.spec, "--jobs", str(args.jobs), "--out", str(out)])
    command += f" --backend {args.backend}" if args.backend != "local" else ""
    command += "".join(f" {shlex.join(option)}" for option in given)
    code = run_study(
        study, out, jobs=args.jobs, backend=args.backend, device=args.device, command=command, options=options
    )
    if code >= 128 or not can_report:  # stopped: the report waits for the runs
        return code
    path = write_report(out, reps=args.reps)
    for line in summary_lines(out):
        say(line)
    say(f"wrote {path}")
    return code


def cmd_tune(args: argparse.Namespace) -> int:
    """``auxrl tune SPEC``: an Optuna search over config keys (auxrl/tune/runner.py)."""
    from auxrl.tune.runner import import_optuna, run_tune
    from auxrl.tune.spec import load_tune_spec

    import_optuna()  # before anything else: one line saying how to install it
    tuning = load_tune_spec(args.spec)
    out = Path(args.out) if args.out else Path("tuning") / Path(args.spec).stem
    return run_tune(
        tuning,
        out,
        trials=args.trials,
        storage=args.storage,
        study_name=args.study_name,
        jobs=args.jobs,
        device=args.device,
    )


def cmd_config(args: argparse.Namespace) -> int:
    from auxrl.build import load_tasks
    from auxrl.confighelp import describe_config, describe_keys, is_key
    from auxrl.curriculum import plan_stages

    # `auxrl config ppo.lr` (a key, no config): that key's help; `auxrl config CONFIG KEY...`: the
    # keys' help and their values in that config.
    if is_key(args.config) and not Path(args.config).exists():
        print(describe_keys([args.config, *args.overrides]))
        return 0
    keys = [text for text in args.overrides if "=" not in text]
    overrides = [text for text in args.overrides if "=" in text]
    cfg = load_config(args.config, overrides)
    for stage in plan_stages(cfg):  # the checks `train` makes before it builds anything
        load_tasks(stage.cfg.aux)
    if keys:
        print(describe_keys(keys, cfg))
    else:
        print(describe_config(cfg, " ".join([args.config, *args.overrides])))
    return 0


def _version() -> str:
    """auxrl's version and the versions that decide its behaviour (read without importing them)."""
    from auxrl import __version__

    deps = []
    for name in ("torch", "gymnasium", "ale-py"):
        try:
            deps.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            deps.append(f"{name} missing")
    return f"auxrl {__version__} ({', '.join(deps)}; Python {platform.python_version()})"


DEVICE_HELP = "auto: CUDA when PyTorch sees a GPU, else the CPU (default: auto)"


def make_parser() -> argparse.ArgumentParser:
    from auxrl.confighelp import key_summary

    parser = argparse.ArgumentParser(prog="auxrl", description="PPO with auxiliary heads on a shared torso.")
    parser.add_argument("--version", action="version", version=_version(), help="print the versions and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    shipped = ", ".join(shipped_config_names())

    p = sub.add_parser(
        "train",
        help="train an agent",
        description=(
            f"Train from a YAML config (a path or a shipped name: {shipped}) with dotted key=value "
            f"overrides, e.g. `auxrl train cartpole ppo.lr=3e-4 env.num_envs=4`."
        ),
        epilog=(
            "config keys (`auxrl config CONFIG` prints the resolved config and each key with its\n"
            "type, default and help):\n" + key_summary()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="config path or shipped config name")
    # default=[]: argparse would otherwise call a "*" positional required in its usage error.
    p.add_argument("overrides", nargs="*", default=[], help="overrides such as ppo.lr=1e-4 env.num_envs=16")
    p.add_argument(
        "--run-dir", help="where to write events, config and checkpoints (default: runs/NAME__SEED__TIME)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, help="shorthand for seed=N")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in --run-dir, start anew")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (plain status lines)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train with N local processes (torch.distributed; env.num_envs is per process, "
        "ppo.total_steps counts all). Several machines: torchrun ... -m auxrl train ...",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="play whole games with a trained agent",
        description="Play whole games (training-only settings off) and report the mean and std of the score.",
    )
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or a checkpoint .pt file")
    p.add_argument("--episodes", type=int, default=10, help="games to play (default: 10)")
    p.add_argument("--deterministic", action="store_true", help="greedy actions instead of sampling")
    p.add_argument(
        "--video",
        metavar="PATH",
        help="record to an .mp4 (or .gif) file, or into an existing folder as <run>.mp4 (plays one env)",
    )
    p.add_argument(
        "--video-view",
        choices=["screen", "agent"],
        default="screen",
        help="screen: the game's RGB screen as rendered by the env (default); agent: the observation "
        "the agent acts on (84x84 frames, or bars for vector observations)",
    )
    p.add_argument("--num-envs", type=int, default=8, help="envs played at once without --video (default: 8)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs (default: 12345)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "config",
        help="print a resolved config and every valid key, or the help of some keys",
        description="Print the config `auxrl train CONFIG [overrides]` would run, then every valid key with "
        "its type, default and help. `auxrl config KEY...` prints the help of those keys (a section such "
        "as ppo or aux.tasks.pixel_control: all of its keys); `auxrl config CONFIG KEY...` adds their "
        "values in that config.",
    )
    p.add_argument("config", help=f"config path or shipped config name ({shipped}), or a key")
    # default=[]: argparse would otherwise call a "*" positional required in its usage error.
    p.add_argument(
        "overrides", nargs="*", default=[], help="overrides such as ppo.lr=1e-4, or keys such as ppo.lr"
    )
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "convert",
        help="rewrite old checkpoints you trust in the safe format",
        description="Checkpoints load without running code (torch.load weights_only=True). Files written "
        "by auxrl before checkpoint format 2 hold pickled Python objects and are refused; this rewrites "
        "them in place in the current format. It unpickles each file fully, which runs any code the "
        "file holds: use it only on files whose source you trust.",
    )
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT", help="run directories or .pt files")
    p.add_argument("--trust", action="store_true", help="confirm that you trust these files (required)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "probe",
        help="linear probes of the frozen torso: which game state its features hold (AtariARI)",
        description="Play frames (a random policy by default), label each with the game's state (the RAM "
        "bytes AtariARI annotates for 24 Atari games, or numeric info entries with --label), split them "
        "by episode 70/10/20 into train/valid/test, and train one linear classifier per variable on the "
        "run's frozen torso features and on a randomly initialised torso of the same architecture. "
        "Reports each variable's test F1 (weighted over classes), the mean per category and per game, "
        "prints a table and writes probe.md, probe.json and TensorBoard scalars probe/... at the "
        "checkpoint's step into the run directory (or beside a checkpoint file outside a run).",
    )
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or a checkpoint .pt file")
    p.add_argument(
        "--frames",
        type=int,
        default=30_000,
        help="frames to play and label (default: 30,000; about a minute on a 2-core CPU for Atari)",
    )
    p.add_argument(
        "--policy",
        choices=["random", "agent"],
        default="random",
        help="random: uniform random actions (default); agent: the run's agent samples its actions, "
        "with a share --epsilon of random ones",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        default=0.2,
        help="share of random actions with --policy agent (default: 0.2)",
    )
    p.add_argument(
        "--label",
        action="append",
        metavar="info:KEY",
        help="probe the env's numeric info[KEY] instead of Atari RAM (repeatable); needed for envs "
        "AtariARI does not annotate. Integers with <= 256 values: classification and F1; else R^2",
    )
    p.add_argument("--num-envs", type=int, default=8, help="envs played at once (default: 8)")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the envs, actions, split, random torso (default: 0)"
    )
    p.add_argument("--epochs", type=int, default=40, help="most epochs of probe training (default: 40)")
    p.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without a better valid accuracy (default: 5)",
    )
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the probes (default: 3e-3)")
    p.add_argument("--out", metavar="DIR", help="write probe.md, probe.json and the scalars here instead")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("tasks", help="list the available auxiliary tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("task", help="check an auxiliary task: auxrl task check NAME")
    task_sub = p.add_subparsers(
        dest="task_command", required=True, metavar="check", help="check: can the task learn at all?"
    )
    p = task_sub.add_parser(
        "check",
        help="can the task's head learn at all? train it on a fixed batch of real samples, against chance",
        description="Play the config's env with random actions, draw a fixed set of the samples the task "
        "asks for (its Needs: windows, pairs, PPO's minibatch samples) as the learner draws them, build the "
        "agent's torso and the task's head as a run builds them, and train both on that set only. Prints "
        "the loss at the start and the end, the chance loss (the task's chance_loss, or measured by the "
        "same training with each sample's features taken from another sample) and a verdict: learns, or "
        "stays at chance (its target may not be predictable from its inputs).",
    )
    p.add_argument(
        "name",
        metavar="NAME",
        help="a built-in or registered task name, or package.module:Class (as aux.tasks.NAME.type)",
    )
    # default=[]: argparse would otherwise call a "*" positional required in its usage error.
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",
        help="the task's keys (hidden=64, lr=1e-3: aux.tasks.NAME.KEY), or config overrides (a dotted "
        "key, e.g. env.labels=[ram])",
    )
    p.add_argument(
        "--config",
        help="config path or shipped name whose env and model are used (default: cartpole, or breakout "
        "for a task that does not fit CartPole)",
    )
    p.add_argument("--steps", type=int, default=200, help="Adam steps on the fixed set (default: 200)")
    p.add_argument(
        "--batches",
        type=int,
        default=8,
        help="batches of the task's batch size in the fixed set, one per step in turn (default: 8)",
    )
    p.add_argument(
        "--collect",
        type=int,
        metavar="STEPS",
        help="env steps of random play to draw from (default: aux.replay_size, at least one rollout)",
    )
    p.add_argument(
        "--measure-chance",
        action="store_true",
        help="measure chance (the same training, each sample given another's features) also where the "
        "task has a chance_loss: a chance_loss does not allow for memorising the fixed set",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_task)

    p = sub.add_parser(
        "plot",
        help="plot episodic return against steps from TensorBoard files",
        description="Plot a scalar against env steps for each run, smoothed; runs of one config that differ "
        "only in their seed are drawn as their mean with a min-max band. Runs are grouped by config name, "
        "env id and every config key in which runs of one name differ; runs of different envs are never "
        "averaged together.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by auxrl train")
    p.add_argument(
        "--out",
        default="curves.png",
        help="image to write: .png, .pdf or .svg; an existing folder (or a path ending in /) gets "
        "curves.png in it; the path written is printed (default: %(default)s)",
    )
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA smoothing in [0, 1) (default: 0.9)")
    p.add_argument(
        "--tag", default="charts/episodic_return", help="TensorBoard scalar to plot (default: %(default)s)"
    )
    p.add_argument(
        "--labels",
        metavar="A,B,...",
        help="one label per RUN_DIR, in order: runs given one label are averaged (they must share an env)",
    )
    p.add_argument(
        "--group-by",
        metavar="KEY,...",
        help="config keys to group runs by, e.g. aux.enabled or name (env.id is always added); run: every "
        "run on its own",
    )
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "study",
        help="did my head help? train a matrix of variants x envs x seeds, report IQM and P(improvement)",
        description="`auxrl study SPEC.yaml`: train every env x variant x seed of a study spec (each an "
        "auxrl train run in OUT/runs/<env>__<variant>__<seed>, scored by auxrl eval into score.json), "
        "resumably: run it again to continue after a stop. Then writes the report. `auxrl study report "
        "DIR`: report.md, results.json and plots of a study's folder (rliable IQM, median, mean, optimality "
        "gap and P(improvement) over the baseline with 95% bootstrap intervals, learning curves, per-env "
        "tables); `auxrl study report DIR --spec SPEC --out OUT`: DIR's runs reported as SPEC's, into OUT "
        "(e.g. an older suite's folder, benchmarks/results/atari100k-cpu-2026-11-30, with "
        'configs/studies/atari100k.yaml). The report needs pip install "auxrl[study]". '
        "Example: configs/studies/cartpole_heads.yaml.",
    )
    p.add_argument("spec", metavar="SPEC|report", help="a study spec (YAML), or the word report")
    p.add_argument("dir", nargs="?", metavar="DIR", help="with report: the study's output folder")
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at a time; each gets cores // jobs threads (default: 1)"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: studies/<spec name>); with report: the report's folder (default: DIR)",
    )
    p.add_argument(
        "--spec",
        dest="report_spec",
        metavar="SPEC",
        help="with report: report DIR/runs as this spec's runs (e.g. the <Game>__<variant>__<seed> runs, "
        "scored in eval.json, of a suite folder written before studies, such as "
        "benchmarks/results/atari100k-cpu-2026-11-30, with configs/studies/atari100k.yaml); give --out too",
    )
    p.add_argument(
        "--backend",
        choices=["local", "ray", "slurm"],
        default="local",
        help="where runs execute: local processes (default); ray: actors on a Ray cluster (pip install "
        '"auxrl[ray]"); slurm: Slurm jobs through submitit (pip install "auxrl[slurm]")',
    )
    p.add_argument(
        "--cpus-per-run",
        type=int,
        metavar="N",
        help="each run's CPU threads (OMP_NUM_THREADS), and the CPUs it asks ray / slurm for (default: "
        "this machine's cores // --jobs)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs each run asks for: ray num_gpus (a fraction shares one), slurm gpus_per_node; give it "
        "with --device cuda there (default: 0; local runs see this machine's GPUs)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --backend ray, the cluster: auto (default: the one `ray start --head` runs here, or "
        "RAY_ADDRESS), HOST:6379, ray://HOST:10001, or local (start a Ray instance here for this study)",
    )
    p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --backend slurm, a submitit parameter (repeatable): partition=gpu, timeout_min=240 "
        "(default 1440), mem_gb=16, account=..., or cluster=local (submitit's local executor, no Slurm)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--reps", type=int, default=2000, help="bootstrap resamples of the intervals (default: 2000)"
    )
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "tune",
        help="search auxiliary weights and PPO settings with Optuna (TPE, median pruning)",
        description="`auxrl tune SPEC.yaml`: Optuna trials of a tuning spec (base config, env, steps, seeds, "
        "search_space of dotted keys). Each trial trains one auxrl train run per seed with its values, "
        "evaluates each run's checkpoints at steps * k / evals while it trains (whole games, as auxrl eval) "
        "and reports them for pruning; a pruned trial's runs save and stop. The study is kept in --storage, "
        "so the same command continues a stopped search and several processes or machines can share one. "
        "Writes OUT/trials.csv, OUT/trials.md and OUT/best.yaml (the base config with the best values, for "
        'auxrl train). Needs pip install "auxrl[tune]". Example: configs/tune/cartpole.yaml.',
    )
    p.add_argument("spec", metavar="SPEC", help="a tuning spec (YAML)")
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="finished (complete or pruned) trials the study should have, counting earlier runs and other "
        "processes (default: 20)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///PATH.db, or a database server (postgresql://...) for several "
        "machines (default: sqlite:///OUT/optuna.db)",
    )
    p.add_argument("--study-name", metavar="NAME", help="the study in the storage (default: the spec's name)")
    p.add_argument("--jobs", type=int, default=1, help="trials at a time in this process (default: 1)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: tuning/<spec name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_tune)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    # Overrides may come after options (`train cfg --no-progress ppo.lr=1e-4`), which plain
    # argparse cannot mix with nargs="*" positionals: collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("train", "config", "task")
    unknown = [x for x in extra if x.startswith("-") or "=" not in x or not takes_overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except BrokenPipeError:  # `auxrl config cartpole | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigError, ValueError, ImportError) as err:
        print(f"auxrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # files, disk, permissions: the user's environment, not a bug
        print(f"auxrl {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2
    except EnvWorkerDied as err:
        print(f"auxrl {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # 130 for Ctrl-C, 143 for a SIGTERM the trainer stopped on
        return 128 + getattr(err, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
